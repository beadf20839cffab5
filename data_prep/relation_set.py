"""A counterbalanced eval set of two-object scenes for the in-world compositional probes
(``eval.compositional``): every image holds objects A and B side by side or one above the other,
one large and one small, so the truth of "a cat to the left of a dog" and "a large cat and a
small dog" is known.

For each of ``blocks`` rounds and each object A of a shuffled vocabulary (``perm[t]``), B is
``perm[(t + d) % V]`` (a new offset d per round) and four images are drawn: A and B side by side
or stacked, A large or B large. A is left of B (above B) when ``t`` is even, right (below) when
odd. Over a round every object is A once and B once in each of the four layouts, A's relation to
B is each of left/right/above/below equally often, and A is the large one in half the images.

Manifest (``manifest.jsonl``, one line per image): ``{"image", "objects": [A, B], "relation"
(where A is relative to B), "large" (0 or 1, the index of the large one), "areas", "bboxes"}``;
``meta.json`` beside it. The relation recorded is :func:`data_prep.relations.relation_of` of the
rendered boxes, checked to equal the layout's.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .comco import LARGE_AREA, SMALL_AREA, _save, vocabulary
from .fileio import write_text_atomic
from .relations import relation_of
from .render import render_scene, size_for_area
from .shards import prepare_out_dir, write_meta
from .vocab import check_names

#: centres (fractions of the side) of A and B for each (layout, A first) pair
LAYOUTS = {("h", True): ((0.27, 0.5), (0.73, 0.5)), ("h", False): ((0.73, 0.5), (0.27, 0.5)),
           ("v", True): ((0.5, 0.27), (0.5, 0.73)), ("v", False): ((0.5, 0.73), (0.5, 0.27))}


def blocks_for(objects: Sequence[str] | None) -> int:
    """Blocks that give a vocabulary of ``objects`` (None: all) at least as many images as one block of
    the whole vocabulary (4 x 62 = 248), so the probes' intervals do not widen with a small world."""
    full = len(vocabulary("objects"))
    return 1 if objects is None else math.ceil(full / len(set(objects)))


def write_relation_set(out_dir: str | Path, seed: int = 0, image_size: int = 64, blocks: int = 1,
                       overwrite: bool = False, progress: bool = True, objects: Sequence[str] | None = None) -> Path:
    """Render the set (module docstring) into ``out_dir``; returns the manifest path. ``objects``: draw
    A and B from these names only (at least 2; default: every object)."""
    if objects is not None:
        check_names(list(objects))  # raises naming the unknown ones
        if len(set(objects)) < 2:
            raise ValueError(f"a relation set needs at least 2 distinct objects, got {sorted(set(objects))}")
    names = sorted(set(objects)) if objects is not None else vocabulary("objects")
    rng = np.random.default_rng(seed)
    jobs = []
    for r in range(blocks):
        perm = list(rng.permutation(len(names)))
        d = 1 + r % (len(names) - 1)
        for t in range(len(names)):
            a, b = names[perm[t]], names[perm[(t + d) % len(names)]]
            for layout in ("h", "v"):
                for large in (0, 1):
                    jobs.append((a, b, layout, t % 2 == 0, large))
    rels = [f"{k:05d}.png" for k in range(len(jobs))]
    out = prepare_out_dir(Path(out_dir), overwrite, planned=rels + ["manifest.jsonl", "meta.json"])
    lines = []
    for k, (a, b, layout, a_first, large) in enumerate(tqdm(jobs, desc="relation set", disable=not progress)):
        fractions = [LARGE_AREA if i == large else SMALL_AREA for i in range(2)]
        sizes = [size_for_area(o, f, image_size) for o, f in zip((a, b), fractions)]
        centres = [(x * image_size, y * image_size) for x, y in LAYOUTS[(layout, a_first)]]
        img, truth = render_scene([a, b], sizes, centres, image_size, "white", seed=seed * 1_000_003 + k)
        relation = relation_of(truth[0]["bbox"], truth[1]["bbox"], image_size)
        expected = {("h", True): "left", ("h", False): "right", ("v", True): "above", ("v", False): "below"}
        if relation != expected[(layout, a_first)]:  # the layout guarantees it; a renderer change must not pass silently
            raise RuntimeError(f"relation set item {k}: boxes {truth[0]['bbox']}, {truth[1]['bbox']} read as "
                               f"{relation!r}, laid out as {expected[(layout, a_first)]!r}")
        _save(img, out, rels[k])
        lines.append({"image": rels[k], "objects": [a, b], "relation": relation, "large": large,
                      "areas": [t["area"] for t in truth], "bboxes": [t["bbox"] for t in truth]})
    manifest = write_text_atomic(out / "manifest.jsonl", "".join(json.dumps(rec) + "\n" for rec in lines))
    write_meta(out, {"kind": "relations", "seed": seed, "image_size": image_size, "blocks": blocks,
                     "vocabulary": names, "num_images": len(lines), "layouts": {f"{k[0]}-{'A' if k[1] else 'B'}-first": v
                                                                                for k, v in LAYOUTS.items()},
                     "area_fractions": {"large": LARGE_AREA, "small": SMALL_AREA}})
    return manifest
