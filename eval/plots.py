"""Bias curves from ``bias.jsonl`` records: one PNG per probe, runs overlaid.

Figure layout: one column per n, one row per share group of the probe (``conditional``,
``unconditional`` and ``own_objects`` for TOR/IOR/I2TOR, ``accuracy`` for TOC/IOC, ...), a row of
summary indices (the result's ``summary``: ``order_bias``, ``size_bias``, ``gap``, ... with their
95 % intervals as bands), and, where results carry ``variants`` (TOR's other caption templates, the
"split" encoding), a row with the headline index of every variant: dashed = a template the
training corpus holds out, solid = one it trains on, dash-dot = the split encoding.

The figure title names the run(s) and the probe; each row's y-axis says what it measures (for
indices: their definition). Colour = position/role/index/variant; with several runs, marker =
run. The value at initialisation is a large hollow marker with a dotted level line. Conditional
shares and indices that are n/a (``None``: too few conditional items, see
``eval.probes.MIN_CONDITIONAL``) are left out and the panel says ``n/a (N = k)`` instead. Bands
come from the summary's ``ci``; records written before intervals existed draw no band.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from data_prep.fileio import atomic_write  # noqa: E402
from eval.records import by_probe, read_records, share_groups, summary_of  # noqa: E402

INDEX_GROUP = "index"
VARIANT_GROUP = "variants"
_MARKERS = ("o", "s", "^", "D", "v", "P")
_SUFFIXES = ("_conditional", "_own")

#: what a summary index measures (y-axis label of the index rows), by base name
INDEX_MEANING: dict[str, str] = {
    "order_bias": "order bias: share(pos1) − mean share(others)",
    "size_bias": "size bias: share(large) − mean share(small)",
    "gap": "ITM gap: accuracy S1 − S2",
    "first_share_gap": "first-share gap: share(pos1 | large first)\n− share(pos1 | small first)",
}
#: y-axis label of a share group, by its last path component
GROUP_MEANING: dict[str, str] = {
    "conditional": "share of conditional items\n(top-n = own objects)",
    "unconditional": "share of items whose top-1\nis the object at k",
    "own_objects": "share of items whose own\nobject at k ranks highest",
    "accuracy": "held-out accuracy",
}
_VARIANT_STYLE = {"held_out": "--", "in_distribution": "-", "split": "-."}


def index_terms(result: Mapping) -> dict[str, float | None]:
    """Summary indices of a probe result (its ``summary``), index name -> value (possibly None)."""
    return {k: entry.get("value") for k, entry in summary_of(result).items()}


def base_index(name: str) -> str:
    """``order_bias_conditional`` -> ``order_bias`` (the index an entry is a form of)."""
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_conditional(name: str) -> bool:
    """True for a conditional share group (``conditional``, ``large_first/conditional``) or index."""
    return name == "conditional" or name.endswith("/conditional") or name.endswith("_conditional")


def conditional_available(result: Mapping) -> bool:
    """False if a conditional summary index of ``result`` is n/a (``None``); True if all are
    defined or there is none. Plots leave out a result's conditional shares when False."""
    return all(e.get("value") is not None for k, e in summary_of(result).items() if k.endswith("_conditional"))


def conditional_count(result: Mapping) -> str:
    """The N behind a result's conditional view, as text: ``n_conditional`` (TOR/IOR/I2TOR), else
    the denominator of its conditional summary entry (Claim 1: ``N=<large>/<small>``)."""
    if isinstance(result.get("n_conditional"), int):
        return str(result["n_conditional"])
    dens = [str(e.get("denominator")) for k, e in summary_of(result).items() if k.endswith("_conditional")]
    return dens[0].removeprefix("N=").removeprefix("N_cond=") if dens else "?"


