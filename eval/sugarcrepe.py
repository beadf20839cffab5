"""SugarCrepe (Hsieh et al., NeurIPS 2023): is the image closer to its caption than to a hard
negative that replaces, swaps or adds an object, attribute or relation?

Reads the official files (``{add,replace,swap}_{obj,att}.json``, ``replace_rel.json`` from
``RAIVNLab/sugar-crepe``; each ``{id: {"filename", "caption", "negative_caption"}}`` on COCO
val2017 images) from a folder, and the images from the user's COCO val2017 folder. Per subset:
accuracy = share of pairs whose positive caption is strictly more similar to the image than the
negative (SugarCrepe's own rule: ``pos > neg``), chance 0.5, with the 95 % Wilson interval and its
denominator. A pair whose image is missing or unreadable is skipped and counted; a subset below
:data:`eval.stats.MIN_ITEMS` pairs reads "n/a (N = k)"; a subset file that is absent is listed
under ``missing_subsets``.

Result: ``{"subsets": {name: {"accuracy": proportion, "n_pairs", "skipped"}}, "n_images",
"skipped", "missing_subsets", "summary": {name: ..., "mean": ...}}``; ``mean`` is the unweighted
mean over the subsets that have a value (SugarCrepe's tables average per category), its
denominator naming the subsets.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from eval.stats import MIN_ITEMS, gated_entry, proportion

SUBSETS: tuple[str, ...] = ("add_obj", "add_att", "replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att")


@dataclass
class SugarCrepeSet:
    """Pairs of every subset found: ``pairs[subset] = [(image path, caption, negative), ...]``."""

    root: Path
    images: Path
    pairs: dict[str, list[tuple[Path, str, str]]] = field(default_factory=dict)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)
    missing_subsets: list[str] = field(default_factory=list)
    missing_examples: list[str] = field(default_factory=list)


def inputs_problem(root: str | Path, images: str | Path, subsets: Sequence[str] = SUBSETS) -> str | None:
    """Why ``root``/``images`` cannot serve the benchmark (None: they can, at least in part)."""
    root, images = Path(root), Path(images)
    bad = [s for s in subsets if s not in SUBSETS]
    if bad:
        return f"unknown SugarCrepe subsets {bad}; valid: {', '.join(SUBSETS)}"
    if not root.is_dir():
        return f"SugarCrepe folder {root} is not a directory (it holds add_obj.json, swap_att.json, ...)"
    if not any((root / f"{s}.json").is_file() for s in subsets):
        return f"SugarCrepe folder {root} has none of {', '.join(s + '.json' for s in subsets)}"
    if not images.is_dir():
        return f"image folder {images} is not a directory (the COCO val2017 images SugarCrepe names)"
    return None


def load(root: str | Path, images: str | Path, subsets: Sequence[str] = SUBSETS) -> SugarCrepeSet:
    """The pairs whose image exists under ``images``; raises ``ValueError`` for what
    :func:`inputs_problem` finds, or a subset file that is not SugarCrepe's format."""
    if problem := inputs_problem(root, images, subsets):
        raise ValueError(problem)
    root, images = Path(root), Path(images)
    out = SugarCrepeSet(root, images)
    for s in subsets:
        path = root / f"{s}.json"
        if not path.is_file():
            out.missing_subsets.append(s)
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from e
        entries = data.values() if isinstance(data, dict) else data
        pairs, skipped = [], {"image missing": 0, "malformed entry": 0}
        for entry in entries:
            if not (isinstance(entry, dict) and all(isinstance(entry.get(k), str)
                                                    for k in ("filename", "caption", "negative_caption"))):
                skipped["malformed entry"] += 1
                continue
            image = images / entry["filename"]
            if not image.is_file():
                skipped["image missing"] += 1
                if len(out.missing_examples) < 3:
                    out.missing_examples.append(entry["filename"])
                continue
            pairs.append((image, entry["caption"], entry["negative_caption"]))
        out.pairs[s] = pairs
        out.skipped[s] = {k: v for k, v in skipped.items() if v}
    return out


@dataclass
class PreparedSugarCrepe:
    """Decoded images and tokenised captions, ready for :func:`run` (once per fit)."""

    data: SugarCrepeSet
    images: torch.Tensor | None
    image_rows: dict[str, torch.Tensor]
    tokens: torch.Tensor | None
    positive_rows: dict[str, torch.Tensor]
    negative_rows: dict[str, torch.Tensor]
    unreadable: dict[str, int]


def prepare(adapter: Any, data: SugarCrepeSet, progress: bool = False) -> PreparedSugarCrepe:
    """Decode every distinct image once (an unreadable one drops its pairs, counted) and tokenise
    every distinct caption once."""
    from eval.zeroshot import load_images

    paths = sorted({p for pairs in data.pairs.values() for p, _, _ in pairs})
    tensor, kept, _ = load_images(adapter, paths, progress)
    row_of = {paths[i]: r for r, i in enumerate(kept)}
    texts: dict[str, int] = {}
    image_rows, pos_rows, neg_rows, unreadable = {}, {}, {}, {}
    for s, pairs in data.pairs.items():
        ok = [(p, c, n) for p, c, n in pairs if p in row_of]
        unreadable[s] = len(pairs) - len(ok)
        image_rows[s] = torch.tensor([row_of[p] for p, _, _ in ok], dtype=torch.long)
        pos_rows[s] = torch.tensor([texts.setdefault(c, len(texts)) for _, c, _ in ok], dtype=torch.long)
        neg_rows[s] = torch.tensor([texts.setdefault(n, len(texts)) for _, _, n in ok], dtype=torch.long)
    tokens = adapter.tokenizer(list(texts)) if texts else None
    return PreparedSugarCrepe(data, tensor, image_rows, tokens, pos_rows, neg_rows, unreadable)


def accuracies(images: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> dict:
    """Share of pairs with ``sim(image, positive) > sim(image, negative)`` (normalised embeddings)."""
    wins = ((images * positives).sum(-1) > (images * negatives).sum(-1)).sum()
    return proportion(int(wins), int(images.shape[0]))


def run(adapter: Any, prepared: PreparedSugarCrepe, min_items: int = MIN_ITEMS) -> dict:
    """Encode and score every subset (see the module docstring for the result)."""
    img = adapter.encode_image(prepared.images) if prepared.images is not None else None
    txt = adapter.encode_text(prepared.tokens) if prepared.tokens is not None else None
    subsets, summary = {}, {}
    for s in prepared.data.pairs:
        rows = prepared.image_rows[s]
        if len(rows) and img is not None:
            acc = accuracies(img[rows], txt[prepared.positive_rows[s]], txt[prepared.negative_rows[s]])
        else:
            acc = proportion(0, 0)
        skipped = dict(prepared.data.skipped.get(s, {}))
        if prepared.unreadable.get(s):
            skipped["unreadable image"] = prepared.unreadable[s]
        subsets[s] = {"accuracy": acc, "n_pairs": acc["total"], "skipped": skipped}
        summary[s] = gated_entry(acc["share"], acc["total"], acc["ci"], min_items)
    valued = [s for s in subsets if summary[s]["value"] is not None]
    mean = sum(summary[s]["value"] for s in valued) / len(valued) if valued else None
    summary["mean"] = {"value": mean, "ci": None,
                       "denominator": f"mean of {len(valued)} subsets ({', '.join(valued)})" if valued
                       else "n/a (no subset has enough pairs)"}
    return {"subsets": subsets, "n_images": 0 if img is None else int(img.shape[0]),
            "missing_subsets": list(prepared.data.missing_subsets),
            "missing_image_examples": list(prepared.data.missing_examples), "summary": summary}
