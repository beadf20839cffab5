"""``bias.jsonl``: one JSON record per (evaluation, probe, n), and the flat views of a record.

A record is ``{"step", "samples_seen", "probe", "n_objects", "eval_seconds", "result"}`` where ``result``
is the probe's own dict (shares as ``{"share", "count", "total", "ci"}``, denominators, and the
summary indices under ``result["summary"]``, see ``eval.probes``), unchanged. Readers flatten it:

- :func:`flatten` -> scalars for loggers, ``tor/n3/unconditional/pos1`` (= share),
  ``.../pos1/count``, ``.../pos1/total``, ``.../pos1/ci_lo``, ``.../pos1/ci_hi``, and each summary
  index as ``tor/n3/order_bias`` (its ``value``; the name has no ``summary/`` in it) with its 95 %
  interval as ``tor/n3/order_bias/ci_lo`` and ``.../ci_hi`` where it has one.
- :func:`share_groups` -> ``{"unconditional": {"pos1": 0.4, ...}, ...}`` for curves.
- :func:`summary_of` -> ``{"order_bias": {"value", "denominator", "ci"}, ...}`` for tables and index
  curves (``ci`` is ``[lo, hi]`` or None; records written before intervals existed have none).

Records of older runs, written before results had ``summary``, stay readable: :func:`scan_records`
rebuilds their ``summary`` from the top-level index terms they carry (``order_bias``, ``size_bias``,
``gap``, ``first_share_gap`` and the ``_conditional`` ones) with ``eval.probes.legacy_summary``.

The file is append-only and survives a tear: an append first cuts a torn last line (a write cut
short by a kill) back to the last newline, and readers skip any bad line with a warning.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from data_prep.checks import is_real

log = logging.getLogger(__name__)

BIAS_FILE = "bias.jsonl"
SUMMARY_KEY = "summary"  # = eval.probes.SUMMARY_KEY (not imported: this module stays free of torch)
_PROPORTION_KEYS = {"share", "count", "total", "ci"}
_SKIP_KEYS = {"probe", "labels", "per_class_top1", "classnames", "kinds", "no_prompt", "missing_image_examples"}
#: probes beyond the paper's (``eval.benchmarks``): records with ``n_objects: null``, scalars under
#: these prefixes instead of ``bias/<probe>/n<k>``
BENCHMARK_PREFIX = {
    "zeroshot": "zeroshot/rendered", "zeroshot_folder": "zeroshot/folder",
    "word_order": "word_order/rendered", "word_order_coco": "word_order/coco",
    "sugarcrepe": "sugarcrepe", "coco_bias": "coco_bias", "compositional": "compositional",
}


def is_proportion(obj: Any) -> bool:
    """True for ``eval.stats.proportion`` dicts: ``{"share", "count", "total", "ci"}``."""
    return isinstance(obj, Mapping) and _PROPORTION_KEYS <= set(obj)


def _number(x: Any) -> float | None:
    return float(x) if is_real(x) else None


def flatten(obj: Any, prefix: str) -> dict[str, float]:
    """Every finite number in ``obj`` as ``{"<prefix>/<path>": value}``; strings and None dropped.

    A proportion dict becomes ``<path>`` (its share) plus ``/count``, ``/total``, ``/ci_lo``, ``/ci_hi``.
    A ``summary`` dict becomes ``<prefix>/<index>`` = its ``value`` for each index (so the names
    stay ``bias/tor/n3/order_bias`` as before ``summary`` existed), plus ``<prefix>/<index>/ci_lo``
    and ``/ci_hi`` when the entry has a ``ci``.
    """
    out: dict[str, float] = {}
    if isinstance(obj, Mapping) and isinstance(obj.get(SUMMARY_KEY), Mapping):
        for index, entry in obj[SUMMARY_KEY].items():
            if isinstance(entry, Mapping) and (value := _number(entry.get("value"))) is not None:
                out[f"{prefix}/{index}"] = value
                ci = entry.get("ci")
                if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_number(c) is not None for c in ci):
                    out[f"{prefix}/{index}/ci_lo"], out[f"{prefix}/{index}/ci_hi"] = (float(c) for c in ci)
        obj = {k: v for k, v in obj.items() if k != SUMMARY_KEY}
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


def summary_of(result: Mapping) -> dict[str, dict]:
    """The summary indices of a probe result: ``{index: {"value": float | None, "denominator": str,
    "ci": [lo, hi] | None}}`` (``ci`` may be absent in old records: read it with ``.get``).

    ``{}`` for a result without any (TOC, IOC). Readers of records use this, never key suffixes.
    """
    summary = result.get(SUMMARY_KEY)
    return dict(summary) if isinstance(summary, Mapping) else {}


def add_legacy_summaries(result: Any) -> Any:
    """Give every result dict inside ``result`` that lacks ``summary`` one rebuilt from its
    top-level index terms (records written before ``summary`` existed); in place, returns ``result``."""
    if isinstance(result, dict):
        for value in result.values():
            add_legacy_summaries(value)
        if SUMMARY_KEY not in result:
            from eval.probes import legacy_summary  # only for old files: keeps torch out of new reads

            if summary := legacy_summary(result):
                result[SUMMARY_KEY] = summary
    return result


def make_records(suite_out: Mapping, step: int, samples_seen: int, eval_seconds: float | None = None,
                 benchmarks: Mapping[str, Mapping] | None = None) -> list[dict]:
    """One record per (probe, n) of a ``run_suite`` result ``{probe: {n: result}}``, then one per
    probe of ``eval.benchmarks.run_benchmarks``'s ``{probe: result}`` (``n_objects: null``).

    ``eval_seconds`` is the wall time of the whole evaluation (all probes), repeated in each record.
    """
    records = [{"step": int(step), "samples_seen": int(samples_seen), "probe": str(probe), "n_objects": None,
                "eval_seconds": eval_seconds, "result": result} for probe, result in (benchmarks or {}).items()]
    for probe, per_n in suite_out.items():
        if not isinstance(per_n, Mapping):
            raise TypeError(f"run_suite result for {probe!r} should map n -> result, got {type(per_n).__name__}")
        for n, result in per_n.items():
            records.append({"step": int(step), "samples_seen": int(samples_seen), "probe": str(probe),
                            "n_objects": int(n), "eval_seconds": eval_seconds, "result": result})
    return records


def metric_key(record: Mapping) -> str:
    """``<probe>/n<k>`` (a benchmark probe: ``<probe>``): a record's name in tables and files."""
    return record["probe"] if record["n_objects"] is None else f"{record['probe']}/n{record['n_objects']}"


