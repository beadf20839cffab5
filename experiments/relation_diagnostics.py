"""Why a trained model's ``swap_obj`` sits at chance: three looks at one checkpoint.

    python experiments/relation_diagnostics.py --checkpoint runs/tradeoff/exp-baseline-s0/checkpoints/last.ckpt \\
        --shards data/cache/synth-<hash>/00039.tar --relation-set DIR

1. **Training-distribution captions** (the relation captions of ``--shards``, a relational corpus):
   the image against its caption with the objects swapped (``swap_obj``) and with the relation
   flipped (``replace_rel``), split by whether the first-named object is the larger one. In the
   rendered corpus the first-named object is the largest in ``p_large_first`` of the captions, so
   a model with the order bias answers ``swap_obj`` there without knowing any relation: high when
   the large one is named first, low otherwise. ``replace_rel`` keeps both objects in place, so
   only the relation can answer it; ``replace_axis`` (the relation on the other axis) is its
   control: a model knowing only "side by side or stacked" answers it.
2. **The counterbalanced relation set** (``data_prep.relation_set``; A is the large one in half the
   images): the callback's accuracies (``eval.compositional.PROBES``), with 95 % intervals.
3. **The text tower**: the mean cosine between each relation-set caption and its ``replace_rel`` /
   ``replace_axis`` / ``swap_obj`` negative. 1.000 means the tower maps "left of" and "right of"
   to one embedding.

Accuracies are 1 / ½ / 0 per item as in ``eval.compositional``; every number carries its N.
Writes the numbers as JSON with ``--out``.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

from data_prep.read_shards import iter_samples
from data_prep.relation_set import blocks_for, write_relation_set
from data_prep.fileio import write_text_atomic
from eval import compositional
from eval.stats import MIN_ITEMS


def training_distribution(adapter, shards: list[str], max_items: int) -> dict:
    """Part 1 of the module docstring."""
    images, pos, large_first = [], [], []
    negatives: dict[str, list[str]] = {"swap_obj": [], "replace_rel": [], "replace_axis": []}
    for meta, img in iter_samples(shards, need_image=True):
        if meta.get("caption_kind") != "relation" or img is None:
            continue
        named = sorted((o for o in meta["objects"] if o.get("mention_index") is not None),
                       key=lambda o: o["mention_index"])
        # the sample as a relation-set item, so its negatives are the probes' own (eval.compositional)
        item = {"objects": [o["name"] for o in named], "relation": meta["relation"],
                "areas": [o["area"] for o in named]}
        pairs = compositional.caption_pairs(item, meta["template"])
        with Image.open(io.BytesIO(img)) as im:
            images.append(adapter.preprocess(im.convert("RGB")))
        pos.append(pairs["swap_obj"][0])
        for probe, texts in negatives.items():
            texts.append(pairs[probe][1])
        large_first.append(named[0]["area"] > named[1]["area"])
        if len(pos) == max_items:
            break
    if not pos:
        raise SystemExit(f"--shards {shards}: no relation captions (render a corpus with --relation-share > 0)")
    with torch.no_grad():
        img = adapter.encode_image(torch.stack(images))
        p = adapter.encode_text(adapter.tokenizer(pos))
        scores = {probe: compositional.pair_scores(img, p, adapter.encode_text(adapter.tokenizer(texts)))
                  for probe, texts in negatives.items()}
    swap = scores["swap_obj"]
    return compositional.summarise({
        "swap_obj": swap,
        "swap_obj, large named first": [x for x, lf in zip(swap, large_first) if lf],
        "swap_obj, small named first": [x for x, lf in zip(swap, large_first) if not lf],
        "replace_rel": scores["replace_rel"], "replace_axis": scores["replace_axis"]})["summary"]


def corpus_objects(shards: list[str]) -> list[str] | None:
    """The vocabulary the corpus of ``shards`` was restricted to (its ``meta.json`` ``objects``), or None."""
    first = Path(shards[0])
    meta = (first if first.is_dir() else first.parent) / "meta.json"
    return json.loads(meta.read_text()).get("objects") if meta.is_file() else None


def text_cosines(adapter, items: list[dict]) -> dict:
    """Part 3: mean cosine of each relation-set caption with its negatives."""
    out = {}
    for probe in ("replace_rel", "replace_axis", "swap_obj"):
        pairs = [compositional.caption_pairs(it)[probe] for it in items]
        with torch.no_grad():
            a = adapter.encode_text(adapter.tokenizer([p for p, _ in pairs]))
            b = adapter.encode_text(adapter.tokenizer([n for _, n in pairs]))
        out[probe] = {"mean_cosine": float((a * b).sum(-1).mean()), "n_items": len(pairs)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--checkpoint", required=True, help="a Lightning checkpoint of train.module.CLIPModule")
    ap.add_argument("--shards", nargs="+", required=True, help="tars (or folders of tars) of a relational corpus")
    ap.add_argument("--relation-set", help="a rendered relation set (default: render one to a temp dir, on the "
                                            "objects of --shards' corpus as the callback does)")
    ap.add_argument("--max-items", type=int, default=1000, help="relation captions read from --shards")
    ap.add_argument("--out", help="write the numbers here as JSON")
    args = ap.parse_args(argv)
    if args.max_items < MIN_ITEMS:
        ap.error(f"--max-items {args.max_items}: at least {MIN_ITEMS} (fewer gives n/a)")
    if not Path(args.checkpoint).is_file():
        ap.error(f"--checkpoint {args.checkpoint}: no such file")
    for shard in args.shards:
        if not Path(shard).exists():
            ap.error(f"--shards {shard}: no such file or folder")
    if args.relation_set and not (Path(args.relation_set) / "manifest.jsonl").is_file():
        ap.error(f"--relation-set {args.relation_set}: no manifest.jsonl (omit the flag to render one)")
    if args.out and not Path(args.out).resolve().parent.is_dir():
        ap.error(f"--out {args.out}: its folder does not exist")
    from eval.model_access import ClipAdapter

    adapter = ClipAdapter.from_checkpoint(args.checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.relation_set) if args.relation_set else Path(tmp) / "relation-set"
        if not args.relation_set:
            objects = corpus_objects(args.shards)
            write_relation_set(root, progress=False, objects=objects, blocks=blocks_for(objects))
        items = compositional.read_set(root)
        with torch.no_grad():
            comp = compositional.run(adapter, compositional.prepare(adapter, root))
    result = {"checkpoint": args.checkpoint,
              "training_distribution": training_distribution(adapter, args.shards, args.max_items),
              "relation_set": comp["summary"], "text_cosine": text_cosines(adapter, items)}
    for part in ("training_distribution", "relation_set"):
        print(part)
        for name, e in result[part].items():
            ci = f"[{e['ci'][0]:.2f}, {e['ci'][1]:.2f}]" if e.get("ci") else ""
            value = "n/a" if e["value"] is None else f"{e['value']:.3f}"
            print(f"  {name:30s} {value} {ci}  {e['denominator']}")
    print("text_cosine (caption vs its negative; 1.000 = the same embedding)")
    for name, e in result["text_cosine"].items():
        print(f"  {name:30s} {e['mean_cosine']:.3f}  N={e['n_items']}")
    if args.out:
        write_text_atomic(Path(args.out), json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
