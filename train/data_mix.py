"""Weighted data mixing: ``data.train_sources``, several shard sets drawn by weight.

``data.train_sources: [{name: laion, shards: ..., weight: 0.9}, {name: counterbalanced, shards: ...,
weight: 0.1}]`` replaces ``data.train_shards``. Each source keeps its own stream (its shards drawn
with replacement, its shuffle buffer, its transform and crop draws, its bad-data guard); every
training sample's source is drawn independently with probability weight / sum of weights, by a
generator seeded from ``(seed, "mix", rank, segment, lane)`` like the rest of
:class:`train.data.TrainStream`, so the mixture is a pure function of the run's seed and the batch
index and a resume continues it exactly. The samples taken from each source are counted as
``source/<name>`` in the batch's stats and logged as ``data/source/<name>``
(:mod:`train.data_stats`).
"""
from __future__ import annotations

import itertools
import math
import random
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
KEYS = ("name", "shards", "weight")


@dataclass(frozen=True)
class TrainSource:
    """One shard set of a mixture: its name (``data/source/<name>``), shard pattern(s) and weight."""

    name: str
    shards: str | list[str]
    weight: float


def _where(i: int) -> str:
    return f"data.train_sources[{i}]"


def source_problems(raw: Any) -> list[str]:
    """Every problem with a ``data.train_sources`` value, each naming its config path (empty: valid)."""
    if not isinstance(raw, (list, tuple)) or not raw:
        return [f"data.train_sources must be a non-empty list of {{name, shards, weight}}, got {raw!r}"]
    problems, names = [], Counter()
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping):
            problems.append(f"{_where(i)} must be a mapping with keys {', '.join(KEYS)}, got {entry!r}")
            continue
        unknown = sorted(set(entry) - set(KEYS))
        if unknown:
            problems.append(f"{_where(i)}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(KEYS)}")
        name = entry.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            problems.append(f"{_where(i)}.name must be a plain name (letters, digits, _ . -), got {name!r}: it "
                            "becomes the metric data/source/<name>")
        else:
            names[name] += 1
        shards = entry.get("shards")
        if not (isinstance(shards, str) and shards) and not (
                isinstance(shards, (list, tuple)) and shards and all(isinstance(s, str) and s for s in shards)):
            problems.append(f"{_where(i)}.shards must be a shard pattern or a list of them, got {shards!r}")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            problems.append(f"{_where(i)}.weight must be a finite number > 0 (weights are normalised to sum to "
                            f"1), got {weight!r}")
    problems += [f"data.train_sources: the name {n!r} is used {k} times; names must be distinct"
                 for n, k in names.items() if k > 1]
    return problems


def parse_sources(raw: Any) -> list[TrainSource]:
    """``data.train_sources`` as :class:`TrainSource` objects; ``ValueError`` listing every problem."""
    problems = source_problems(raw)
    if problems:
        raise ValueError("Invalid data config: " + "; ".join(problems))
    return [TrainSource(e["name"], e["shards"], float(e.get("weight", 1.0))) for e in raw]


def shares(sources: list[TrainSource]) -> list[float]:
    """Each source's probability: its weight over the sum of weights."""
    total = sum(s.weight for s in sources)
    return [s.weight / total for s in sources]


def buffer_shares(shuffle_buffer: int, sources: list[TrainSource]) -> list[int]:
    """Each source's shuffle buffer: its share of ``data.shuffle_buffer`` (at least 1 while shuffling is
    on), so a mixture holds about as many samples in memory as one source would."""
    if shuffle_buffer <= 0:
        return [0] * len(sources)
    return [max(1, round(shuffle_buffer * p)) for p in shares(sources)]


def mixed(streams: list[Iterator], names: list[str], probabilities: list[float], rng: random.Random,
          counts: Counter) -> Iterator:
    """Items drawn from ``streams``: for each, a stream chosen with ``probabilities`` by ``rng``;
    ``counts["source/<name>"]`` counts each item taken (before it is passed on). Ends when a chosen
    stream ends."""
    cumulative = list(itertools.accumulate(probabilities))
    indices = range(len(streams))
    while True:
        i = rng.choices(indices, cum_weights=cumulative)[0]
        try:
            item = next(streams[i])
        except StopIteration:
            return
        counts[f"source/{names[i]}"] += 1
        yield item
