"""Statistics across training seeds for ``python -m eval report --across-seeds``.

Runs named ``exp-<config>-s<seed>`` (``exp-baseline-s0``, as ``experiments/bias_mitigation.sh``
names them) are grouped by configuration: the init -> final change of each bias index per
configuration (mean and 95 % Student-t interval over seeds), the paired comparison with the
``baseline`` configuration over common seeds, and per-seed rows. Values come from each result's
``summary`` via :func:`eval.report.init_final_rows` (the one init -> final table); the statistics
are :mod:`eval.seed_stats`'s. The tables go to ``summary.md`` or, with a results block, into a
markdown file between :data:`BEGIN` and :data:`END`, so a doc's numbers come from this one command.
"""
from __future__ import annotations

import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

from data_prep.fileio import atomic_write, write_text_atomic
from eval.records import read_records
from eval.report import init_final_rows
from eval.seed_stats import SeedMean, paired_difference, seed_mean

FIGURE_FILE = "across_seeds.png"

#: (label, probe, summary index; "<variant>/<index>" for a TOR template variant)
INDICES = (
    ("TOR order, and-chain (held-out)", "tor", "order_bias"),
    ("TOR order, photo (in-dist.)", "tor", "photo/order_bias"),
    ("TOR order, there-is (held-out)", "tor", "there_is/order_bias"),
    ("IOR size", "ior", "size_bias"),
    ("IOR size, own objects", "ior", "size_bias_own"),
    ("I2TOR size", "i2tor", "size_bias"),
    ("ITM gap S1-S2", "itm", "gap"),
)
#: indices shown only where a run has them (the relational corpus's compositional probes; records
#: of the probes beyond the paper's carry ``n_objects: null``)
OPTIONAL_INDICES = (
    ("swap_obj acc.", "compositional", "swap_obj"),
    ("replace_rel acc.", "compositional", "replace_rel"),
    ("swap_att acc.", "compositional", "swap_att"),
    ("replace_axis acc. (control)", "compositional", "replace_axis"),
    ("word order P@1", "word_order", "precision_at_1"),
)
RETRIEVAL = ("val i2t R@1", "val/i2t_R@1")
TRADEOFF_FILE = "tradeoff.png"
TRADEOFF_AXES = ("TOR order, photo (in-dist.)", ("swap_obj acc.", "swap_att acc."))
BASELINE = "baseline"
RUN_NAME = re.compile(r"exp-(?P<config>.+)-s(?P<seed>\d+)$")
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def final_metric(metrics_csv: Path, column: str) -> float | None:
    """Last non-empty value of ``column`` in a Lightning ``metrics.csv`` (None if never logged)."""
    if not metrics_csv.is_file():
        return None
    last = None
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row.get(column) not in (None, ""):
                last = float(row[column])
    return last


def collect(run_dirs: list[Path], n_objects: int = 3) -> dict[str, dict[int, dict[str, tuple]]]:
    """config -> seed -> label -> (init, final, final denominator); plus the R@1 label -> (None, R@1, "").

    Only whole runs count: a run without an evaluation at step 0, or whose last evaluation is short
    of the longest run's (interrupted, still running), is left out with a line on stderr, so an
    unfinished run never enters a mean as a change of 0.
    """
    table: dict[str, dict[int, dict[str, tuple]]] = defaultdict(dict)
    found = []
    for run in run_dirs:
        m = RUN_NAME.match(run.name)
        if not m or not (run / "bias.jsonl").is_file():
            why = "no bias.jsonl" if m else "not named exp-<config>-s<seed>"
            print(f"eval report --across-seeds: left out {run}: {why}", file=sys.stderr)
            continue
        records = [r for r in read_records(run / "bias.jsonl") if r["n_objects"] in (n_objects, None)]
        if records:
            found.append((run, m, records))
    end = max((max(r["samples_seen"] for r in recs) for _, _, recs in found), default=0)
    for run, m, records in found:
        first, last = min(r["samples_seen"] for r in records), max(r["samples_seen"] for r in records)
        if first != 0 or last < end:
            print(f"eval report --across-seeds: left out {run}: evaluations from {first:,} to {last:,} samples, not 0 to {end:,} "
                  "(unfinished or without its step-0 evaluation)", file=sys.stderr)
            continue
        rows = {(r["probe"], r["index"]): r for r in init_final_rows({run.name: records}, variants=True)}
        row: dict = {"samples": max((r["samples_seen"] for r in records), default=0)}
        for label, probe, index in INDICES + OPTIONAL_INDICES:
            if (r := rows.get((probe, index))) is not None:
                row[label] = (r["init"], r["final"], r["final_denominator"])
        row[RETRIEVAL[0]] = (None, final_metric(run / "metrics.csv", RETRIEVAL[1]), "")
        table[m["config"]][int(m["seed"])] = row
    return dict(table)


