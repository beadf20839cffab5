#!/usr/bin/env bash
# The mitigation experiment: the quickstart baseline vs caption shuffling (data) vs two auxiliary
# objectives (order-invariant text loss, per-object region loss), three seeds each, then one summary
# across seeds (python -m eval report --across-seeds) that rewrites docs/results.md's results block.
#
#   bash experiments/bias_mitigation.sh                    # 4 configurations x 3 seeds, then the summary
#   RUNS="baseline crop object_crop" bash experiments/bias_mitigation.sh   # the crops (not in docs/results.md's table)
#   SEEDS="0" bash experiments/bias_mitigation.sh          # one seed only (no intervals: n/a (N = 1))
#   RUNS="baseline caption_shuffle" bash experiments/bias_mitigation.sh
#   RUNS="baseline p_large_first_0.0 p_large_first_0.5" bash experiments/bias_mitigation.sh  # the corpus knob
#   JOBS=1 THREADS=2 bash experiments/bias_mitigation.sh   # one run at a time on two threads
#
# Another experiment on the same machinery (experiments/compositional_tradeoff.sh does this):
# BASE_CONFIG=relational.yaml (an overlay every run gets, after quickstart.yaml), ROOT=runs/tradeoff
# (where the runs go), DEFAULT_RUNS=... (its configurations), FIG_DIR and DOCS_BLOCK (where its
# default selection's summary goes).
#
# Every run is the quickstart (configs/quickstart.yaml) plus one overlay from configs/mitigation/,
# with --seed_everything <seed>: the seed sets model init, data order and mitigation draws together;
# the rendered corpus (data.synthetic.seed) is the same for all runs on purpose. A seed's step-0
# model is therefore the same in every configuration, which is what makes the comparison paired.
# Runs go to runs/exp-<name>-s<seed>/; a finished run (last.ckpt + plots/.done) is skipped, so the
# script resumes a sweep after an interruption. JOBS runs go side by side, each on THREADS torch
# threads (default 2 x 1 on a 2-core machine); a run's numbers depend on its thread count (fp32
# reductions), so keep THREADS fixed to reproduce docs/results.md. Then `python -m eval report
# --across-seeds` writes docs/figures/bias_mitigation/across_seeds.png and the block of docs/results.md
# between <!-- results:begin/end --> (default SEEDS and RUNS only; any other selection is summarised
# into runs/exp-summary/{summary.md,across_seeds.png}).
set -euo pipefail
cd "$(dirname "$0")/.."
DEFAULT_SEEDS="0 1 2"
DEFAULT_RUNS=${DEFAULT_RUNS:-"baseline caption_shuffle order_invariant region_loss"}
BASE_CONFIG=${BASE_CONFIG:-}
ROOT=${ROOT:-runs}
FIG_DIR=${FIG_DIR:-docs/figures/bias_mitigation}
DOCS_BLOCK=${DOCS_BLOCK:-docs/results.md}
EXPERIMENT=${EXPERIMENT:-bash experiments/bias_mitigation.sh}
SEEDS=${SEEDS:-$DEFAULT_SEEDS}
RUNS=${RUNS:-$DEFAULT_RUNS}
JOBS=${JOBS:-2}
THREADS=${THREADS:-1}

if [ "${1:-}" = "--one" ]; then   # internal: one run, called in parallel below
  name=$2; seed=$3; run="exp-$name-s$seed"; dir="$ROOT/$run"
  if [ -f "$dir/checkpoints/last.ckpt" ] && [ -f "$dir/plots/.done" ]; then
    echo "== $run: done, skipping"; exit 0
  fi
  overlay=(); [ -z "$BASE_CONFIG" ] || overlay=(--config "$BASE_CONFIG")
  [ "$name" = baseline ] || overlay+=(--config "mitigation/$name.yaml")
  resume=()
  if [ -f "$dir/checkpoints/last.ckpt" ]; then resume=(--ckpt_path last)   # interrupted: continue exactly
  elif [ -d "$dir" ]; then resume=(--run.overwrite true); fi              # died before a checkpoint: moved aside
  echo "== $run start $(date -u +%H:%M:%S)"
  start=$(date +%s)
  OMP_NUM_THREADS=$THREADS python -m train fit --config quickstart.yaml "${overlay[@]}" \
    --run.root "$ROOT" --run.name "$run" --seed_everything "$seed" --trainer.enable_progress_bar false "${resume[@]}" \
    > "$ROOT/$run.log" 2>&1 || { echo "== $run FAILED, see $ROOT/$run.log"; exit 1; }
  echo "$(( $(date +%s) - start ))" > "$dir/plots/.done"
  echo "== $run took $(cat "$dir/plots/.done") s"
  exit 0
fi

for name in $RUNS; do   # refuse a typo before hours of work
  [ "$name" = baseline ] || [ -f "configs/mitigation/$name.yaml" ] || {
    echo "error: no configs/mitigation/$name.yaml (RUNS=\"$RUNS\")" >&2; exit 2; }
done
mkdir -p "$ROOT"
dirs=()
jobs=()
for seed in $SEEDS; do      # seeds outermost: an interrupted sweep still has every configuration once
  for name in $RUNS; do
    dirs+=("$ROOT/exp-$name-s$seed")
    jobs+=("$name $seed")
  done
done
printf '%s\n' "${jobs[@]}" | xargs -P "$JOBS" -L 1 bash "$0" --one || echo "== some runs failed (see above); summarising the finished ones"
if [ "$SEEDS" = "$DEFAULT_SEEDS" ] && [ "$RUNS" = "$DEFAULT_RUNS" ]; then   # docs/results.md's experiment
  python -m eval report "${dirs[@]}" --across-seeds --out "$FIG_DIR" \
    --results-block "$DOCS_BLOCK" --command "$EXPERIMENT"
else   # another selection: its own summary, the docs stay as they are
  python -m eval report "${dirs[@]}" --across-seeds --out "$ROOT/exp-summary" \
    --command "SEEDS=\"$SEEDS\" RUNS=\"$RUNS\" $EXPERIMENT"
fi
