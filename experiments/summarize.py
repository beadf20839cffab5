"""Summarise the mitigation sweep: init vs final bias indices per configuration and seed.

    python experiments/summarize.py runs/exp-*-s* --out docs/figures/bias_mitigation

Reads ``bias.jsonl`` of runs named ``exp-<config>-s<seed>`` (as written by
``experiments/bias_mitigation.sh``) and writes ``<out>.md`` (a markdown table) and ``<out>.png``
(one panel per index: hollow = step 0, filled = end of training, one marker per seed).

A thin caller of ``python -m eval report``'s table (``eval.report.init_final_rows``): the same
init → final values and denominators, read from each result's ``summary``, pivoted to one row per
configuration and seed with the indices below as columns.
"""
from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

from eval.records import read_records
from eval.report import init_final_rows

# (label, probe, summary index; "<variant>/<index>" for a TOR variant) — the three indices
# plus the photo-template TOR
INDICES = (
    ("TOR order bias", "tor", "order_bias"),
    ("TOR order bias (photo template)", "tor", "photo/order_bias"),
    ("IOR size bias", "ior", "size_bias"),
    ("I2TOR size bias", "i2tor", "size_bias"),
    ("ITM gap S1-S2", "itm", "gap"),
)
RUN_NAME = re.compile(r"exp-(?P<config>.+)-s(?P<seed>\d+)$")


def collect(run_dirs: list[Path], n_objects: int = 3) -> dict[str, dict[int, dict[str, tuple]]]:
    """config -> seed -> index label -> (init, final, final denominator text)."""
    table: dict[str, dict[int, dict[str, tuple]]] = defaultdict(dict)
    for run in run_dirs:
        m = RUN_NAME.match(run.name)
        if not m or not (run / "bias.jsonl").is_file():
            continue
        records = [r for r in read_records(run / "bias.jsonl") if r["n_objects"] == n_objects]
        rows = {(r["probe"], r["index"]): r for r in init_final_rows({run.name: records}, variants=True)}
        row: dict = {"samples": max((r["samples_seen"] for r in records), default=0)}
        for label, probe, index in INDICES:
            if (r := rows.get((probe, index))) is not None:
                row[label] = (r["init"], r["final"], r["final_denominator"])
        table[m["config"]][int(m["seed"])] = row
    return table


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def markdown(table: dict) -> str:
    labels = [lab for lab, _, _ in INDICES]
    lines = ["| config | seed | samples seen | " + " | ".join(f"{lab}: init → final" for lab in labels) + " |",
             "|---|---|---|" + "---|" * len(labels)]
    for config in table:
        for seed, row in sorted(table[config].items()):
            cells = [f"{_fmt(row[lab][0])} → {_fmt(row[lab][1])} ({row[lab][2]})" if lab in row else "–"
                     for lab in labels]
            lines.append(f"| {config} | {seed} | {row['samples']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(table: dict, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(table)
    fig, axes = plt.subplots(1, len(INDICES), figsize=(3.2 * len(INDICES), 3.6), sharey=False)
    for ax, (label, _, _) in zip(axes, INDICES):
        for x, config in enumerate(configs):
            for k, (seed, row) in enumerate(sorted(table[config].items())):
                if label not in row:
                    continue
                init, final, _ = row[label]
                dx = x + (k - 0.5) * 0.2
                if init is not None:
                    ax.plot(dx, init, "o", mfc="none", mec="grey")
                if final is not None:
                    ax.plot(dx, final, "o", color="C0")
                if init is not None and final is not None:
                    ax.plot([dx, dx], [init, final], "-", color="lightgrey", zorder=0)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xticks(range(len(configs)), configs, rotation=60, ha="right", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle("3-object probes: hollow = step 0, filled = after 40k samples (one marker per seed)", fontsize=9)
    fig.tight_layout()
    tmp = out_png.with_name(out_png.name + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    tmp.replace(out_png)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories exp-<config>-s<seed>")
    p.add_argument("--out", type=Path, required=True, help="output prefix for .md and .png")
    p.add_argument("--n-objects", type=int, default=3)
    args = p.parse_args(argv)
    table = collect(args.runs, args.n_objects)
    if not table:
        p.error("no run directory named exp-<config>-s<seed> with a bias.jsonl among the arguments")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(table)
    args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    figure(table, args.out.with_suffix(".png"))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
