"""How well a vocabulary finds the objects hand-labelled captions name (``python -m data_prep mention-eval``).

A gold file is a TSV with a header ``source<TAB>id<TAB>caption<TAB>mentions``; ``mentions`` lists the
caption's object mentions in order, ``phrase => head`` separated by `` | `` (``phrase`` an exact
substring of the caption; see ``tests/data/web_captions/RULES.md``). A found mention matches a
gold one when their character spans overlap (one to one, in caption order), so "a red car" found as
"car" still counts; the head is not compared, since vocabularies name objects differently.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .mentions import Mention, Vocabulary, find_mentions


GOLD_COLUMNS = ("source", "id", "caption", "mentions")


@dataclass(frozen=True)
class GoldCaption:
    source: str
    id: str
    caption: str
    spans: tuple[tuple[int, int, str], ...]  #: (start, end, head) of each labelled mention, in order


def read_gold(path: str | Path) -> list[GoldCaption]:
    """The captions of a gold TSV with their mention spans; ``ValueError`` naming the row of a phrase
    that is not in its caption (in order)."""
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = [c for c in GOLD_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: no {', '.join(missing)} column (the header must name {', '.join(GOLD_COLUMNS)})")
        for row_no, row in enumerate(reader, 2):
            caption, spans, pos = row["caption"], [], 0
            for item in filter(None, (m.strip() for m in (row.get("mentions") or "").split(" | "))):
                phrase, _, head = item.partition(" => ")
                start = caption.find(phrase, pos)
                if not phrase or start < 0:
                    raise ValueError(f"{path}:{row_no}: mention {phrase!r} is not in the caption after offset {pos}")
                spans.append((start, start + len(phrase), head.strip()))
                pos = start + len(phrase)
            out.append(GoldCaption(row["source"], row["id"], caption, tuple(spans)))
    return out


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def match(found: Sequence[Mention], gold: Sequence[tuple[int, int, str]]) -> int:
    """Found mentions that overlap a gold mention, one to one, greedily in caption order."""
    used, hits = set(), 0
    for m in found:
        for k, g in enumerate(gold):
            if k not in used and _overlap((m.start, m.end), g[:2]):
                used.add(k)
                hits += 1
                break
    return hits


def evaluate(gold: Sequence[GoldCaption], vocab: Vocabulary) -> dict:
    """Recall, precision and first-object agreement of ``vocab`` on ``gold``, with their denominators.

    ``first_object``: captions whose first found mention overlaps the first labelled one, of the
    captions with at least one labelled mention. ``two_plus``: captions naming >= 2 objects by the
    labels, and how many of them the vocabulary sees >= 2 distinct objects in (what a shuffle needs).
    """
    tp = n_found = n_gold = first_ok = n_first = two_plus = two_plus_seen = 0
    for g in gold:
        found = find_mentions(g.caption, vocab)
        hits = match(found, g.spans)
        tp, n_found, n_gold = tp + hits, n_found + len(found), n_gold + len(g.spans)
        if g.spans:
            n_first += 1
            first_ok += bool(found) and _overlap((found[0].start, found[0].end), g.spans[0][:2])
        if len(g.spans) >= 2:
            two_plus += 1
            two_plus_seen += len({m.name for m in found}) >= 2

    def ratio(a: int, b: int) -> dict:
        return {"count": a, "of": b, "share": a / b if b else None}

    return {"captions": len(gold), "recall": ratio(tp, n_gold), "precision": ratio(tp, n_found),
            "first_object": ratio(first_ok, n_first), "two_plus_seen": ratio(two_plus_seen, two_plus)}


def format_evaluation(name: str, result: dict) -> str:
    """One block of :func:`evaluate`'s numbers, each with its denominator ("n/a (N = 0)" when empty)."""
    def show(key: str, label: str) -> str:
        r = result[key]
        value = "n/a" if r["share"] is None else f"{r['share']:.3f}"
        return f"  {label:<34} {value:>6}  ({r['count']} / {r['of']})"

    return "\n".join([f"vocabulary {name}: {result['captions']} captions",
                      show("recall", "mention recall"), show("precision", "mention precision"),
                      show("first_object", "first object found first"),
                      show("two_plus_seen", ">= 2 objects seen (of >= 2 labelled)")])
