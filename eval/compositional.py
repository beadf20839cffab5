"""In-world compositional probes (SugarCrepe's idea with rendered ground truth) on the relation
eval set (``data_prep.relation_set``): for each two-object image, its true caption against

- ``swap_obj``: the two objects of the relation swapped ("a dog to the left of a cat");
- ``replace_rel``: the relation replaced by its opposite ("a cat to the right of a dog");
- ``swap_att``: the size words swapped ("a small cat and a large dog");
- ``replace_axis`` (a positive control): the relation replaced by one on the other axis ("a cat
  above a dog" for a cat left of a dog). A model that knows only whether the two objects stand
  side by side or stacked answers it, without knowing which one is where; ``replace_rel`` and
  ``swap_obj`` need that binding. High ``replace_axis`` with chance ``replace_rel`` reads "the
  relation words are learnt, their direction is not".

The true captions name object A first (A is the large one in half the images, and left, right,
above or below B equally often, so neither size nor place is confounded with caption position).
Accuracy = mean over images of 1 if the image is closer to the true caption, ½ on a tie (within
:data:`eval.word_order.TIE_TOLERANCE`), 0 otherwise; chance 0.5. ``swap_obj`` and ``swap_att``
negatives hold the same words as the positive, so a bag-of-words text model ties every pair and
scores exactly 0.5 (tested): only word order can answer them. ``replace_rel`` and ``replace_axis``
change a word.
Normal 95 % intervals of the mean; "n/a (N = k)" below :data:`eval.stats.MIN_ITEMS`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from data_prep.relations import OPPOSITE, OTHER_AXIS, attribute_caption, relation_caption, size_words
from eval.stats import MIN_ITEMS, gated_entry, mean_interval
from eval.word_order import TIE_TOLERANCE

PROBES = ("swap_obj", "replace_rel", "swap_att", "replace_axis")


def read_set(root: str | Path) -> list[dict]:
    """The relation set's manifest lines, each with its image ``path``."""
    root = Path(root)
    path = root / "manifest.jsonl"
    if not path.is_file():
        raise ValueError(f"{root}: no manifest.jsonl (render one with data_prep.relation_set.write_relation_set)")
    items = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for it in items:
        it["path"] = root / it["image"]
    return items


def caption_pairs(item: dict, template: str = "photo") -> dict[str, tuple[str, str]]:
    """``{probe: (true caption, negative)}`` of one item."""
    a, b = item["objects"]
    rel = item["relation"]
    words = size_words(*item["areas"])
    out = {"swap_obj": (relation_caption(a, b, rel, template), relation_caption(b, a, rel, template)),
           "replace_rel": (relation_caption(a, b, rel, template), relation_caption(a, b, OPPOSITE[rel], template)),
           "replace_axis": (relation_caption(a, b, rel, template), relation_caption(a, b, OTHER_AXIS[rel], template))}
    if words is not None:
        out["swap_att"] = (attribute_caption(a, b, words, template), attribute_caption(a, b, words[::-1], template))
    return out


def pair_scores(images: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                tol: float = TIE_TOLERANCE) -> list[float]:
    """Per item 1 / ½ / 0 as the image is closer to the positive, tied, or closer to the negative."""
    d = (images * positives).sum(-1) - (images * negatives).sum(-1)
    return [1.0 if x > tol else 0.5 if abs(x) <= tol else 0.0 for x in d.tolist()]


def summarise(scores: dict[str, list[float]], min_items: int = MIN_ITEMS) -> dict:
    """The result: per probe its mean, N and ties, and ``summary`` entries named by the probes."""
    out: dict[str, Any] = {"chance": 0.5}
    summary = {}
    for probe, xs in scores.items():
        mean = sum(xs) / len(xs) if xs else None
        out[probe] = {"accuracy": mean, "n_items": len(xs), "ties": sum(x == 0.5 for x in xs)}
        summary[probe] = gated_entry(mean, len(xs), mean_interval(xs), min_items)
    out["summary"] = summary
    return out


def prepare(adapter: Any, root: str | Path, template: str = "photo", progress: bool = False) -> dict:
    """Decode the set's images and tokenise every caption once."""
    from eval.zeroshot import load_images

    items = read_set(root)
    tensor, kept, bad = load_images(adapter, [it["path"] for it in items], progress)
    texts: dict[str, int] = {}
    rows: dict[str, list[tuple[int, int, int]]] = {p: [] for p in PROBES}
    for r, i in enumerate(kept):
        for probe, (pos, neg) in caption_pairs(items[i], template).items():
            rows[probe].append((r, texts.setdefault(pos, len(texts)), texts.setdefault(neg, len(texts))))
    return {"images": tensor, "rows": rows, "tokens": adapter.tokenizer(list(texts)) if texts else None,
            "unreadable": bad, "template": template}


def run(adapter: Any, prepared: dict, min_items: int = MIN_ITEMS) -> dict:
    """Encode and score (module docstring)."""
    scores: dict[str, list[float]] = {p: [] for p in PROBES}
    if prepared["images"] is not None and prepared["tokens"] is not None:
        img = adapter.encode_image(prepared["images"])
        txt = adapter.encode_text(prepared["tokens"])
        for probe, rows in prepared["rows"].items():
            if rows:
                r = torch.tensor(rows)
                scores[probe] = pair_scores(img[r[:, 0]], txt[r[:, 1]], txt[r[:, 2]])
    out = summarise(scores, min_items)
    out["template"] = prepared["template"]
    out["skipped"] = {"unreadable image": prepared["unreadable"]} if prepared["unreadable"] else {}
    return out
