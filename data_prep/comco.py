"""ComCO-/SimCO-style evaluation sets (``python -m data_prep comco``).

A single-object gallery (one image per object) plus, for every n and every large slot j,
a setting ``n{n}_large_slot{j}`` of images with one large object at slot j and n-1 small ones.

Counterbalancing (the paper's lists tie position to category index; this does not): per setting
the objects are shuffled (order ``perm``) and each slot s gets a distinct random offset ``d_s``;
item t puts ``perm[(t + d_s) % V]`` at slot s. Over V consecutive items every object therefore
appears exactly once in every slot, and since the large slot cycles over all slots across
settings, every object is large exactly once per slot and small equally often in every slot.
Balance is exact when ``items_per_setting`` is a multiple of the vocabulary size V (default: V).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from .fileio import atomic_write, write_text_atomic
from .render import SLOTS, render_scene, size_for_area
from .shards import prepare_out_dir, write_meta
from .vocab import SHAPES, check_names, list_objects

KINDS = ("objects", "shapes")
#: opaque area as a fraction of the image (sizing by area keeps thin objects comparable)
LARGE_AREA = 0.16
SMALL_AREA = 0.03
SINGLE_AREA = 0.25


def vocabulary(kind: str) -> list[str]:
    """Names used for an eval set of ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"--kind must be one of {KINDS}, got {kind!r}")
    return list_objects() if kind == "objects" else list(SHAPES)


def counterbalanced_items(names: Sequence[str], n: int, count: int, rng: np.random.Generator) -> list[list[str]]:
    """``count`` lists of ``n`` distinct names, in blocks of ``len(names)`` items: within a block each
    name fills every slot exactly once. Every block draws its own permutation and slot offsets, and a
    block that would repeat a list of an earlier block is drawn again, so no list (scene) repeats:
    more blocks are more distinct items, not copies (a copy would count as an independent item and
    narrow the probes' intervals without adding information)."""
    v = len(names)
    if not 1 <= n <= v:
        raise ValueError(f"--n-objects {n} must lie in [1, {v}] for a vocabulary of {v} names")
    items: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    while len(items) < count:
        size = min(v, count - len(items))
        for _ in range(1000):
            perm = [names[i] for i in rng.permutation(v)]
            offsets = [int(d) for d in rng.choice(v, size=n, replace=False)]
            block = [[perm[(t + d) % v] for d in offsets] for t in range(size)]
            if not seen & {tuple(b) for b in block}:
                break
        else:  # a tiny vocabulary: fewer distinct ordered lists than asked for
            raise ValueError(f"{count} distinct lists of {n} of {v} names cannot be drawn in counterbalanced blocks; "
                             "ask for fewer items per setting")
        seen |= {tuple(b) for b in block}
        items += block
    return items


def validate_args(image_size: int, n_objects: Sequence[int], items_per_setting: int | None, kind: str,
                  objects: Sequence[str] | None = None) -> None:
    """Raise one ``ValueError`` listing every bad argument."""
    errs = []
    if objects is not None and kind in KINDS:
        try:
            check_names(list(objects), kind)
        except ValueError as e:
            raise ValueError(f"--objects: {e}") from None  # e lists the valid names
        if len(set(objects)) != len(objects):
            errs.append(f"--objects has duplicates: {sorted(objects)}")
        too_many = [n for n in n_objects if n > len(set(objects))]
        if too_many:
            errs.append(f"--n-objects {too_many} exceed the {len(set(objects))} names given in --objects")
    if image_size < 16:
        errs.append(f"--image-size must be >= 16, got {image_size}")
    if not n_objects:
        errs.append("--n-objects needs at least one value")
    bad = [n for n in n_objects if n not in SLOTS or n < 2]
    if bad:
        errs.append(f"--n-objects values must lie in 2..{max(SLOTS)}, got {bad}")
    if items_per_setting is not None and items_per_setting < 1:
        errs.append(f"--items-per-setting must be positive, got {items_per_setting}")
    if kind not in KINDS:
        errs.append(f"--kind must be one of {KINDS}, got {kind!r}")
    if errs:
        raise ValueError("; ".join(errs))


