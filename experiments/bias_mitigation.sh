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
DEFAULT_RUNS="baseline caption_shuffle order_invariant region_loss"
SEEDS=${SEEDS:-$DEFAULT_SEEDS}
RUNS=${RUNS:-$DEFAULT_RUNS}
JOBS=${JOBS:-2}
THREADS=${THREADS:-1}

if [ "${1:-}" = "--one" ]; then   # internal: one run, called in parallel below
  name=$2; seed=$3; run="exp-$name-s$seed"
  if [ -f "runs/$run/checkpoints/last.ckpt" ] && [ -f "runs/$run/plots/.done" ]; then
    echo "== $run: done, skipping"; exit 0
  fi
  overlay=(); [ "$name" = baseline ] || overlay=(--config "mitigation/$name.yaml")
  resume=()
  if [ -f "runs/$run/checkpoints/last.ckpt" ]; then resume=(--ckpt_path last)   # interrupted: continue exactly
  elif [ -d "runs/$run" ]; then resume=(--run.overwrite true); fi              # died before a checkpoint: moved aside
  echo "== $run start $(date -u +%H:%M:%S)"
  start=$(date +%s)
  OMP_NUM_THREADS=$THREADS python -m train fit --config quickstart.yaml "${overlay[@]}" \
    --run.name "$run" --seed_everything "$seed" --trainer.enable_progress_bar false "${resume[@]}" \
    > "runs/$run.log" 2>&1 || { echo "== $run FAILED, see runs/$run.log"; exit 1; }
  echo "$(( $(date +%s) - start ))" > "runs/$run/plots/.done"
  echo "== $run took $(cat "runs/$run/plots/.done") s"
  exit 0
fi

for name in $RUNS; do   # refuse a typo before hours of work
  [ "$name" = baseline ] || [ -f "configs/mitigation/$name.yaml" ] || {
    echo "error: no configs/mitigation/$name.yaml (RUNS=\"$RUNS\")" >&2; exit 2; }
done
mkdir -p runs
dirs=()
jobs=()
for seed in $SEEDS; do      # seeds outermost: an interrupted sweep still has every configuration once
  for name in $RUNS; do
    dirs+=("runs/exp-$name-s$seed")
    jobs+=("$name $seed")
  done
done
printf '%s\n' "${jobs[@]}" | xargs -P "$JOBS" -L 1 bash "$0" --one || echo "== some runs failed (see above); summarising the finished ones"
if [ "$SEEDS" = "$DEFAULT_SEEDS" ] && [ "$RUNS" = "$DEFAULT_RUNS" ]; then   # docs/results.md's experiment
  python -m eval report "${dirs[@]}" --across-seeds --out docs/figures/bias_mitigation \
    --results-block docs/results.md --command "bash experiments/bias_mitigation.sh"
else   # another selection: its own summary, docs/results.md stays as it is
  python -m eval report "${dirs[@]}" --across-seeds --out runs/exp-summary \
    --command "SEEDS=\"$SEEDS\" RUNS=\"$RUNS\" bash experiments/bias_mitigation.sh"
fi
