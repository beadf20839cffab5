"""``torch.profiler`` on training steps: the top ops by self CPU time.

Two steps, each forward + backward + grad-norm clip + AdamW step (``bench/step_bench.py``, the
same calls as ``CLIPModule.training_step`` without Lightning's loop): the quickstart's (clip-tiny,
batch 128, 64 px, rendered-corpus-like captions, text trimmed) and a ViT-B-32-shaped one
(open_clip ``ViT-B-32``, 224 px, context 77, random init, nothing downloaded, a CPU-sized batch).

    python bench/profile_step.py [--cases quickstart vit-b-32] [--steps 3] [--top 15] [--threads 2]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_bench import make_step  # noqa: E402

CASES = {
    "quickstart": {"model_name": "clip-tiny", "batch": 128},
    "vit-b-32": {"model_name": "ViT-B-32", "batch": 8},
}


def profile_case(name: str, steps: int, top: int, optimizer_impl: str, trim_text: bool, batch: int | None) -> str:
    kwargs = dict(CASES[name])
    if batch:
        kwargs["batch"] = batch
    step = make_step(**kwargs, optimizer_impl=optimizer_impl, trim_text=trim_text)
    for _ in range(2):  # warm-up: allocator, thread pool, first-call paths
        step.run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            with record_function("train_step"):
                step.run()
    head = (f"{name}: {kwargs['model_name']}, batch {kwargs['batch']}, text tower on {step.text_len} of "
            f"{step.texts.shape[1]} tokens, AdamW {optimizer_impl}, {steps} steps, {torch.get_num_threads()} threads")
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=44)
    return head + "\n" + table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--steps", type=int, default=3, help="profiled steps per case (after 2 warm-up steps)")
    ap.add_argument("--top", type=int, default=15, help="ops listed per case")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--batch", type=int, default=None, help="override each case's batch size")
    ap.add_argument("--optimizer", default="auto", choices=["auto", "fused", "foreach", "for-loop"],
                    help="AdamW implementation (train.optim.adamw; auto = what training uses)")
    ap.add_argument("--no-trim", action="store_true", help="run the text tower on the full context")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.cases:
        print(profile_case(name, args.steps, args.top, args.optimizer, not args.no_trim, args.batch), flush=True)


if __name__ == "__main__":
    main()
