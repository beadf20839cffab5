"""The two biases on real photos: size bias of the image encoder and order bias of the text
encoder, on any COCO-format dataset (images + ``instances_*.json`` + ``captions_*.json``: COCO,
LVIS, Visual Genome exports).

Gallery: one prompt per category of the dataset (``prompt_template``, default ``"a photo of a
{}."``, or a JSON ``{category: prompt}``; a category without a prompt is left out of the gallery
and every item that holds it is skipped, counted and named).

- **Image side** (``size_bias``): images with >= 2 categories (crowd regions ignored) whose
  largest instance is at least ``ratio`` x the area of the largest instance of any other category.
  Per image the lead is the largest category and the others are its other categories.
- **Text side** (``order_bias``): captions naming >= 2 of their image's boxed categories
  (:func:`data_prep.mentions.mentioned_names`, category names added to the COCO vocabulary as
  :func:`data_prep.coco.vocabulary_for` does); the lead is the category named first. Because
  captions tend to name the largest object first (``python -m data_prep caption-order``), the
  index is also given on the captions whose first-named category is not the largest of those they
  name (``order_bias_own_first_not_largest``): there the two biases pull apart.

Each item with k own categories scores ``X = 1`` if the lead wins, ``-1/(k-1)`` if another own
category wins, ``0`` if a category the image does not hold wins (gallery view only). The index is
the mean of X: chance (the winner uniform among the own categories) gives 0 for any mix of k, the
same reading as the rendered probes' ``share(first) - mean share(others)``. Two views:

- ``unconditional`` / ``size_bias``, ``order_bias``: the top-1 of the whole gallery;
- ``own_objects`` / ``..._own``: the most similar of the item's own categories (no "none").

Shares come with Wilson intervals; the chance share of the lead is ``mean(1/k)`` among own
categories. Indices have normal 95 % intervals of the mean of X (:func:`eval.stats.mean_interval`)
and read "n/a (N = k)" below :data:`eval.stats.MIN_ITEMS` items.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from data_prep.coco import check_inputs, find_image, id_mismatch, images_absent, load_coco, vocabulary_for
from data_prep.mentions import mentioned_names
from eval.stats import MIN_ITEMS, gated_entry, mean_interval, proportion

PROMPT_TEMPLATE = "a photo of a {}."
DEFAULT_RATIO = 2.0


@dataclass
class CocoItems:
    """What the probes ask: the gallery's categories and prompts, image items (path, own
    categories largest first) and caption items (caption, named categories in caption order)."""

    categories: list[str]
    prompts: list[str]
    images: list[tuple[Path, list[int]]] = field(default_factory=list)
    captions: list[tuple[str, list[int], bool]] = field(default_factory=list)  # (caption, cats, first is largest)
    skipped_images: dict[str, int] = field(default_factory=dict)
    skipped_captions: dict[str, int] = field(default_factory=dict)
    no_prompt: list[str] = field(default_factory=list)
    ratio: float = DEFAULT_RATIO


def _count(d: dict[str, int], reason: str) -> None:
    d[reason] = d.get(reason, 0) + 1


def inputs_problems(images: str | Path, instances: Sequence[str | Path], captions: Sequence[str | Path],
                    prompts: str | Path | None = None) -> list[str]:
    """Problems found before any model is loaded, each naming its flag."""
    errs = check_inputs([Path(images)], [Path(c) for c in captions], [Path(i) for i in instances])
    if not instances:
        errs.append("--instances: give the COCO instances file (boxes)")
    if prompts is not None and not Path(prompts).is_file():
        errs.append(f"--prompts {prompts} does not exist (a JSON object {{category: prompt}})")
    return errs


def load_items(images: str | Path, instances: Sequence[str | Path], captions: Sequence[str | Path] = (),
               ratio: float = DEFAULT_RATIO, prompt_template: str = PROMPT_TEMPLATE,
               prompts: Mapping[str, str] | None = None) -> CocoItems:
    """Read the annotations and choose the items (module docstring). Raises ``ValueError`` when
    the files describe other images than the folder holds (:func:`data_prep.coco.id_mismatch`,
    :func:`data_prep.coco.images_absent`)."""
    if "{}" not in prompt_template:
        raise ValueError(f"prompt template needs a '{{}}' for the category, got {prompt_template!r}")
    imgs, anns, caps = load_coco(list(instances), list(captions))
    image_dirs = [Path(images)]
    if problem := id_mismatch(imgs, anns, caps, True) if caps else None:
        raise ValueError(problem)
    if problem := images_absent(imgs, anns, image_dirs):
        raise ValueError(problem)
    names = sorted({a["name"] for al in anns.values() for a in al})
    no_prompt = sorted(n for n in names if prompts is not None and n not in prompts)
    categories = [n for n in names if n not in no_prompt]
    col = {n: i for i, n in enumerate(categories)}
    items = CocoItems(categories, [prompts[n] if prompts is not None else prompt_template.format(n) for n in categories],
                      no_prompt=no_prompt, ratio=float(ratio))
    vocab = vocabulary_for(names)
    for image_id in sorted(anns):
        areas: dict[str, float] = {}
        for a in anns[image_id]:
            if not a.get("iscrowd"):
                area = float(a.get("area") or a["bbox"][2] * a["bbox"][3])
                areas[a["name"]] = max(areas.get(a["name"], 0.0), area)
        order = sorted(areas, key=lambda n: -areas[n])
        lacking = [n for n in order if n not in col]
        # image side
        if len(order) < 2:
            _count(items.skipped_images, "fewer than 2 categories")
        elif areas[order[0]] < ratio * areas[order[1]]:
            _count(items.skipped_images, f"largest < {ratio:g} x the next category")
        elif lacking:
            _count(items.skipped_images, "category without prompt")
        elif image_id not in imgs or (path := find_image(image_dirs, imgs[image_id]["file_name"])) is None:
            _count(items.skipped_images, "image missing")
        else:
            items.images.append((path, [col[n] for n in order]))
        # text side
        canon = {vocab.canonical(n): n for n in areas}
        for c in caps.get(image_id, []):
            named = [canon[m] for m in mentioned_names(c["caption"], vocab) if m in canon]
            if len(named) < 2:
                _count(items.skipped_captions, "names fewer than 2 boxed categories")
            elif any(n not in col for n in named):
                _count(items.skipped_captions, "category without prompt")
            else:
                largest = max(named, key=lambda n: areas[n])
                items.captions.append((c["caption"], [col[n] for n in named], largest == named[0]))
    return items


def lead_scores(sims: torch.Tensor, own: Sequence[Sequence[int]]) -> dict:
    """Per-item scores and shares of the two views for ``sims [N, C]`` (query vs gallery) and each
    item's own gallery rows, lead first."""
    top1 = sims.argmax(dim=1).tolist()
    gallery, own_view, ks = [], [], []
    n_lead = n_other = n_none = n_own_lead = 0
    for i, rows in enumerate(own):
        k = len(rows)
        ks.append(k)
        w = 1.0 / (k - 1)
        if top1[i] == rows[0]:
            gallery.append(1.0)
            n_lead += 1
        elif top1[i] in rows:
            gallery.append(-w)
            n_other += 1
        else:
            gallery.append(0.0)
            n_none += 1
        winner = rows[int(sims[i, list(rows)].argmax())]
        own_view.append(1.0 if winner == rows[0] else -w)
        n_own_lead += winner == rows[0]
    n = len(own)
    return {"gallery": gallery, "own": own_view, "n": n,
            "unconditional": {"lead": proportion(n_lead, n), "other_own": proportion(n_other, n),
                              "none": proportion(n_none, n)},
            "own_objects": {"lead": proportion(n_own_lead, n), "other": proportion(n - n_own_lead, n)},
            "chance_own_lead": (sum(1 / k for k in ks) / n) if n else None}


