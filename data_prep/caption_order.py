"""Caption-order analysis (paper Fig. 4b): where in a caption is the largest mentioned object?

For every caption, find the vocabulary objects it mentions (word match with plurals and a few
synonyms, first mention wins), keep those present in the image with a known area, and record the
mention position (0-based) of the one with the largest area, grouped by the number k of mentioned
objects. Without bias the position is uniform (share 1/k each); web captions favour position 0.

Sources:
  * shards in img2dataset layout whose json has ``objects`` with ``name`` and ``area`` (rendered
    corpora; LAION shards need a :class:`Detector`);
  * COCO ``instances_*.json`` + ``captions_*.json`` (area of a category = its largest instance).
"""
from __future__ import annotations

import io
import json
import re
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

from PIL import Image
from tqdm.auto import tqdm

from .shards import write_json_atomic
from .vocab import MISSING, OBJECTS

#: extra words -> vocabulary name (COCO names not in the drawable vocabulary are matched too)
SYNONYMS: dict[str, str] = {
    "aeroplane": "airplane", "plane": "airplane", "jet": "airplane", "bike": "bicycle",
    "motorbike": "motorcycle", "doughnut": "donut", "television": "tv", "sofa": "couch",
    "man": "person", "men": "person", "woman": "person", "women": "person", "people": "person",
    "boy": "person", "girl": "person", "child": "person", "children": "person", "kid": "person",
    "puppy": "dog", "kitten": "cat", "ship": "boat", "automobile": "car", "fridge": "refrigerator",
    "mice": "mouse", "knives": "knife", "skis": "ski", "teddy": "bear", "mug": "cup",
}
_IRREGULAR_PLURALS = {"sheep": "sheep", "people": "person", "mice": "mouse", "knives": "knife"}
COCO_EXTRA = ("cat", "bench", "blender", "microwave", "oven", "refrigerator", "remote", "sink", "toaster")


def _lexicon(names: Iterable[str]) -> dict[str, str]:
    lex: dict[str, str] = {}
    for n in names:
        lex[n] = n
        lex[n + "s"] = n
        lex[n + "es"] = n
    for word, n in {**SYNONYMS, **_IRREGULAR_PLURALS}.items():
        lex.setdefault(word, n)
        lex.setdefault(word + "s", n)
    return lex


LEXICON = _lexicon([*OBJECTS, *MISSING, *COCO_EXTRA])
_WORD = re.compile(r"[a-z]+")


def mentioned_objects(caption: str, lexicon: dict[str, str] = LEXICON) -> list[str]:
    """Vocabulary names mentioned in ``caption``, in order of first mention.

    Single-word matching: "hot dog" counts as a dog and "orange" the colour as an orange.
    """
    seen: list[str] = []
    for w in _WORD.findall(caption.lower()):
        name = lexicon.get(w)
        if name is not None and name not in seen:
            seen.append(name)
    return seen


class Detector(Protocol):
    """Interface for captions without ground truth (raw LAION): return ``(name, area_px)`` pairs.

    ``name`` must be a vocabulary name (see :data:`LEXICON` values); ``area_px`` the object's
    area in pixels (e.g. box or mask area from an open-vocabulary detector such as OWL-ViT or
    Grounding DINO, which must be installed and loaded by the caller; none ships here).
    """

    def __call__(self, image: Image.Image) -> list[tuple[str, float]]: ...


def largest_position(caption: str, areas: dict[str, float]) -> tuple[int, int] | None:
    """``(k, position of the largest mentioned object)`` or ``None`` when fewer than 2 objects match."""
    mentioned = [n for n in mentioned_objects(caption) if n in areas]
    if len(mentioned) < 2:
        return None
    largest = max(mentioned, key=lambda n: areas[n])
    return len(mentioned), mentioned.index(largest)


class Tally:
    """Counts of the largest object's mention position per k, plus skipped captions."""

    def __init__(self) -> None:
        self.counts: dict[int, list[int]] = defaultdict(list)
        self.n_captions = 0
        self.n_skipped = 0

    def add(self, caption: str, areas: dict[str, float]) -> None:
        self.n_captions += 1
        res = largest_position(caption, areas)
        if res is None:
            self.n_skipped += 1
            return
        k, pos = res
        row = self.counts[k]
        row.extend([0] * (k - len(row)))
        row[pos] += 1