def _save(img, out: Path, rel: str) -> None:
    with atomic_write(out / rel, "wb", fsync=False) as f:  # thousands of images: no fsync each
        img.save(f, format="PNG")


def write_eval_set(out_dir, seed: int = 0, image_size: int = 64, n_objects: Sequence[int] = (2, 3, 4, 5),
                   items_per_setting: int | None = None, kind: str = "objects", overwrite: bool = False,
                   background: str = "white", progress: bool = True,
                   objects: Sequence[str] | None = None) -> Path:
    """Render the gallery and multi-object settings; write PNGs, ``manifest.jsonl`` and ``meta.json``.

    Args:
        out_dir: output directory (must be empty unless ``overwrite``).
        seed: seeds the object orders and offsets.
        image_size: side in pixels.
        n_objects: object counts to render (each in 2..5).
        items_per_setting: images per (n, large slot); default = vocabulary size (exact balance).
        kind: ``objects`` (OpenMoji) or ``shapes`` (SimCO).
        overwrite: clear our files from a non-empty ``out_dir`` instead of refusing.
        background: renderer background (default white).
        progress: show a tqdm bar.
        objects: restrict the vocabulary to these names (default: all objects or all shapes).
    Returns:
        path of ``manifest.jsonl``.
    """
    n_objects = [int(n) for n in n_objects]
    validate_args(image_size, n_objects, items_per_setting, kind, objects)
    names = sorted(objects) if objects is not None else vocabulary(kind)
    k = items_per_setting or len(names)
    if k % len(names):
        warnings.warn(f"items_per_setting={k} is not a multiple of the vocabulary size {len(names)}: "
                      "slot/role counts will differ by one", stacklevel=2)
    rng = np.random.default_rng(seed)
    jobs: list[tuple[str, str, list[str], int | None]] = [("single", f"single/{nm}.png", [nm], None) for nm in names]
    for n in n_objects:
        for j in range(n):
            setting = f"n{n}_large_slot{j}"
            for t, items in enumerate(counterbalanced_items(names, n, k, rng)):
                jobs.append((setting, f"{setting}/{t:05d}.png", items, j))
    out = prepare_out_dir(Path(out_dir), overwrite,
                          planned=[rel for _, rel, _, _ in jobs] + ["manifest.jsonl", "meta.json"])
    lines = []
    for idx, (setting, rel, objs, large) in enumerate(tqdm(jobs, desc=f"comco-{kind}", disable=not progress)):
        if large is None:
            fractions = [SINGLE_AREA]
        else:
            fractions = [LARGE_AREA if s == large else SMALL_AREA for s in range(len(objs))]
        sizes = [size_for_area(o, f, image_size) for o, f in zip(objs, fractions)]
        img, truth = render_scene(objs, sizes, "slots", image_size, background, seed=seed * 1_000_003 + idx)
        _save(img, out, rel)
        lines.append({"image": rel, "objects": objs, "large": large, "areas": [t["area"] for t in truth],
                      "n_objects": len(objs), "kind": "single" if large is None else "multi",
                      "setting": setting, "bboxes": [t["bbox"] for t in truth]})
    manifest = write_text_atomic(out / "manifest.jsonl", "".join(json.dumps(rec) + "\n" for rec in lines))
    write_meta(out, {
        "kind": kind, "seed": seed, "image_size": image_size, "n_objects": n_objects,
        "items_per_setting": k, "background": background, "vocabulary": names,
        "area_fractions": {"large": LARGE_AREA, "small": SMALL_AREA, "single": SINGLE_AREA},
        "slots": {str(n): SLOTS[n] for n in n_objects}, "num_images": len(lines),
    })
    return manifest
