"""Gradient checkpointing both ways (``model.grad_checkpointing``): step time and activation memory.

One training step (forward + backward) of a CLIP with and without open_clip's
``set_grad_checkpointing``, alternated ``--reps`` times in one process. Memory: on CUDA the peak
allocated bytes of the step (``torch.cuda.max_memory_allocated``); on any device the most bytes autograd
keeps for the backward at one time (:class:`SavedTensorMeter`; exact, the part checkpointing removes).

    python bench/grad_checkpointing.py [--model clip-tiny] [--batch 128] [--reps 5] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from train.loss import build_loss, contrastive_loss
from train.module import CLIPModule


class _Saved:
    """A tensor autograd keeps for the backward; its bytes count as live until autograd drops it."""

    __slots__ = ("tensor", "nbytes", "meter", "__weakref__")

    def __init__(self, tensor: torch.Tensor, meter: "SavedTensorMeter") -> None:
        self.tensor, self.nbytes, self.meter = tensor, tensor.numel() * tensor.element_size(), meter
        meter.live += self.nbytes
        meter.peak = max(meter.peak, meter.live)

    def __del__(self) -> None:
        self.meter.live -= self.nbytes


class SavedTensorMeter:
    """Context manager: the peak bytes of tensors autograd holds for backward passes at one time
    (saved-tensor hooks; a graph freed by its backward frees its bytes)."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    def __enter__(self) -> "SavedTensorMeter":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: _Saved(t, self), lambda s: s.tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def timed(run, cuda: bool) -> tuple[float, int, int]:
    """Seconds, peak autograd-saved bytes and (CUDA) peak allocated bytes of ``run()`` (forward + backward)."""
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with SavedTensorMeter() as meter:
        run()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, meter.peak, torch.cuda.max_memory_allocated() if cuda else 0


def step(module: CLIPModule, images: torch.Tensor, texts: torch.Tensor) -> tuple[float, int, int]:
    """Seconds, peak autograd-saved bytes and (CUDA) peak bytes of one forward + backward."""
    result = timed(lambda: contrastive_loss(module.model, images, texts, build_loss("clip")).backward(), images.is_cuda)
    module.model.zero_grad(set_to_none=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="clip-tiny")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    modules = {flag: CLIPModule(args.model, grad_checkpointing=flag).to(args.device).train() for flag in (False, True)}
    size = modules[False].model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.randn(args.batch, 3, size, size, device=args.device)
    texts = modules[False].tokenizer([f"a photo of object {i % 97} and object {i % 13}" for i in range(args.batch)]).to(args.device)
    results = {False: [], True: []}
    for flag in (False, True):
        step(modules[flag], images, texts)  # warm-up
    for _ in range(args.reps):
        for flag in (False, True):
            results[flag].append(step(modules[flag], images, texts))
    for flag in (False, True):
        secs = [r[0] for r in results[flag]]
        print(f"grad_checkpointing={flag!s:5}  step {statistics.median(secs):.3f} s (median of {args.reps}, "
              f"min {min(secs):.3f})  autograd-saved {results[flag][0][1] / 2**20:.1f} MiB"
              + (f"  peak {results[flag][0][2] / 2**20:.0f} MiB" if args.device.startswith("cuda") else ""))
    t0, t1 = (statistics.median(r[0] for r in results[f]) for f in (False, True))
    m0, m1 = results[False][0][1], results[True][0][1]
    print(f"ratio on/off: time {t1 / t0:.2f}x, autograd-saved memory {m1 / m0:.2f}x "
          f"({args.model}, batch {args.batch}, {args.device}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
