"""Zero-shot classification, the CLIP way: one text embedding per class (the L2-normalised mean of
its prompt templates' normalised embeddings, as ``open_clip.build_zero_shot_classifier``), each
image assigned the class of highest cosine similarity; top-1 and top-5 accuracy with 95 % Wilson
intervals and the chance level 1/C (top-5: 5/C).

Two image sets:

- the rendered single-object images of the eval set (every vocabulary object, the training
  callback's ``zeroshot`` probe; classes = the vocabulary);
- any class-per-folder directory (``ROOT/<class>/<image>``, e.g. an ImageNet validation folder
  laid out by class; class names from the folder names, ``_`` read as a space, or from a
  ``classnames.txt`` beside them, one name per line in sorted folder order), from
  ``python -m eval zeroshot --folder ROOT`` or the callback's ``zeroshot_folder``. Unreadable
  images are skipped and counted, never fatal.

A result: ``{"n_classes", "n_images", "top1", "top5", "chance_top1", "chance_top5",
"per_class_top1" (first 0..C-1, shares), "skipped", "summary": {"top1", "top5"}}``; below
:data:`eval.stats.MIN_ITEMS` images the summary values are ``None`` ("n/a (N = k)").
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from eval.stats import MIN_ITEMS, gated_entry, proportion

#: prompt templates averaged per class (a short, domain-neutral subset of CLIP's ImageNet templates)
TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a {}.")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def prompt_tokens(adapter: Any, classnames: Sequence[str], templates: Sequence[str] = TEMPLATES) -> torch.Tensor:
    """``[C * T, L]``: every class's prompts, class by class, tokenised."""
    if not classnames or not templates:
        raise ValueError("zero-shot needs at least one class name and one template")
    return adapter.tokenizer([t.format(c) for c in classnames for t in templates])


def class_embeddings(adapter: Any, classnames: Sequence[str], templates: Sequence[str] = TEMPLATES,
                     tokens: torch.Tensor | None = None) -> torch.Tensor:
    """``[C, D]``: per class, the normalised mean of its templates' normalised text embeddings
    (``tokens``: :func:`prompt_tokens` of the same classes and templates, if already made)."""
    if tokens is None:
        tokens = prompt_tokens(adapter, classnames, templates)
    emb = adapter.encode_text(tokens).float()
    emb = F.normalize(emb, dim=-1).reshape(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1)


def classify(images: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor, k: int = 5,
             min_items: int = MIN_ITEMS, skipped: dict | None = None) -> dict:
    """Top-1 / top-k accuracy of normalised image embeddings ``[N, D]`` against class embeddings
    ``[C, D]`` for true ``labels`` ``[N]`` (see the module docstring for the result)."""
    n, c = int(labels.shape[0]), int(weights.shape[0])
    labels = labels.to(images.device)
    sims = images.float() @ weights.to(images.device).float().T
    top = sims.topk(min(k, c), dim=1).indices
    hit1 = top[:, 0] == labels
    hitk = (top == labels[:, None]).any(dim=1)
    per_class = {}
    for cls in range(c):
        mask = labels == cls
        if mask.any():
            per_class[str(cls)] = round(float(hit1[mask].float().mean()), 4)
    top1, topk = proportion(int(hit1.sum()), n), proportion(int(hitk.sum()), n)
    return {
        "n_classes": c, "n_images": n, "top1": top1, f"top{k}": topk,
        "chance_top1": 1.0 / c, f"chance_top{k}": min(k, c) / c,
        "per_class_top1": per_class, "skipped": dict(skipped or {}),
        "summary": {"top1": gated_entry(top1["share"], n, top1["ci"], min_items),
                    f"top{k}": gated_entry(topk["share"], n, topk["ci"], min_items)},
    }


@dataclass
class FolderSet:
    """A class-per-folder image set: file paths, their class index, the class names, what was skipped."""

    root: Path
    paths: list[Path]
    labels: list[int]
    classnames: list[str]
    skipped: dict[str, int] = field(default_factory=dict)