def labels_of(table: dict) -> list[str]:
    """The paper's indices, then each optional one that some run has."""
    have = {lab for runs in table.values() for row in runs.values() for lab in row}
    return [lab for lab, _, _ in INDICES] + [lab for lab, _, _ in OPTIONAL_INDICES if lab in have]


def _values(runs: dict[int, dict], label: str, what: str) -> dict[int, float | None]:
    """seed -> init, final or change (final − init) of ``label``."""
    out = {}
    for seed, row in runs.items():
        if label not in row:
            continue
        init, final, _ = row[label]
        out[seed] = {"init": init, "final": final,
                     "change": None if init is None or final is None else final - init}[what]
    return out


def statistics(table: dict) -> dict:
    """config -> label -> {"init", "final", "change", "vs_baseline"}: :class:`SeedMean` each.

    ``vs_baseline`` is the paired difference of the changes (of the final value for R@1, which has
    no init) against the ``baseline`` configuration over their common seeds; None for the baseline
    itself or when there is no baseline.
    """
    labels = labels_of(table) + [RETRIEVAL[0]]
    out: dict = {}
    for config, runs in table.items():
        out[config] = {}
        for label in labels:
            key = "final" if label == RETRIEVAL[0] else "change"
            stats = {what: seed_mean(list(_values(runs, label, what).values())) for what in ("init", "final", "change")}
            stats["vs_baseline"] = (paired_difference(_values(runs, label, key), _values(table[BASELINE], label, key))
                                    if config != BASELINE and BASELINE in table else None)
            out[config][label] = stats
    return out


def _cell(s: SeedMean | None, flag: bool = False) -> str:
    if s is None:
        return "–"
    return s.text() + (" **✱**" if flag and s.beyond_noise else "")