def series(records: Sequence[Mapping]) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """``{group: {label: (samples_seen, values)}}`` over records of one (probe, n); None -> NaN.

    Conditional shares of a record whose conditional index is n/a are NaN too
    (:func:`conditional_available`): a share built on fewer items than the minimum is not drawn.
    """
    out: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for rec in records:
        ok = conditional_available(rec["result"])
        # the variants get their own row (variant_series), not their shares
        groups = {g: v for g, v in share_groups(rec["result"]).items() if not g.startswith("variants")}
        idx = index_terms(rec["result"])
        if idx:
            groups[INDEX_GROUP] = idx
        for group, values in groups.items():
            for label, v in values.items():
                if not ok and is_conditional(group):
                    v = None
                xs, ys = out.setdefault(group or rec["probe"], {}).setdefault(label, ([], []))
                xs.append(float(rec["samples_seen"]))
                ys.append(math.nan if v is None else float(v))
    return out


def _ci(entry: Mapping) -> tuple[float, float]:
    ci = entry.get("ci")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(c, (int, float)) for c in ci):
        return float(ci[0]), float(ci[1])
    return math.nan, math.nan


def index_bands(records: Sequence[Mapping]) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """``{index: (samples_seen, ci_lo, ci_hi)}`` from the summary ``ci`` (NaN where absent);
    indices that never have an interval are left out (records older than the intervals)."""
    out: dict[str, tuple[list[float], list[float], list[float]]] = {}
    for rec in records:
        for name, entry in summary_of(rec["result"]).items():
            xs, lo, hi = out.setdefault(name, ([], [], []))
            a, b = _ci(entry) if entry.get("value") is not None else (math.nan, math.nan)
            xs.append(float(rec["samples_seen"]))
            lo.append(a)
            hi.append(b)
    return {k: v for k, v in out.items() if not all(math.isnan(x) for x in v[1])}


def variant_series(records: Sequence[Mapping]) -> dict[str, dict]:
    """The headline index of the result and of each of its ``variants``, one curve per variant.

    ``{label: {"xs", "ys", "lo", "hi", "kind"}}``: label ``<template> (held-out)``,
    ``<template> (in-distribution)``, ``<template>`` (unknown) or ``split encoding``; ``kind`` is
    the result's ``template_split`` (``"held_out"``/``"in_distribution"``/None) or ``"split"``.
    ``{}`` when the results have no variants.
    """
    out: dict[str, dict] = {}
    if not any(isinstance(r["result"].get("variants"), Mapping) for r in records):
        return out
    for rec in records:
        res = rec["result"]
        summary = summary_of(res)
        if not summary:
            continue
        index = next((k for k in summary if base_index(k) == k), next(iter(summary)))
        members = {res.get("template") or res.get("text_encoding") or "headline": res}
        variants = res.get("variants")
        if isinstance(variants, Mapping):
            members.update({k: v for k, v in variants.items() if isinstance(v, Mapping)})
        for name, var in members.items():
            entry = summary_of(var).get(index)
            if entry is None:
                continue
            kind = "split" if name == "split" else var.get("template_split")
            label = {"split": "split encoding", "held_out": f"{name} (held-out)",
                     "in_distribution": f"{name} (in-distribution)"}.get(kind, name)
            cur = out.setdefault(label, {"xs": [], "ys": [], "lo": [], "hi": [], "kind": kind, "index": index})
            value = entry.get("value")
            lo, hi = _ci(entry) if value is not None else (math.nan, math.nan)
            cur["xs"].append(float(rec["samples_seen"]))
            cur["ys"].append(math.nan if value is None else float(value))
            cur["lo"].append(lo)
            cur["hi"].append(hi)
    return out


def _na_texts(records: Sequence[Mapping]) -> str | None:
    """``n/a (N = k)`` for a run whose conditional view is n/a at every evaluation (k at the last
    one), ``n/a at m of M evaluations (N = k)`` if at some; None if it is always available or the
    probe has no conditional view."""
    missing = [r for r in records if not conditional_available(r["result"])]
    if not missing:
        return None
    k = conditional_count(missing[-1]["result"])
    if len(missing) == len(records):
        return f"n/a (N = {k})"
    return f"n/a at {len(missing)} of {len(records)} evaluations (N = {k})"


