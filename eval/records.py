"""``bias.jsonl``: one JSON record per (evaluation, probe, n), and the flat views of a record.

A record is ``{"step", "samples_seen", "probe", "n_objects", "eval_seconds", "result"}`` where ``result``
is the probe's own dict (shares as ``{"share", "count", "total", "ci"}``, denominators, indices),
unchanged. Readers flatten it:

- :func:`flatten` -> scalars for loggers, ``tor/n3/unconditional/pos1`` (= share),
  ``.../pos1/count``, ``.../pos1/total``, ``.../pos1/ci_lo``, ``.../pos1/ci_hi``, ``tor/n3/order_bias``.
- :func:`share_groups` -> ``{"unconditional": {"pos1": 0.4, ...}, ...}`` for curves.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BIAS_FILE = "bias.jsonl"
_PROPORTION_KEYS = {"share", "count", "total", "ci"}
_SKIP_KEYS = {"probe", "labels"}


def is_proportion(obj: Any) -> bool:
    """True for ``eval.stats.proportion`` dicts: ``{"share", "count", "total", "ci"}``."""
    return isinstance(obj, Mapping) and _PROPORTION_KEYS <= set(obj)


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def flatten(obj: Any, prefix: str) -> dict[str, float]:
    """Every finite number in ``obj`` as ``{"<prefix>/<path>": value}``; strings and None dropped.

    A proportion dict becomes ``<path>`` (its share) plus ``/count``, ``/total``, ``/ci_lo``, ``/ci_hi``.
    """
    out: dict[str, float] = {}
    if is_proportion(obj):
        if _number(obj["share"]) is not None:
            out[prefix] = float(obj["share"])
        out[f"{prefix}/count"] = float(obj["count"])
        out[f"{prefix}/total"] = float(obj["total"])
        if obj["ci"] is not None:
            out[f"{prefix}/ci_lo"], out[f"{prefix}/ci_hi"] = (float(v) for v in obj["ci"])
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            if key not in _SKIP_KEYS:
                out.update(flatten(value, f"{prefix}/{key}"))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            out.update(flatten(value, f"{prefix}/{i}"))
    elif (value := _number(obj)) is not None:
        out[prefix] = value
    return out


def share_groups(result: Mapping, path: str = "") -> dict[str, dict[str, float | None]]:
    """Shares of a probe result grouped by the dict that holds them.

    ``{"conditional": {"pos1": .5, ...}, "unconditional": {...,"none": .1}}`` for TOR/IOR,
    ``{"accuracy": {...}}`` for TOC/IOC, ``{"": {"s1": .., "s2": ..}}`` for ITM, and
    ``{"large_first/conditional": {...}, ...}`` for Claim 1.
    """
    groups: dict[str, dict[str, float | None]] = {}
    for key, value in result.items():
        if is_proportion(value):
            groups.setdefault(path, {})[str(key)] = value["share"]
        elif isinstance(value, Mapping):
            sub = f"{path}/{key}" if path else str(key)
            for g, shares in share_groups(value, sub).items():
                groups.setdefault(g, {}).update(shares)
    return groups


def make_records(suite_out: Mapping, step: int, samples_seen: int, eval_seconds: float | None = None) -> list[dict]:
    """One record per (probe, n) of a ``run_suite`` result ``{probe: {n: result}}``.

    ``eval_seconds`` is the wall time of the whole evaluation (all probes), repeated in each record.
    """
    records = []
    for probe, per_n in suite_out.items():
        if not isinstance(per_n, Mapping):
            raise TypeError(f"run_suite result for {probe!r} should map n -> result, got {type(per_n).__name__}")
        for n, result in per_n.items():
            records.append({"step": int(step), "samples_seen": int(samples_seen), "probe": str(probe),
                            "n_objects": int(n), "eval_seconds": eval_seconds, "result": result})
    return records


def metric_key(record: Mapping) -> str:
    """``<probe>/n<k>``: the key prefix of a record's scalars."""
    return f"{record['probe']}/n{record['n_objects']}"


def append_records(path: str | Path, records: Iterable[Mapping]) -> None:
    """Append records as JSON lines in one write, flushed to disk (a crash leaves whole lines)."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def read_records(path: str | Path) -> list[dict]:
    """Records of a ``bias.jsonl`` (or a run dir holding one), sorted by step.

    A torn last line (crash while writing) is skipped with a warning. If a resumed run
    re-evaluated a step, the later record for that (step, probe, n) wins.
    """
    path = Path(path)
    if path.is_dir():
        path = path / BIAS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {BIAS_FILE} at {path}: was the run trained with BiasEvalCallback?")
    latest: dict[tuple, dict] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if lineno == len(lines):
                log.warning("%s: skipping torn last line %d", path, lineno)
                continue
            raise ValueError(f"{path}: line {lineno} is not JSON ({e.msg})") from e
        missing = {"step", "samples_seen", "probe", "n_objects", "result"} - set(rec)
        if missing:
            raise ValueError(f"{path}: line {lineno} lacks {sorted(missing)}; not a bias.jsonl record")
        latest[(rec["step"], rec["probe"], rec["n_objects"])] = rec
    return sorted(latest.values(), key=lambda r: (r["step"], r["probe"], r["n_objects"]))


def by_probe(records: Iterable[Mapping]) -> Iterator[tuple[str, int, list[Mapping]]]:
    """``(probe, n, records sorted by samples_seen)`` for every (probe, n) present."""
    groups: dict[tuple[str, int], list[Mapping]] = {}
    for r in records:
        groups.setdefault((r["probe"], r["n_objects"]), []).append(r)
    for (probe, n), recs in sorted(groups.items()):
        yield probe, n, sorted(recs, key=lambda r: r["samples_seen"])
