"""Coverage of a shard set for mention-based mitigations (``python -m data_prep caption-stats``).

How many captions name 0, 1, 2, 3+ distinct vocabulary objects (:mod:`data_prep.mentions`), and
what ``CaptionShuffle`` can do with them: captions with >= 2 objects are shuffled (a draw leaves
one with k objects unchanged with probability 1/k!, and moves its first object with probability
1 - 1/k); the others pass unchanged. Rendered samples (json ``objects`` + ``template``) count
their ground-truth mentions instead of matching text, as the transform does.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from tqdm.auto import tqdm

from .mentions import Vocabulary, caption_problem, default_vocabulary, mentioned_names
from .read_shards import iter_samples

BINS = ("0", "1", "2", "3+")


def _n_objects(meta: dict, vocab: Vocabulary, names: Counter, unread: Counter) -> int:
    objects = meta.get("objects")
    if objects and "template" in meta:  # rendered: the transform rebuilds from the ground truth
        found = [o["name"] for o in objects if o.get("mention_index") is not None]
    elif (problem := caption_problem(meta.get("caption") or "")) is not None:  # CaptionShuffle leaves it
        unread[problem] += 1
        found = []
    else:
        found = mentioned_names(meta.get("caption") or "", vocab)
    names.update(found)
    return len(set(found))


def caption_stats(metas: Iterable[dict], vocab: Vocabulary | None = None, max_samples: int | None = None,
                  progress: bool = False) -> dict:
    """Counts over sample metadata dicts (each with ``caption``; rendered ones with ``objects``)."""
    vocab = vocab or default_vocabulary()
    bins: Counter[str] = Counter()
    names: Counter[str] = Counter()
    unread: Counter[str] = Counter()
    n = 0
    expected_changed = expected_first_moved = 0.0
    for meta in tqdm(metas, desc="caption-stats", disable=not progress):
        if max_samples is not None and n >= max_samples:
            break
        n += 1
        k = _n_objects(meta, vocab, names, unread)
        bins[BINS[min(k, 3)]] += 1
        if k >= 2:
            expected_changed += 1 - 1 / math.factorial(k)
            expected_first_moved += 1 - 1 / k
    shuffled = bins["2"] + bins["3+"]

    def share(c: float) -> float | None:
        return c / n if n else None

    return {
        "n_captions": n,
        "mentions": {b: {"count": bins[b], "share": share(bins[b])} for b in BINS},
        "caption_shuffle": {
            "shuffled": {"count": shuffled, "of": n, "share": share(shuffled)},
            "unchanged_fewer_than_2": {"count": n - shuffled, "of": n, "share": share(n - shuffled)},
            "expected_changed_per_epoch": {"count": round(expected_changed, 2), "of": n,
                                           "share": share(expected_changed)},
            "expected_first_object_moved_per_epoch": {"count": round(expected_first_moved, 2), "of": n,
                                                      "share": share(expected_first_moved)},
        },
        "not_searched": dict(sorted(unread.items())),
        "top_objects": dict(names.most_common(15)),
    }


def read_caption_file(path: str | Path, max_samples: int | None = None) -> list[dict]:
    """Sample dicts ``{"caption": ...}`` of a caption file: one caption per line, or the first
    tab-separated column (Conceptual Captions' TSV); a first line with a ``caption`` column is a
    header naming the column to read (e.g. ``gold.tsv``). Blank lines are skipped."""
    out, column = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f):
            cols = line.rstrip("\n").split("\t")
            if lineno == 0 and "caption" in (c.strip().lower() for c in cols):
                column = [c.strip().lower() for c in cols].index("caption")
                continue
            caption = cols[column] if column < len(cols) else ""
            if caption.strip():
                out.append({"caption": caption})
            if max_samples is not None and len(out) >= max_samples:
                break
    return out


def compare_vocabularies(metas: Iterable[dict], vocabs: dict[str, Vocabulary], max_samples: int | None = None,
                         progress: bool = False) -> dict[str, dict]:
    """:func:`caption_stats` of the same samples under each named vocabulary (e.g. the chosen one
    and ``open``), so a user sees how much a shuffle can do with each."""
    metas = list(metas) if max_samples is None else [m for _, m in zip(range(max_samples), metas)]
    return {name: caption_stats(metas, vocab, progress=progress) for name, vocab in vocabs.items()}


def shard_caption_stats(paths: Sequence[str | Path], vocab: Vocabulary | None = None,
                        max_samples: int | None = None, progress: bool = True) -> dict:
    """:func:`caption_stats` over webdataset shards (files or directories of ``*.tar``)."""
    return caption_stats((m for m, _ in iter_samples(paths)), vocab, max_samples, progress)


def format_views(views: dict[str, dict]) -> str:
    """:func:`format_stats` of each vocabulary's view, one after the other, headed by its name."""
    return "\n\n".join(f"== vocabulary: {name}\n{format_stats(stats)}" for name, stats in views.items())


def format_stats(stats: dict) -> str:
    """Plain-text table of :func:`caption_stats`'s result."""
    n = stats["n_captions"]

    def pct(x):
        return "n/a" if x is None else f"{100 * x:5.1f} %"

    lines = [f"captions: {n}", "distinct objects named   count      share"]
    for b in BINS:
        row = stats["mentions"][b]
        lines.append(f"  {b:<22} {row['count']:>6} / {n}  {pct(row['share'])}")
    cs = stats["caption_shuffle"]
    lines += [
        "CaptionShuffle",
        f"  shuffled (>= 2 objects)          {cs['shuffled']['count']:>8} / {n}  {pct(cs['shuffled']['share'])}",
        f"  left unchanged (< 2 objects)     {cs['unchanged_fewer_than_2']['count']:>8} / {n}  "
        f"{pct(cs['unchanged_fewer_than_2']['share'])}",
        f"  expected changed per epoch       {cs['expected_changed_per_epoch']['count']:>8} / {n}  "
        f"{pct(cs['expected_changed_per_epoch']['share'])}",
        f"  expected first object moved      {cs['expected_first_object_moved_per_epoch']['count']:>8} / {n}  "
        f"{pct(cs['expected_first_object_moved_per_epoch']['share'])}",
    ]
    if stats.get("not_searched"):
        lines.append("not searched (left unchanged): " + ", ".join(f"{k} {v}" for k, v in stats["not_searched"].items()))
    if stats["top_objects"]:
        lines.append("most named: " + ", ".join(f"{k} {v}" for k, v in stats["top_objects"].items()))
    return "\n".join(lines)
