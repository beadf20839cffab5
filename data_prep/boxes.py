"""Boxes sidecar for shards without boxes (LAION): detector output merged into each sample's json.

Format (one JSON object per line, any order, UTF-8)::

    {"key": "000000042", "objects": [{"name": "dog", "bbox": [x, y, w, h], "score": 0.91}, ...]}

- ``key``: the sample key of the shard (img2dataset's ``{key}.jpg`` without extension);
- ``bbox``: pixels of the image *as stored in the shard*, top-left origin; if the detector ran on
  another size, add ``"width"``/``"height"`` of that image and boxes are scaled to the sample's
  ``width``/``height``;
- ``name``: any label; it is mapped to the mention vocabulary's canonical name ("puppy" → dog)
  so it can be matched against the caption; ``score`` in [0, 1].

Any open-vocabulary detector (OWL-ViT, Grounding DINO, ...) prompted with the vocabulary's names
can write it. :func:`merge_boxes` turns a record into the sample json's ``objects`` list
(``{name, bbox, area, score, mention_index}``, ``area`` = box area), the same list the rendered
corpus and the COCO converter write, so analyses and box-based mitigations read one format.
"""
from __future__ import annotations

import json
from pathlib import Path

from .mentions import Vocabulary, default_vocabulary, mentioned_names

__all__ = ["BoxesSidecar", "load_sidecar", "merge_boxes", "sidecar_line"]


def sidecar_line(key: str, objects: list[dict], width: int | None = None, height: int | None = None) -> str:
    """One sidecar line (what a detector script writes per image)."""
    rec: dict = {"key": key, "objects": [{"name": o["name"], "bbox": [float(v) for v in o["bbox"]],
                                          "score": float(o.get("score", 1.0))} for o in objects]}
    if width is not None and height is not None:
        rec["width"], rec["height"] = int(width), int(height)
    return json.dumps(rec)


def _check_record(rec, where: str) -> dict:
    if not isinstance(rec, dict) or not isinstance(rec.get("key"), str) or not isinstance(rec.get("objects"), list):
        raise ValueError(f"{where}: expected {{\"key\": str, \"objects\": [...]}}, got {str(rec)[:120]}")
    for o in rec["objects"]:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str) or len(o.get("bbox") or ()) != 4:
            raise ValueError(f"{where}: object {str(o)[:120]} needs 'name' and 'bbox' = [x, y, w, h]")
        score = o.get("score", 1.0)
        if not isinstance(score, (int, float)) or not 0.0 <= score <= 1.0:
            raise ValueError(f"{where}: object score {score!r} must lie in [0, 1]")
    return rec


def load_sidecar(path: str | Path) -> dict[str, dict]:
    """Records by key. Raises ``ValueError`` naming ``path:line`` for a malformed line; a key seen
    twice keeps the objects of both lines."""
    out: dict[str, dict] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: not JSON ({e})") from None
            rec = _check_record(rec, f"{path}:{lineno}")
            if rec["key"] in out:
                out[rec["key"]] = {**out[rec["key"]], "objects": out[rec["key"]]["objects"] + rec["objects"]}
            else:
                out[rec["key"]] = rec
    return out


def merge_boxes(meta: dict, record: dict | None, vocab: Vocabulary | None = None, min_score: float = 0.0,
                replace: bool = False) -> dict:
    """Copy of ``meta`` whose ``objects`` are the record's boxes with ``score >= min_score``.

    Each object: ``name`` (canonical vocabulary name), ``bbox`` (in the sample's pixels), ``area``
    (box area), ``score``, ``mention_index`` (position of the name among the distinct objects the
    caption names, ``None`` if not named). ``meta`` with ``objects`` already (rendered or COCO
    ground truth) is returned unchanged unless ``replace``; so is ``meta`` when ``record`` is None.
    """
    if record is None or (meta.get("objects") and not replace):
        return meta
    vocab = vocab or default_vocabulary()
    sx = sy = 1.0
    if record.get("width") and record.get("height") and meta.get("width") and meta.get("height"):
        sx, sy = meta["width"] / record["width"], meta["height"] / record["height"]
    named = mentioned_names(meta.get("caption") or "", vocab)
    objects = []
    for o in record["objects"]:
        score = float(o.get("score", 1.0))
        if score < min_score:
            continue
        x, y, w, h = (float(v) for v in o["bbox"])
        bbox = [round(x * sx, 2), round(y * sy, 2), round(w * sx, 2), round(h * sy, 2)]
        name = vocab.canonical(o["name"].strip().lower())
        objects.append({"name": name, "bbox": bbox, "area": round(bbox[2] * bbox[3], 2), "score": score,
                        "mention_index": named.index(name) if name in named else None})
    return {**meta, "objects": objects, "boxes_source": "sidecar"}


class BoxesSidecar:
    """A loaded sidecar that merges into sample metas: ``sidecar(meta, key)`` → new meta.

    Args:
        path: the jsonl file.
        min_score: boxes below this score are dropped.
        vocabulary: mention vocabulary (``default``, ``coco``, ``rendered`` or a TSV path).
    A sample whose key has no line gets ``objects: []`` (box-based transforms then pass it
    unchanged and count it). Counts ``merged`` and ``missing`` in ``counts``.
    """

    def __init__(self, path: str | Path, min_score: float = 0.3, vocabulary: str | None = None) -> None:
        from collections import Counter

        from .mentions import load_vocabulary

        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score={min_score!r} must lie in [0, 1]")
        self.path = Path(path)
        self.records = load_sidecar(self.path)
        self.min_score = float(min_score)
        self.vocab = load_vocabulary(vocabulary)
        self.counts: Counter[str] = Counter()

    def __call__(self, meta: dict, key: str | None = None) -> dict:
        key = key if key is not None else meta.get("key")
        key = Path(str(key)).name if key is not None else None
        record = self.records.get(key) if key is not None else None
        self.counts["merged" if record is not None else "missing"] += 1
        if record is None and "objects" not in meta:
            return {**meta, "objects": []}  # covered by the sidecar's data set, no boxes for this image
        return merge_boxes(meta, record, self.vocab, self.min_score)