def folder_problem(root: str | Path) -> str | None:
    """Why ``root`` is not a class-per-folder image set (None: it is one)."""
    root = Path(root)
    if not root.is_dir():
        return f"{root} is not a directory"
    classes = [d for d in sorted(root.iterdir()) if d.is_dir()]
    if len(classes) < 2:
        return (f"{root} has {len(classes)} class folder(s); a zero-shot folder holds one sub-folder per class "
                "(ROOT/<class>/<image>), at least 2")
    names = root / "classnames.txt"
    if names.is_file():
        n = len([x for x in names.read_text(encoding="utf-8").splitlines() if x.strip()])
        if n != len(classes):
            return f"{names} has {n} names for {len(classes)} class folders (one name per folder, sorted order)"
    return None


def load_folder(root: str | Path) -> FolderSet:
    """The images under ``root/<class>/`` (see the module docstring); raises ``ValueError`` if
    :func:`folder_problem` finds one."""
    if problem := folder_problem(root):
        raise ValueError(problem)
    root = Path(root)
    dirs = [d for d in sorted(root.iterdir()) if d.is_dir()]
    names_file = root / "classnames.txt"
    if names_file.is_file():
        classnames = [x.strip() for x in names_file.read_text(encoding="utf-8").splitlines() if x.strip()]
    else:
        classnames = [d.name.replace("_", " ") for d in dirs]
    paths, labels, skipped = [], [], {"not an image file": 0}
    for i, d in enumerate(dirs):
        for p in sorted(d.rglob("*")):
            if p.is_file():
                if p.suffix.lower() in IMAGE_SUFFIXES:
                    paths.append(p)
                    labels.append(i)
                else:
                    skipped["not an image file"] += 1
    return FolderSet(root, paths, labels, classnames, {k: v for k, v in skipped.items() if v})


def load_images(adapter: Any, paths: Sequence[Path], progress: bool = False) -> tuple[torch.Tensor | None, list[int], int]:
    """``(preprocessed images, indices of the paths read, unreadable count)``: a file PIL cannot
    read is skipped and counted."""
    from tqdm.auto import tqdm

    tensors, kept, bad = [], [], 0
    for i, p in enumerate(tqdm(paths, desc="zero-shot images", disable=not progress)):
        try:
            with Image.open(p) as im:
                tensors.append(adapter.preprocess(im.convert("RGB")))
            kept.append(i)
        except (OSError, UnidentifiedImageError, ValueError):
            bad += 1
    return (torch.stack(tensors) if tensors else None), kept, bad


def prepare_folder(adapter: Any, folder: FolderSet, progress: bool = False) -> dict:
    """Decode a :class:`FolderSet`'s images once: ``{"images", "labels", "classnames", "skipped", "root"}``."""
    images, kept, bad = load_images(adapter, folder.paths, progress)
    return {"images": images, "labels": torch.tensor([folder.labels[i] for i in kept], dtype=torch.long),
            "classnames": list(folder.classnames), "root": str(folder.root),
            "tokens": prompt_tokens(adapter, folder.classnames) if folder.classnames else None,
            "skipped": {**folder.skipped, **({"unreadable image": bad} if bad else {})}}


def run_prepared(adapter: Any, part: dict, templates: Sequence[str] = TEMPLATES, k: int = 5,
                 min_items: int = MIN_ITEMS) -> dict:
    """Zero-shot accuracy of :func:`prepare_folder`'s images; the result also names its classes."""
    tokens = part.get("tokens") if templates == TEMPLATES else None  # prepared with the default templates
    weights = class_embeddings(adapter, part["classnames"], templates, tokens)
    emb = adapter.encode_image(part["images"]) if part["images"] is not None else torch.zeros(0, weights.shape[1])
    out = classify(emb, weights, part["labels"], k, min_items, part["skipped"])
    out["classnames"], out["root"] = part["classnames"], part["root"]
    return out