def _ylabel(probe: str, group: str, records: Sequence[Mapping]) -> str:
    if group in (INDEX_GROUP, VARIANT_GROUP):
        names = [base_index(k) for r in records for k in summary_of(r["result"])]
        meaning = INDEX_MEANING.get(names[0], names[0]) if names else "index"
        return meaning + ("\n(by template / encoding)" if group == VARIANT_GROUP else "")
    last = group.rsplit("/", 1)[-1]
    if probe == "itm" and group == probe:
        return "accuracy: sim(image, correct)\n> sim(image, wrong)"
    return GROUP_MEANING.get(last, f"share ({group})")


def samples_label(x: float, _pos=None) -> str:
    """Tick label for a samples-seen axis: ``40k``, ``1.5M`` (plain digits collide past 100k)."""
    for scale, unit in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.4g}{unit}"
    return f"{x:.0f}"


def _draw(ax, xs, ys, colour, style, marker, lw=1.5, label=None) -> None:
    """A curve (``label``: its Line2D label, ``<label> [<run>]`` with several runs), its hollow
    initial point and a dotted level line at the initial value."""
    ax.plot(xs, ys, style, color=colour, lw=lw, marker=marker if marker != "o" else None, ms=4, label=label)
    ax.plot(xs[:1], ys[:1], marker, color=colour, ms=6, mfc="white", ls="")
    if ys and not math.isnan(ys[0]):
        ax.axhline(ys[0], color=colour, ls=":", lw=0.8, alpha=0.5)


def _band(ax, xs, lo, hi, colour) -> None:
    if not all(math.isnan(v) for v in lo):
        ax.fill_between(xs, lo, hi, color=colour, alpha=0.15, lw=0)


