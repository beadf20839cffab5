"""Caption-order analysis (paper Fig. 4b): does a caption name the largest object first?

For every caption, take the objects it names (:mod:`data_prep.mentions`: whole words, plurals,
synonyms, multi-word names) that have a box in the image, and record the position (0-based,
among those) of the one with the largest area, grouped by their number k. Without a bias the
position is uniform: the chance of "largest first" is 1/k for each caption, averaged over the
captions used. Web captions favour position 0.

Sources, all read as the sample json's ``objects`` list (``name``, ``area``, ``mention_index``):
  * rendered corpora (``data_prep synth``) and COCO-converted shards (``data_prep coco``);
  * shards without boxes (LAION) + a boxes sidecar (:mod:`data_prep.boxes`), or a :class:`Detector`;
  * COCO ``instances_*.json`` + ``captions_*.json`` directly (area of a category = its largest
    instance).
"""
from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import Protocol, Sequence

from PIL import Image
from tqdm.auto import tqdm

from .boxes import BoxesSidecar
from .mentions import Vocabulary, default_vocabulary, mentioned_names
from .read_shards import iter_samples
from .fileio import write_json_atomic
from .stats import wilson_interval


class Detector(Protocol):
    """Interface for captions without ground truth (raw LAION): return ``(name, area_px)`` pairs.

    ``name`` is mapped to the mention vocabulary's canonical name ("puppy" → dog); ``area_px`` is
    the object's area in pixels (box or mask area from an open-vocabulary detector such as OWL-ViT
    or Grounding DINO, loaded by the caller; none ships here). For runs over many shards, write
    the detector's output once as a boxes sidecar (:mod:`data_prep.boxes`) instead.
    """

    def __call__(self, image: Image.Image) -> list[tuple[str, float]]: ...


def largest_position(caption: str, areas: dict[str, float], vocab: Vocabulary | None = None) -> tuple[int, int] | None:
    """``(k, position of the largest named boxed object)`` or ``None`` when fewer than 2 are named.

    ``areas`` maps canonical vocabulary names to the largest box area of that object.
    """
    mentioned = [n for n in mentioned_names(caption, vocab) if n in areas]
    return _position(mentioned, areas)


def _position(mentioned: list[str], areas: dict[str, float]) -> tuple[int, int] | None:
    if len(mentioned) < 2:
        return None
    largest = max(mentioned, key=lambda n: areas[n])
    return len(mentioned), mentioned.index(largest)


def objects_position(objects: Sequence[dict]) -> tuple[int, int] | None:
    """Like :func:`largest_position`, from a sample json's ``objects`` with ``mention_index``."""
    areas: dict[int, float] = {}
    for o in objects:
        if o.get("mention_index") is not None and "area" in o:
            areas[o["mention_index"]] = max(areas.get(o["mention_index"], 0.0), float(o["area"]))
    order = sorted(areas)
    if len(order) < 2:
        return None
    largest = max(order, key=lambda i: areas[i])
    return len(order), order.index(largest)


class Tally:
    """Counts of the largest object's mention position per k, plus skipped captions."""

    def __init__(self) -> None:
        self.counts: dict[int, list[int]] = defaultdict(list)
        self.n_captions = 0
        self.n_skipped = 0

    def add(self, caption: str, areas: dict[str, float], vocab: Vocabulary | None = None) -> None:
        """Count one caption given ``{canonical name: area}`` of the image's boxed objects."""
        self.add_position(largest_position(caption, areas, vocab))

    def add_position(self, res: tuple[int, int] | None) -> None:
        """Count one caption from its ``(k, position)`` (``None``: fewer than 2 named boxed objects)."""
        self.n_captions += 1
        if res is None:
            self.n_skipped += 1
            return
        k, pos = res
        row = self.counts[k]
        row.extend([0] * (k - len(row)))
        row[pos] += 1


def analyse_shards(paths: Sequence[Path], detector: Detector | None = None,
                   max_samples: int | None = None, progress: bool = True,
                   sidecar: BoxesSidecar | str | Path | None = None, vocab: Vocabulary | None = None) -> Tally:
    """Tally over webdataset shards (files or directories of ``*.tar``).

    A sample's boxes come from its json ``objects`` (rendered, COCO-converted), else from
    ``sidecar`` (a :class:`~data_prep.boxes.BoxesSidecar` or its jsonl path), else from
    ``detector``; samples with none are counted as skipped.
    """
    vocab = vocab or default_vocabulary()
    if sidecar is not None and not isinstance(sidecar, BoxesSidecar):
        sidecar = BoxesSidecar(sidecar, min_score=0.0)
    tally = Tally()
    for i, (meta, img) in enumerate(tqdm(iter_samples(paths, detector is not None),
                                         desc="caption-order", disable=not progress)):
        if max_samples is not None and i >= max_samples:
            break
        if not meta.get("objects") and sidecar is not None:
            meta = sidecar(meta)
        caption = meta.get("caption") or ""
        if meta.get("objects"):
            objects = meta["objects"]
            if any("mention_index" in o for o in objects):
                tally.add_position(objects_position(objects))
                continue
            areas: dict[str, float] = {}
            for o in objects:
                name = vocab.canonical(o["name"])
                areas[name] = max(areas.get(name, 0), o["area"])
        elif detector is not None and img is not None:
            areas = {}
            for name, area in detector(Image.open(io.BytesIO(img)).convert("RGB")):
                name = vocab.canonical(name)
                areas[name] = max(areas.get(name, 0), area)
        else:
            tally.add_position(None)
            continue
        tally.add(caption, areas, vocab)
    return tally