def _view_summary(name: str, scores: dict, min_items: int) -> dict:
    out = {}
    for suffix, key in (("", "gallery"), ("_own", "own")):
        xs = scores[key]
        out[name + suffix] = gated_entry(sum(xs) / len(xs) if xs else None, len(xs), mean_interval(xs), min_items)
    return out


def _side(scores: dict, lead: str) -> dict:
    rename = lambda d: {(lead if k == "lead" else k): v for k, v in d.items()}  # noqa: E731
    return {"n_items": scores["n"], "unconditional": rename(scores["unconditional"]),
            "own_objects": rename(scores["own_objects"]), "chance_own_" + lead: scores["chance_own_lead"]}


@dataclass
class PreparedCoco:
    items: CocoItems
    images: torch.Tensor | None
    image_rows: list[int]
    prompt_tokens: torch.Tensor
    caption_tokens: torch.Tensor | None
    unreadable: int


def prepare(adapter: Any, items: CocoItems, progress: bool = False) -> PreparedCoco:
    """Decode the chosen images (an unreadable one is skipped and counted) and tokenise prompts and captions."""
    from eval.zeroshot import load_images

    tensor, kept, bad = load_images(adapter, [p for p, _ in items.images], progress)
    caps = adapter.tokenizer([c for c, _, _ in items.captions]) if items.captions else None
    return PreparedCoco(items, tensor, kept, adapter.tokenizer(items.prompts), caps, bad)


def run(adapter: Any, prepared: PreparedCoco, min_items: int = MIN_ITEMS) -> dict:
    """Both sides (module docstring): ``{"image", "text", "categories", "ratio", "summary"}``."""
    items = prepared.items
    gallery = adapter.encode_text(prepared.prompt_tokens)
    summary: dict = {}
    out: dict = {"n_categories": len(items.categories), "ratio": items.ratio, "no_prompt": items.no_prompt}
    own = [items.images[i][1] for i in prepared.image_rows]
    if own:
        sims = adapter.encode_image(prepared.images) @ gallery.T
        s = lead_scores(sims, own)
    else:
        s = lead_scores(torch.zeros(0, len(items.categories)), [])
    skipped = dict(items.skipped_images, **({"unreadable image": prepared.unreadable} if prepared.unreadable else {}))
    out["image"] = {**_side(s, "largest"), "skipped": skipped}
    summary.update(_view_summary("size_bias", s, min_items))
    own_t = [cats for _, cats, _ in items.captions]
    if own_t:
        sims_t = adapter.encode_text(prepared.caption_tokens) @ gallery.T
        t = lead_scores(sims_t, own_t)
    else:
        sims_t, t = None, lead_scores(torch.zeros(0, len(items.categories)), [])
    out["text"] = {**_side(t, "first"), "skipped": dict(items.skipped_captions),
                   "first_is_largest": proportion(sum(f for _, _, f in items.captions), len(items.captions))}
    summary.update(_view_summary("order_bias", t, min_items))
    apart = [i for i, (_, _, first_largest) in enumerate(items.captions) if not first_largest]
    xs = [t["own"][i] for i in apart]
    summary["order_bias_own_first_not_largest"] = gated_entry(sum(xs) / len(xs) if xs else None, len(xs),
                                                              mean_interval(xs), min_items)
    out["summary"] = summary
    return out


def read_prompts(path: str | Path) -> dict[str, str]:
    """A prompts file: a JSON object ``{category: prompt}``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"{path}: a prompts file is a JSON object {{category: prompt}}")
    return data