def plot_probe(runs: Mapping[str, Sequence[Mapping]], probe: str, out_path: Path | None = None):
    """The figure of ``probe`` for ``runs`` (label -> its records).

    Written to ``out_path`` atomically (returns the path) or, with ``out_path=None``, returned
    open as a matplotlib ``Figure`` (for tests and notebooks; close it with ``plt.close``).
    """
    per_run_n = {name: {n: recs for p, n, recs in by_probe(records) if p == probe} for name, records in runs.items()}
    ns = sorted({n for d in per_run_n.values() for n in d})
    if not ns:
        raise ValueError(f"no records of probe {probe!r} in runs {list(runs)}")
    data = {(name, n): series(recs) for name, d in per_run_n.items() for n, recs in d.items()}
    bands = {(name, n): index_bands(recs) for name, d in per_run_n.items() for n, recs in d.items()}
    variants = {(name, n): variant_series(recs) for name, d in per_run_n.items() for n, recs in d.items()}
    groups = _ordered({g for s in data.values() for g in s})
    if any(variants.values()):
        groups.append(VARIANT_GROUP)
    fig, axes = plt.subplots(len(groups), len(ns), figsize=(4.4 * len(ns), 3.0 * len(groups)),
                             squeeze=False, sharex="col")
    many = len(runs) > 1
    labels_seen: dict[str, str] = {}

    def colour(label: str) -> str:
        return labels_seen.setdefault(label, f"C{len(labels_seen) % 10}")

    for col, n in enumerate(ns):
        for row, group in enumerate(groups):
            ax = axes[row][col]
            notes = []
            for r, name in enumerate(runs):
                recs = per_run_n[name].get(n, [])
                marker = _MARKERS[r % len(_MARKERS)] if many else "o"
                if group == VARIANT_GROUP:
                    for label, v in variants.get((name, n), {}).items():
                        if all(math.isnan(y) for y in v["ys"]):
                            continue
                        c = colour(label)
                        _band(ax, v["xs"], v["lo"], v["hi"], c)
                        _draw(ax, v["xs"], v["ys"], c, _VARIANT_STYLE.get(v["kind"], "-"), marker,
                              label=label + (f" [{name}]" if many else ""))
                    continue
                for label, (xs, ys) in data.get((name, n), {}).get(group, {}).items():
                    if all(math.isnan(y) for y in ys):
                        continue  # n/a at every evaluation: no curve (the panel says so below)
                    c = colour(label)
                    if group == INDEX_GROUP and label in bands.get((name, n), {}):
                        _, lo, hi = bands[(name, n)][label]
                        _band(ax, xs, lo, hi, c)
                    _draw(ax, xs, ys, c, "-", marker, label=label + (f" [{name}]" if many else ""))
                conditional_here = is_conditional(group) or (
                    group == INDEX_GROUP and any(is_conditional(k) for k in data.get((name, n), {}).get(group, {})))
                if conditional_here and (text := _na_texts(recs)):
                    notes.append((f"{name}: " if many else "") + ("conditional " if group == INDEX_GROUP else "") + text)
            if notes:
                ax.text(0.5, 0.5 if is_conditional(group) else 0.06, "\n".join(notes), transform=ax.transAxes,
                        ha="center", va="center" if is_conditional(group) else "bottom", fontsize=8, color="0.3")
            where = f"{probe.upper()} n={n}" if n is not None else probe.upper()
            title = f"{where} · {group}"
            if group == VARIANT_GROUP:
                title = f"{where} · " + ("index by template" if probe == "tor" else "index by encoding")
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3)
            if group not in (INDEX_GROUP, VARIANT_GROUP):
                ax.set_ylim(-0.02, 1.02)
            if col == 0:
                all_recs = [rec for d in per_run_n.values() for recs in d.values() for rec in recs]
                ax.set_ylabel(_ylabel(probe, group, all_recs), fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
            ax.xaxis.set_major_formatter(FuncFormatter(samples_label))
            if row == len(groups) - 1:
                ax.set_xlabel("samples seen")
    handles = [Line2D([], [], color=c, lw=2, label=lab) for lab, c in labels_seen.items()]
    kinds = {v["kind"] for per in variants.values() for v in per.values()}
    if kinds & {"held_out", "in_distribution"}:
        handles += [Line2D([], [], color="k", ls="--", label="held-out template"),
                    Line2D([], [], color="k", ls="-", label="in-distribution template")]
    if many:
        handles += [Line2D([], [], color="k", marker=_MARKERS[r % len(_MARKERS)], label=name)
                    for r, name in enumerate(runs)]
    handles.append(Line2D([], [], color="k", marker="o", mfc="white", ls="", label="at init"))
    handles.append(Patch(color="k", alpha=0.15, label="95 % interval"))
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.suptitle(f"{probe.upper()} · {'runs' if many else 'run'}: {', '.join(runs)}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))  # room for the title
    if out_path is None:
        return fig
    out_path = Path(out_path)
    with atomic_write(out_path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out_path


def plot_runs(runs: Mapping[str, Sequence[Mapping]], out_dir: Path) -> list[Path]:
    """One ``<probe>.png`` per probe present in any run."""
    probes = sorted({r["probe"] for records in runs.values() for r in records})
    return [plot_probe(runs, p, Path(out_dir) / f"{p}.png") for p in probes]


def plot_run(run_dir: Path, out_dir: Path) -> list[Path]:
    """Curves of one run directory (its ``bias.jsonl``) into ``out_dir``."""
    return plot_runs({Path(run_dir).name: read_records(run_dir)}, out_dir)


def _ordered(groups: set[str]) -> list[str]:
    first = ["conditional", "unconditional", "own_objects", "accuracy"]
    rest = sorted(g for g in groups if g not in first and g != INDEX_GROUP)
    return [g for g in first if g in groups] + rest + ([INDEX_GROUP] if INDEX_GROUP in groups else [])