def _iter_shard_samples(paths: Sequence[Path], need_image: bool) -> Iterator[tuple[dict, bytes | None]]:
    tars: list[Path] = []
    for p in paths:
        tars.extend(sorted(Path(p).glob("*.tar")) if Path(p).is_dir() else [Path(p)])
    for tar_path in tars:
        with tarfile.open(tar_path) as tar:
            current, parts = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")
                if key != current:
                    if current is not None and "json" in parts:
                        yield json.loads(parts["json"]), parts.get("jpg")
                    current, parts = key, {}
                if ext == "json" or ext == "txt" or (need_image and ext in ("jpg", "png", "webp")):
                    parts["jpg" if ext in ("jpg", "png", "webp") else ext] = tar.extractfile(member).read()
            if current is not None and "json" in parts:
                yield json.loads(parts["json"]), parts.get("jpg")


def analyse_shards(paths: Sequence[Path], detector: Detector | None = None,
                   max_samples: int | None = None, progress: bool = True) -> Tally:
    """Tally over webdataset shards (files or directories of ``*.tar``)."""
    tally = Tally()
    for i, (meta, img) in enumerate(tqdm(_iter_shard_samples(paths, detector is not None),
                                         desc="caption-order", disable=not progress)):
        if max_samples is not None and i >= max_samples:
            break
        caption = meta.get("caption") or ""
        if "objects" in meta:
            areas: dict[str, float] = {}
            for o in meta["objects"]:
                areas[o["name"]] = max(areas.get(o["name"], 0), o["area"])
        elif detector is not None and img is not None:
            areas = {}
            for name, area in detector(Image.open(io.BytesIO(img)).convert("RGB")):
                areas[name] = max(areas.get(name, 0), area)
        else:
            tally.n_captions += 1
            tally.n_skipped += 1
            continue
        tally.add(caption, areas)
    return tally


def analyse_coco(instances_json: Path, captions_json: Path, max_samples: int | None = None,
                 progress: bool = True) -> Tally:
    """Tally over COCO captions using instance areas (largest instance per category)."""
    inst = json.loads(Path(instances_json).read_text())
    caps = json.loads(Path(captions_json).read_text())
    cat_name = {c["id"]: c["name"] for c in inst["categories"]}
    areas: dict[int, dict[str, float]] = defaultdict(dict)
    for a in inst["annotations"]:
        # multi-word COCO names ("hot dog", "teddy bear") stay as they are and are never matched
        name = LEXICON.get(cat_name[a["category_id"]], cat_name[a["category_id"]])
        img = areas[a["image_id"]]
        img[name] = max(img.get(name, 0.0), float(a["area"]))
    tally = Tally()
    for i, c in enumerate(tqdm(caps["annotations"], desc="caption-order", disable=not progress)):
        if max_samples is not None and i >= max_samples:
            break
        tally.add(c["caption"], areas.get(c["image_id"], {}))
    return tally


def write_report(tally: Tally, out_dir: Path) -> dict:
    """Write ``caption_order.json`` and ``caption_order.png``; return the report dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ks = sorted(tally.counts)
    shares = {str(k): [c / max(sum(tally.counts[k]), 1) for c in tally.counts[k]] for k in ks}
    used = sum(sum(v) for v in tally.counts.values())
    first = sum(v[0] for v in tally.counts.values())
    report = {
        "counts": {str(k): tally.counts[k] for k in ks}, "shares": shares,
        "summary": {"n_captions": tally.n_captions, "n_used": used, "n_skipped": tally.n_skipped,
                    "share_largest_first": first / used if used else None,
                    "chance_largest_first": (sum(sum(tally.counts[k]) / k for k in ks) / used) if used else None},
    }
    write_json_atomic(out / "caption_order.json", report)
    _plot(shares, out / "caption_order.png")
    return report


def _plot(shares: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(len(shares), 1), figsize=(3.2 * max(len(shares), 1), 3), squeeze=False)
    for ax, (k, row) in zip(axes[0], shares.items()):
        ax.bar([str(i + 1) for i in range(len(row))], row, color="tab:blue")
        ax.axhline(1 / int(k), color="gray", ls="--", lw=1, label="chance")
        ax.set_title(f"{k} objects mentioned")
        ax.set_xlabel("position of largest object")
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("share of captions")
    if shares:
        axes[0][0].legend(loc="upper right")
    else:
        axes[0][0].text(0.5, 0.5, "no caption mentions 2+ objects with known areas", ha="center",
                        transform=axes[0][0].transAxes)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