def markdown(table: dict, command: str) -> str:
    """The results block (docs/results.md): change per configuration, the paired comparison, the init baseline, per seed."""
    stats = statistics(table)
    labels = labels_of(table)
    configs = sorted(table, key=lambda c: (c != BASELINE, c))
    seeds = sorted({s for runs in table.values() for s in runs})
    samples = sorted({row["samples"] for runs in table.values() for row in runs.values()})
    lines = [f"Reproduce: `{command}` — {len(configs)} configurations × seeds {', '.join(map(str, seeds))}; "
             f"3-object probes; end of training at {', '.join(f'{s:,}' for s in samples)} samples. "
             "Intervals are 95 % Student-t intervals across seeds (with 3 seeds: mean ± 4.30·sd/√3).",
             "", "**Change from step 0 to the end of training** (mean [95 % interval] across seeds; "
             "val R@1 = final value):", "",
             "| config | seeds | " + " | ".join(labels) + f" | {RETRIEVAL[0]} |",
             "|---|---|" + "---|" * (len(labels) + 1)]
    for c in configs:
        cells = [_cell(stats[c][lab]["change"]) for lab in labels]
        cells.append(stats[c][RETRIEVAL[0]]["final"].text(signed=False))
        lines.append(f"| {c} | {len(table[c])} | " + " | ".join(cells) + " |")
    if BASELINE in table:
        lines += ["", "**Paired against the baseline** (same seeds: change of config − change of baseline; "
                  "val R@1: final − final). **✱** = the 95 % interval excludes 0 (beyond seed noise); "
                  "without ✱ the difference is within seed noise:", "",
                  "| config | " + " | ".join(labels) + f" | {RETRIEVAL[0]} |",
                  "|---|" + "---|" * (len(labels) + 1)]
        for c in configs:
            if c == BASELINE:
                continue
            cells = [_cell(stats[c][lab]["vs_baseline"], flag=True) for lab in labels + [RETRIEVAL[0]]]
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        base = stats[BASELINE]
        lines += ["", "**Baseline, step 0 and end** (mean [95 % interval] across seeds; step 0 is the same "
                  "random model for every configuration of a seed):", "",
                  "| | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels),
                  "| step 0 | " + " | ".join(_cell(base[lab]["init"]) for lab in labels) + " |",
                  "| end | " + " | ".join(_cell(base[lab]["final"]) for lab in labels) + " |"]
    lines += ["", "<details><summary>Per seed: init → final (final denominator)</summary>", "",
              "| config | seed | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for c in configs:
        for seed, row in sorted(table[c].items()):
            cells = [f"{_fmt(row[lab][0])} → {_fmt(row[lab][1])} ({row[lab][2]})" if lab in row else "–"
                     for lab in labels]
            lines.append(f"| {c} | {seed} | " + " | ".join(cells) + " |")
    lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def figure(table: dict, out_png: Path) -> None:
    """One panel per index: grey dots = each seed's change, black = mean with its 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = statistics(table)
    configs = sorted(table, key=lambda c: (c != BASELINE, c))
    labels = labels_of(table)
    fig, axes = plt.subplots(1, len(labels), figsize=(3.0 * len(labels), 3.8))
    for ax, label in zip(axes, labels):
        for x, config in enumerate(configs):
            changes = [v for v in _values(table[config], label, "change").values() if v is not None]
            ax.plot([x] * len(changes), changes, "o", color="grey", alpha=0.6, ms=4)
            s = stats[config][label]["change"]
            if s.mean is not None:
                err = None if s.lo is None else [[s.mean - s.lo], [s.hi - s.mean]]
                ax.errorbar(x + 0.15, s.mean, yerr=err, fmt="s", color="C3" if x else "black", capsize=3, ms=5)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xticks(range(len(configs)), configs, rotation=60, ha="right", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.set_ylabel("change from step 0", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("3-object probes, change from step 0 to end of training: dots = seeds, squares = mean ± 95 % "
                 "t-interval across seeds", fontsize=9)
    fig.tight_layout()
    with atomic_write(out_png, "wb") as fh:
        fig.savefig(fh, dpi=90, format="png")
    plt.close(fig)


def tradeoff_figure(table: dict, out_png: Path, axes: tuple = TRADEOFF_AXES) -> bool:
    """One panel per compositional accuracy, one point per run: the order bias's change from step 0
    (x) against the final accuracy (y), a colour per configuration, config means as squares. False
    (nothing written) when no run has the order bias and any of the accuracies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xlab, ylabs = axes
    configs = sorted(table, key=lambda c: (c != BASELINE, c))

    def points(c: str, ylab: str) -> list[tuple[float, float]]:
        return [(row[xlab][1] - row[xlab][0], row[ylab][1]) for row in table[c].values()
                if xlab in row and ylab in row and None not in (row[xlab][0], row[xlab][1], row[ylab][1])]

    ylabs = [y for y in ylabs if any(points(c, y) for c in configs)]
    if not ylabs:
        return False
    fig, axs = plt.subplots(1, len(ylabs), figsize=(4.6 * len(ylabs), 4.0), squeeze=False)
    for ax, ylab in zip(axs[0], ylabs):
        for k, c in enumerate(configs):
            if pts := points(c, ylab):
                xs, ys = zip(*pts)
                ax.plot(xs, ys, "o", color=f"C{k}", alpha=0.7, ms=5, label=c)
                ax.plot(sum(xs) / len(xs), sum(ys) / len(ys), "s", color=f"C{k}", ms=9, mec="black")
        ax.axhline(0.5, color="grey", lw=0.8, ls="--", label="chance")
        ax.axvline(0, color="black", lw=0.5)
        ax.set_xlabel(f"{xlab}: change from step 0", fontsize=8)
        ax.set_ylabel(f"{ylab} at the end", fontsize=8)
        ax.grid(alpha=0.3)
    axs[0][-1].legend(fontsize=7)
    fig.suptitle("order bias vs compositional accuracy: dots = runs, squares = config means", fontsize=9)
    fig.tight_layout()
    with atomic_write(out_png, "wb") as fh:
        fig.savefig(fh, dpi=90, format="png")
    plt.close(fig)
    return True


def replace_block(path: Path, block: str) -> None:
    """Replace the text between :data:`BEGIN` and :data:`END` in ``path`` (atomic write)."""
    text = path.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path} has no {BEGIN} ... {END} block to replace")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    write_text_atomic(path, f"{head}{BEGIN}\n{block}{END}{tail}")


def write_seed_report(run_dirs: list[Path], out_dir: Path, n_objects: int = 3, results_block: Path | None = None,
                      command: str = "python -m eval report --across-seeds ...") -> tuple[str, list[Path]]:
    """Tables and figure across seeds: ``(markdown, files written)``.

    The figure goes to ``out_dir/across_seeds.png``; the tables to ``out_dir/summary.md``, or, with
    ``results_block``, into that file's results block instead (the numbers then live there only).
    """
    if results_block is not None:  # before any work: the block must be there to be replaced
        text = Path(results_block).read_text(encoding="utf-8") if Path(results_block).is_file() else ""
        if BEGIN not in text or END not in text:
            raise ValueError(f"{results_block} has no {BEGIN} ... {END} block to replace")
    table = collect(run_dirs, n_objects)
    if not table:
        raise ValueError("no run directory named exp-<config>-s<seed> with a bias.jsonl among the runs "
                         f"({', '.join(str(d) for d in run_dirs)})")
    text = markdown(table, command)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figure(table, out_dir / FIGURE_FILE)
    figures = [out_dir / FIGURE_FILE]
    if tradeoff_figure(table, out_dir / TRADEOFF_FILE):
        figures.append(out_dir / TRADEOFF_FILE)
    if results_block is not None:
        replace_block(results_block, text)
        return text, [*figures, Path(results_block)]
    write_text_atomic(out_dir / "summary.md", text)
    return text, [*figures, out_dir / "summary.md"]
