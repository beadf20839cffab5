"""CPU roofline line of a training step: achieved model FLOP/s against the cores' fp32 GEMM rate.

Model FLOPs per sample are counted from the model's shapes (``bench/step_bench.py``:
``clip_train_flops``, forward + backward, the text tower at the length it actually runs on) and
multiplied by the measured samples/s of in-process training steps (forward, backward, grad clip,
AdamW; no data loading, no Lightning loop). The ceiling is the best rate of a large fp32
``torch.mm`` on the same threads. Their ratio is the CPU analogue of MFU.

Variants, alternating in one invocation (``--variants``): ``before`` = the step as it was before
issue 10 (text on the full context, for-loop AdamW); ``after`` = today's training step (trimmed
text, fused AdamW); ``bf16`` = ``after`` under CPU bf16 autocast (changes numerics; not used by
training); ``no-trim`` = ``after`` with the text on the full context (``before`` → ``no-trim``
isolates the optimizer, ``no-trim`` → ``after`` the trimming). The percentage of an untrimmed
variant counts the FLOPs it executes (padding included) and, in brackets, the useful ones
(trimmed length), so the rows compare like with like.

    python bench/roofline.py [--model clip-tiny] [--batch 128] [--steps 6] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_bench import clip_train_flops, gemm_flops_per_s, make_step, time_steps  # noqa: E402

VARIANTS = {
    "before": {"trim_text": False, "optimizer_impl": "for-loop"},
    "after": {"trim_text": True, "optimizer_impl": "auto"},
    "no-trim": {"trim_text": False, "optimizer_impl": "auto"},  # before -> no-trim: the optimizer alone
    "bf16": {"trim_text": True, "optimizer_impl": "auto", "bf16": True},
    "compile": {"trim_text": True, "optimizer_impl": "auto", "compile_model": True},  # model.compile: true
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="clip-tiny")
    ap.add_argument("--batch", type=int, default=128, help="the quickstart's")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant and round (after 1 warm-up)")
    ap.add_argument("--rounds", type=int, default=2, help="alternate the variants this many times; best median kept")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (the GEMM ceiling uses the same)")
    ap.add_argument("--gemm-n", type=int, default=2048, help="size of the square fp32 torch.mm of the ceiling")
    ap.add_argument("--variants", nargs="+", default=["before", "after"], choices=list(VARIANTS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = {name: make_step(args.model, args.batch, **VARIANTS[name]) for name in args.variants}
    useful = clip_train_flops(steps[args.variants[-1]].model, min(s.text_len for s in steps.values()))["total"]
    per_step: dict[str, list[float]] = {name: [] for name in steps}
    peaks = []
    for _ in range(args.rounds):  # alternate: a shared machine's load hits every variant alike
        peaks.append(gemm_flops_per_s(args.gemm_n))
        for name, step in steps.items():
            per_step[name].append(statistics.median(time_steps(step, args.steps, warmup=1)))
    peak = max(peaks)
    print(f"fp32 GEMM ceiling: {peak / 1e9:.1f} GFLOP/s (torch.mm {args.gemm_n}^2, best of {5 * args.rounds}, "
          f"{args.threads} threads)")
    for name, step in steps.items():
        flops = clip_train_flops(step.model, step.text_len)["total"]
        sec = min(per_step[name])
        sps = step.batch / sec
        achieved = flops * sps
        extra = f" [useful FLOPs: {100 * useful * sps / peak:.1f} %]" if flops != useful else ""
        extra += f"; ms/step per round: {[round(t * 1e3) for t in per_step[name]]}"
        print(f"{name:6s}: {args.model} batch {step.batch}, text on {step.text_len} tokens, "
              f"{flops / 1e9:.3f} GFLOP/sample fwd+bwd, {sec * 1e3:.0f} ms/step = {sps:.1f} samples/s -> "
              f"{achieved / 1e9:.1f} GFLOP/s = {100 * achieved / peak:.1f} % of the GEMM ceiling{extra}")
    if "before" in per_step and "after" in per_step:
        print(f"after / before samples/s: {min(per_step['before']) / min(per_step['after']):.2f}x")


if __name__ == "__main__":
    main()
