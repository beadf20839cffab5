#!/usr/bin/env bash
# The trade-off experiment: on the relational corpus (configs/relational.yaml: 30 % relation and
# 20 % size-word captions), does removing the order bias cost compositional understanding?
# baseline vs caption shuffling vs the order-invariant loss vs NegCLIP-style hard negatives vs
# both losses, three seeds each; then the across-seeds summary (order bias, size bias, the three
# in-world compositional accuracies, val R@1; paired against the baseline) into docs/compositional.md
# and its figures into docs/figures/compositional_tradeoff/.
#
#   bash experiments/compositional_tradeoff.sh
#   SEEDS="0" bash experiments/compositional_tradeoff.sh     # one seed (summary in runs/tradeoff/exp-summary)
#
# The same machinery as experiments/bias_mitigation.sh (skip finished runs, resume interrupted ones,
# JOBS x THREADS); runs go to runs/tradeoff/exp-<config>-s<seed>/.
set -euo pipefail
cd "$(dirname "$0")/.."
export BASE_CONFIG=relational.yaml ROOT=runs/tradeoff FIG_DIR=docs/figures/compositional_tradeoff \
  DOCS_BLOCK=docs/compositional.md EXPERIMENT="bash experiments/compositional_tradeoff.sh" \
  DEFAULT_RUNS="baseline caption_shuffle order_invariant hard_negatives hard_negatives_order_invariant"
exec bash experiments/bias_mitigation.sh "$@"
