#!/usr/bin/env bash
# The issue-5 experiment: quickstart baseline vs mitigations vs the corpus caption-order knob,
# two seeds each, then one report over all runs.
#
#   bash experiments/bias_mitigation.sh            # all runs (about 12 x quickstart time on 2 CPU cores)
#   SEEDS="0" bash experiments/bias_mitigation.sh  # one seed only
#   RUNS="baseline caption_shuffle" bash experiments/bias_mitigation.sh
#
# Every run is the quickstart (configs/quickstart.yaml: tiny CLIP, rendered corpus, P(large first)
# = 0.9, BiasEvalCallback on 3-object probes) plus one overlay from configs/mitigation/. Runs land
# in runs/exp-<name>-s<seed>/; a finished run (bias.jsonl with its final record and last.ckpt) is
# skipped, so the script can be re-run after an interruption. The report goes to runs/exp-report/.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-"0 1"}
RUNS=${RUNS:-"baseline caption_shuffle crop object_crop p_large_first_0.0 p_large_first_0.5"}

overlay() {  # run name -> extra --config args
  case "$1" in
    baseline) ;;   # quickstart itself: P = 0.9
    *) echo "--config mitigation/$1.yaml" ;;
  esac
}

dirs=()
for seed in $SEEDS; do      # seeds outermost: an interrupted sweep still has every configuration once
  for name in $RUNS; do
    run="exp-$name-s$seed"
    dirs+=("runs/$run")
    if [ -f "runs/$run/checkpoints/last.ckpt" ] && [ -f "runs/$run/plots/.done" ]; then
      echo "== $run: done, skipping"; continue
    fi
    echo "== $run ($(date -u +%H:%M:%S))"
    start=$(date +%s)
    # shellcheck disable=SC2046
    python -m train fit --config quickstart.yaml $(overlay "$name") \
      --run.name "$run" --seed_everything "$seed" --trainer.enable_progress_bar false
    echo "$(( $(date +%s) - start ))" > "runs/$run/plots/.done"
    echo "== $run took $(cat "runs/$run/plots/.done") s"
  done
done
python -m eval report "${dirs[@]}" --out runs/exp-report