def analyse_coco(instances_json: Path, captions_json: Path, max_samples: int | None = None,
                 progress: bool = True) -> Tally:
    """Tally over COCO captions using instance areas (largest instance per category)."""
    from .coco import load_coco, vocabulary_for

    _, anns, caps = load_coco([instances_json], [captions_json])
    vocab = vocabulary_for(sorted({a["name"] for lst in anns.values() for a in lst}))
    areas: dict[int, dict[str, float]] = defaultdict(dict)
    for image_id, lst in anns.items():
        for a in lst:
            name = vocab.canonical(a["name"])
            img = areas[image_id]
            img[name] = max(img.get(name, 0.0), float(a["area"]))
    items = [(image_id, c) for image_id in sorted(caps) for c in caps[image_id]]
    tally = Tally()
    for i, (image_id, c) in enumerate(tqdm(items, desc="caption-order", disable=not progress)):
        if max_samples is not None and i >= max_samples:
            break
        tally.add(c["caption"], areas.get(image_id, {}), vocab)
    return tally


def write_report(tally: Tally, out_dir: Path) -> dict:
    """Write ``caption_order.json`` and ``caption_order.png``; return the report dict.

    ``summary``: ``n_largest_first`` of ``n_used`` captions naming >= 2 boxed objects,
    ``share_largest_first`` with its 95 % Wilson interval ``ci95``, and ``chance_largest_first``
    = mean of 1/k over the same captions (what an order unrelated to size gives).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ks = sorted(tally.counts)
    shares = {str(k): [c / max(sum(tally.counts[k]), 1) for c in tally.counts[k]] for k in ks}
    used = sum(sum(v) for v in tally.counts.values())
    first = sum(v[0] for v in tally.counts.values())
    ci = wilson_interval(first, used)
    per_k = {str(k): {"n_largest_first": tally.counts[k][0], "n": sum(tally.counts[k]),
                      "share_largest_first": tally.counts[k][0] / sum(tally.counts[k]),
                      "ci95": list(wilson_interval(tally.counts[k][0], sum(tally.counts[k]))), "chance": 1 / k}
             for k in ks}
    report = {
        "counts": {str(k): tally.counts[k] for k in ks}, "shares": shares, "per_k": per_k,
        "summary": {"n_captions": tally.n_captions, "n_used": used, "n_skipped": tally.n_skipped,
                    "n_largest_first": first,
                    "share_largest_first": first / used if used else None,
                    "ci95": list(ci) if ci is not None else None,
                    "chance_largest_first": (sum(sum(tally.counts[k]) / k for k in ks) / used) if used else None},
    }
    write_json_atomic(out / "caption_order.json", report)
    _plot(report, out / "caption_order.png")
    return report


def format_summary(report: dict) -> str:
    """One line: share largest-first, count/denominator, 95 % CI, chance level."""
    s = report["summary"]
    if not s["n_used"]:
        return f"no caption names 2+ boxed objects ({s['n_captions']} captions read)"
    lo, hi = s["ci95"]
    return (f"largest object named first: {s['share_largest_first']:.3f} ({s['n_largest_first']} / {s['n_used']} "
            f"captions naming 2+ boxed objects; 95 % CI {lo:.3f}-{hi:.3f}); chance {s['chance_largest_first']:.3f}; "
            f"{s['n_skipped']} of {s['n_captions']} captions skipped")


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares = report["shares"]
    n = len(shares) + 1
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3), squeeze=False)
    s = report["summary"]
    ax = axes[0][0]
    if s["n_used"]:
        lo, hi = s["ci95"]
        share = s["share_largest_first"]
        ax.bar(["observed", "chance"], [share, s["chance_largest_first"]], color=["tab:blue", "lightgray"])
        ax.errorbar([0], [share], yerr=[[share - lo], [hi - share]], color="black", capsize=4)  # 95 % Wilson
        ax.set_title(f"largest named first (n={s['n_used']})")
    else:
        ax.text(0.5, 0.5, "no caption names 2+\nobjects with known areas", ha="center", transform=ax.transAxes)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of captions")
    for ax, (k, row) in zip(axes[0][1:], shares.items()):
        ax.bar([str(i + 1) for i in range(len(row))], row, color="tab:blue")
        ax.axhline(1 / int(k), color="gray", ls="--", lw=1, label="chance")
        ax.set_title(f"{k} objects named (n={report['per_k'][k]['n']})")
        ax.set_xlabel("position of largest object")
        ax.set_ylim(0, 1)
        ax.legend(loc="upper right")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