def metric_prefix(record: Mapping) -> str:
    """The prefix of a record's logged scalars: ``bias/<probe>/n<k>``, or a benchmark probe's own
    (:data:`BENCHMARK_PREFIX`, e.g. ``zeroshot/rendered``)."""
    if record["n_objects"] is None:
        return BENCHMARK_PREFIX.get(record["probe"], record["probe"])
    return f"bias/{metric_key(record)}"


REQUIRED_KEYS = ("step", "samples_seen", "probe", "n_objects", "result")


def _record_problem(line: str) -> str | None:
    """Why ``line`` is not a bias.jsonl record, or None if it is one."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        return f"not JSON ({e.msg})"
    if not isinstance(rec, dict):
        return f"not a JSON object ({type(rec).__name__})"
    missing = [k for k in REQUIRED_KEYS if k not in rec]
    return f"lacks {missing}" if missing else None


def repair_torn_tail(path: str | Path) -> int:
    """Make ``path`` end with a whole line before an append; return the bytes dropped.

    A process killed mid-write leaves a last line without its newline. If that tail is still a
    whole record (only the newline was lost) the newline is added; otherwise the tail is cut back to
    the last newline, with a warning naming the file and the bytes dropped. Without this, the next
    append would glue a record onto the torn line and the file could no longer be read.
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    with path.open("r+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return 0
        # find the last newline, reading backwards in blocks
        end, block, cut = size, 1 << 16, 0
        while end > 0:
            start = max(0, end - block)
            fh.seek(start)
            chunk = fh.read(end - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                cut = start + i + 1
                break
            end = start
        fh.seek(cut)
        tail = fh.read()
        if _record_problem(tail.decode("utf-8", errors="replace")) is None:
            fh.seek(size)
            fh.write(b"\n")
            log.warning("%s: last record had no newline (killed while writing?); added it", path)
            dropped = 0
        else:
            fh.truncate(cut)
            dropped = size - cut
            log.warning("%s: dropped a torn last line (%d bytes, a write cut short by a crash or kill) "
                        "before appending", path, dropped)
        fh.flush()
        os.fsync(fh.fileno())
    return dropped


def append_records(path: str | Path, records: Iterable[Mapping]) -> None:
    """Append records as JSON lines in one write, flushed to disk.

    A crash leaves whole lines and at most one torn last line; :func:`repair_torn_tail` removes
    that before the next append, so a resumed run never glues its records onto it.
    """
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_torn_tail(path)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def bias_path(path: str | Path) -> Path:
    """``path`` itself, or the ``bias.jsonl`` in a run dir; FileNotFoundError if there is none."""
    path = Path(path)
    if path.is_dir():
        path = path / BIAS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {BIAS_FILE} at {path}: was the run trained with BiasEvalCallback?")
    return path


def scan_records(path: str | Path) -> tuple[list[dict], list[tuple[int, str]]]:
    """``(records, bad lines)`` of a ``bias.jsonl`` (or a run dir holding one).

    Records are sorted by step; if a resumed run re-evaluated a step, the later record for that
    (step, probe, n) wins. Bad lines are ``(line number, reason)``: a torn line (crash while
    writing), or anything that is not a record; they are left out, never fatal.
    """
    path = bias_path(path)
    latest: dict[tuple, dict] = {}
    bad: list[tuple[int, str]] = []
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        problem = _record_problem(line)
        if problem is not None:
            torn = lineno == len(lines)  # no newline after it: the write was cut short
            bad.append((lineno, ("torn last line, " if torn else "") + problem))
            continue
        rec = json.loads(line)
        if isinstance(rec["result"], dict) and SUMMARY_KEY not in rec["result"]:  # an older run's record
            add_legacy_summaries(rec["result"])
        latest[(rec["step"], rec["probe"], rec["n_objects"])] = rec
    return sorted(latest.values(), key=lambda r: (r["step"], r["probe"], r["n_objects"])), bad


def describe_bad_lines(path: str | Path, bad: list[tuple[int, str]], limit: int = 5) -> str:
    """One line: how many lines of ``path`` were skipped, and which and why (the first ``limit``)."""
    shown = "; ".join(f"line {n}: {why}" for n, why in bad[:limit])
    more = f"; ... ({len(bad) - limit} more)" if len(bad) > limit else ""
    return f"{path}: skipped {len(bad)} bad line(s) ({shown}{more})"


def read_records(path: str | Path) -> list[dict]:
    """Records of a ``bias.jsonl`` (or a run dir holding one), sorted by step.

    A bad line (a torn line from a crash, or anything that is not a record) is skipped with a
    warning giving its number and the count; a file with no record at all is refused. If a resumed
    run re-evaluated a step, the later record for that (step, probe, n) wins.
    """
    records, bad = scan_records(path)
    if bad and not records:
        n, why = bad[0]
        raise ValueError(f"{bias_path(path)}: no line is a bias.jsonl record (line {n} {why})")
    if bad:
        log.warning("%s", describe_bad_lines(bias_path(path), bad))
    return records


def by_probe(records: Iterable[Mapping]) -> Iterator[tuple[str, int, list[Mapping]]]:
    """``(probe, n, records sorted by samples_seen)`` for every (probe, n) present."""
    groups: dict[tuple[str, int], list[Mapping]] = {}
    for r in records:
        groups.setdefault((r["probe"], r["n_objects"]), []).append(r)
    for (probe, n), recs in sorted(groups.items()):
        yield probe, n, sorted(recs, key=lambda r: r["samples_seen"])
