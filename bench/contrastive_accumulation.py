"""Contrastive batches larger than memory (``model.accumulate_contrastive: K``): memory and step time.

One training step (forward + backward) of the same batch of B samples, its contrastive loss over
all B, built in K = 1, 4, 8 micro-batches (:mod:`train.contrastive_cache`), alternated ``--reps``
times in one process. Memory: the most bytes autograd holds for backward passes at one time
(exact, on any device; the part K divides) and on CUDA the step's peak allocated bytes.

    python bench/contrastive_accumulation.py [--model clip-tiny] [--batch 256] [--ks 1 4 8] [--reps 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics

import torch

from bench.grad_checkpointing import timed
from train.contrastive_cache import cached_contrastive_loss
from train.loss import build_loss, contrastive_loss
from train.module import CLIPModule


def step(module: CLIPModule, images: torch.Tensor, texts: torch.Tensor, k: int) -> tuple[float, int, int]:
    """Seconds, peak autograd-saved bytes and (CUDA) peak bytes of one step built in ``k`` micro-batches."""
    loss_fn = build_loss("clip")

    def run() -> None:
        if k == 1:
            contrastive_loss(module.model, images, texts, loss_fn).backward()
        else:
            cached_contrastive_loss(module.model, images, texts, loss_fn, k, lambda share: share.backward()).backward()

    result = timed(run, images.is_cuda)
    module.model.zero_grad(set_to_none=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="clip-tiny")
    ap.add_argument("--batch", type=int, default=256, help="the contrastive batch B (the same for every K)")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 4, 8], help="micro-batch counts to compare")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if any(k < 1 or args.batch < k for k in args.ks):
        ap.error(f"every K in --ks must be in [1, --batch={args.batch}], got {args.ks}")
    torch.manual_seed(0)
    module = CLIPModule(args.model).to(args.device).train()
    size = module.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.randn(args.batch, 3, size, size, device=args.device)
    texts = module.tokenizer([f"a photo of object {i % 97} and object {i % 13}" for i in range(args.batch)]).to(args.device)
    results = {k: [] for k in args.ks}
    for k in args.ks:
        step(module, images, texts, k)  # warm-up
    for _ in range(args.reps):
        for k in args.ks:
            results[k].append(step(module, images, texts, k))
    base = args.ks[0]
    t0, m0 = statistics.median(r[0] for r in results[base]), results[base][0][1]
    for k in args.ks:
        secs = [r[0] for r in results[k]]
        t, m = statistics.median(secs), results[k][0][1]
        print(f"accumulate_contrastive={k:<2}  micro-batch {args.batch // k:>4}  step {t:.3f} s (median of {args.reps}, "
              f"min {min(secs):.3f}) x{t / t0:.2f}  autograd-saved peak {m / 2**20:.1f} MiB x{m / m0:.2f}"
              + (f"  CUDA peak {results[k][0][2] / 2**20:.0f} MiB" if args.device.startswith("cuda") else ""))
    print(f"ratios against K={base} ({args.model}, contrastive batch {args.batch}, {args.device}, "
          f"{torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
