"""Step cost of the trade-off experiment's objectives, against the plain contrastive step.

One training step (forward, aux terms, backward) of the quickstart model on a batch of rendered
relational samples (``configs/relational.yaml``'s corpus: ``relation_share`` 0.3,
``attribute_share`` 0.2), for: no aux loss (baseline and caption_shuffle, whose cost is in the data
loader: :class:`train.mitigations.CaptionShuffle` per sample, timed apart), ``order_invariant``,
``hard_negatives`` and both — interleaved ``--reps`` times in one process, medians and ratios.

    python bench/objective_step_cost.py [--batch 128] [--reps 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from data_prep.corpus_spec import CorpusSpec
from data_prep.synth import make_sample
from train.aux_losses import AuxBatch, HardNegatives, OrderInvariantText, aux_terms
from train.loss import build_loss, contrastive_loss
from train.mitigations import CaptionShuffle
from train.module import CLIPModule

CONFIGS = {"baseline": [], "order_invariant": [OrderInvariantText(weight=0.5)],
           "hard_negatives": [HardNegatives(weight=0.5)],
           "hard_negatives_order_invariant": [OrderInvariantText(weight=0.5), HardNegatives(weight=0.5)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    module = CLIPModule("clip-tiny")
    model = module.model.train()
    spec = CorpusSpec(num_samples=args.batch, relation_share=0.3, attribute_share=0.2)
    metas = []
    for i in range(args.batch):
        _, _, caption, meta = make_sample(i, spec, f"{i:05d}")
        metas.append({**meta, "caption": caption, "__key__": meta["key"]})
    size = model.visual.image_size[0]
    images = torch.randn(args.batch, 3, size, size)
    texts = module.tokenizer([m["caption"] for m in metas])
    shuffle = CaptionShuffle(p=1.0)

    def step(losses) -> float:
        t0 = time.perf_counter()
        feats: dict = {}
        loss = contrastive_loss(model, images, texts, build_loss("clip"), features=feats)
        if losses:
            batch = AuxBatch(images=images, texts=texts, meta=metas, image_features=feats["image_features"],
                             text_features=feats["text_features"], logit_scale=feats["logit_scale"], logit_bias=None,
                             model=model, tokenizer=module.tokenizer, seed=0, step=1)
            loss = loss + aux_terms(losses, batch)[0]
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    for losses in CONFIGS.values():
        step(losses)  # warm-up
    times = {name: [] for name in CONFIGS}
    for _ in range(args.reps):
        for name, losses in CONFIGS.items():
            times[name].append(step(losses))
    t0 = time.perf_counter()
    rng = random.Random(0)
    for m in metas:
        shuffle.apply(None, m["caption"], m, rng)
    shuffle_s = time.perf_counter() - t0
    base = statistics.median(times["baseline"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:32} {med:.3f} s/step (median of {args.reps})  x{med / base:.2f}")
    print(f"caption_shuffle: the baseline step + {shuffle_s * 1000:.1f} ms of CaptionShuffle per batch of "
          f"{args.batch} (in the loader's workers)  x{(base + shuffle_s) / base:.3f}")
    print(f"(clip-tiny, batch {args.batch}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
