"""Bias curves from ``bias.jsonl`` records: one PNG per probe, runs overlaid.

Figure layout: one column per n, one row per share group of the probe (``conditional`` and
``unconditional`` for TOR/IOR/I2TOR, ``accuracy`` for TOC/IOC, ...) plus a row of summary
indices (the result's ``summary``: ``order_bias``, ``size_bias``, ``gap``, ...). Colour =
position/role, line style = run, x = samples seen; the value at initialisation is a large marker
with a dotted level line.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from eval.records import by_probe, read_records, share_groups, summary_of  # noqa: E402

INDEX_GROUP = "index"
_STYLES = ("-", "--", ":", "-.")


def index_terms(result: Mapping) -> dict[str, float | None]:
    """Summary indices of a probe result (its ``summary``), index name -> value (possibly None)."""
    return {k: entry.get("value") for k, entry in summary_of(result).items()}


def series(records: Sequence[Mapping]) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """``{group: {label: (samples_seen, values)}}`` over records of one (probe, n); None -> NaN."""
    out: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for rec in records:
        # TOR's other templates / encodings stay in bias.jsonl and the loggers, not in the figure
        groups = {g: v for g, v in share_groups(rec["result"]).items() if not g.startswith("variants")}
        idx = index_terms(rec["result"])
        if idx:
            groups[INDEX_GROUP] = idx
        for group, values in groups.items():
            for label, v in values.items():
                xs, ys = out.setdefault(group or rec["probe"], {}).setdefault(label, ([], []))
                xs.append(float(rec["samples_seen"]))
                ys.append(math.nan if v is None else float(v))
    return out


def plot_probe(runs: Mapping[str, Sequence[Mapping]], probe: str, out_path: Path) -> Path:
    """Write the figure of ``probe`` for ``runs`` (label -> its records) to ``out_path`` atomically."""
    per_run_n = {name: {n: recs for p, n, recs in by_probe(records) if p == probe} for name, records in runs.items()}
    ns = sorted({n for d in per_run_n.values() for n in d})
    if not ns:
        raise ValueError(f"no records of probe {probe!r} in runs {list(runs)}")
    data = {(name, n): series(recs) for name, d in per_run_n.items() for n, recs in d.items()}
    groups = _ordered({g for s in data.values() for g in s})
    fig, axes = plt.subplots(len(groups), len(ns), figsize=(4.2 * len(ns), 3.0 * len(groups)),
                             squeeze=False, sharex="col")
    labels_seen: dict[str, str] = {}
    for col, n in enumerate(ns):
        for row, group in enumerate(groups):
            ax = axes[row][col]
            for r, name in enumerate(runs):
                for label, (xs, ys) in data.get((name, n), {}).get(group, {}).items():
                    colour = labels_seen.setdefault(label, f"C{len(labels_seen) % 10}")
                    style = _STYLES[r % len(_STYLES)]
                    ax.plot(xs, ys, style, color=colour, lw=1.5)
                    ax.plot(xs[:1], ys[:1], "o", color=colour, ms=6, mfc="white")  # initial value
                    if not math.isnan(ys[0]):
                        ax.axhline(ys[0], color=colour, ls=":", lw=0.8, alpha=0.5)
            ax.set_title(f"{probe.upper()} n={n} · {group}", fontsize=9)
            ax.grid(alpha=0.3)
            if group != INDEX_GROUP:
                ax.set_ylim(-0.02, 1.02)
            if row == len(groups) - 1:
                ax.set_xlabel("samples seen")
    handles = [Line2D([], [], color=c, lw=2, label=lab) for lab, c in labels_seen.items()]
    if len(runs) > 1:
        handles += [Line2D([], [], color="k", ls=_STYLES[r % len(_STYLES)], label=name)
                    for r, name in enumerate(runs)]
    handles.append(Line2D([], [], color="k", marker="o", mfc="white", ls="", label="at init"))
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, out_path)
    return out_path


def plot_runs(runs: Mapping[str, Sequence[Mapping]], out_dir: Path) -> list[Path]:
    """One ``<probe>.png`` per probe present in any run."""
    probes = sorted({r["probe"] for records in runs.values() for r in records})
    return [plot_probe(runs, p, Path(out_dir) / f"{p}.png") for p in probes]


def plot_run(run_dir: Path, out_dir: Path) -> list[Path]:
    """Curves of one run directory (its ``bias.jsonl``) into ``out_dir``."""
    return plot_runs({Path(run_dir).name: read_records(run_dir)}, out_dir)


def _ordered(groups: set[str]) -> list[str]:
    first = ["conditional", "unconditional", "accuracy"]
    rest = sorted(g for g in groups if g not in first and g != INDEX_GROUP)
    return [g for g in first if g in groups] + rest + ([INDEX_GROUP] if INDEX_GROUP in groups else [])
