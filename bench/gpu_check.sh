#!/usr/bin/env bash
# One-shot GPU check (logic and stages: bench/gpu_check.py). After `pip install -e .`:
#   bash bench/gpu_check.sh                 # on the GPU machine, <= 8 min on one GPU
#   bash bench/gpu_check.sh --smoke         # the same code paths on the CPU, about a minute
#   bash bench/gpu_check.sh --out DIR       # keep gpu_check.json + gpu_check.log + logs/ in DIR (default: a temp folder)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export WANDB_MODE=disabled
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
uptime || true
nvidia-smi -L 2>/dev/null || echo "nvidia-smi: no NVIDIA driver on this machine"
exec python bench/gpu_check.py "$@"
