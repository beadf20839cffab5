"""``python -m eval report RUN_DIR [RUN_DIR ...] [--out DIR]``: bias curves and a summary table.

Reads each run's ``bias.jsonl`` (written by ``BiasEvalCallback``), writes one ``<probe>.png`` per
probe with the runs overlaid (labels = run folder names), and ``summary.md``: per run, probe and
n, every summary index (order bias on TOR, size bias on IOR/I2TOR, the ITM gap, the Claim-1 gap)
at initialisation and at the last evaluation, with the denominators behind each; then, at the last
evaluation, the three views of each retrieval probe side by side (:func:`views_table`: the paper's
conditional shares, the unconditional and the own-object ones, each with its N and intervals).

The indices are read from each result's ``summary`` (``eval.probes``); :func:`init_final_rows`
is the one init → final table. ``--across-seeds`` pivots it per configuration and seed instead
(:mod:`eval.seed_report`: means and intervals across seeds, paired against a baseline).
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from data_prep.fileio import OutDirError, check_writable, write_text_atomic
from eval.records import bias_path, by_probe, describe_bad_lines, scan_records, summary_of

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.md"


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Folder names, widened with parent folders until they are unique."""
    parts = [Path(d).resolve().parts for d in run_dirs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    raise ValueError(f"the same run directory is given twice: {[str(d) for d in run_dirs]}")


def index_entries(result: Mapping, variants: bool = False) -> dict[str, dict]:
    """``{index: {"value", "denominator", "ci"}}`` of one probe result, from its ``summary``.

    With ``variants``, the summaries of ``result["variants"]`` (TOR's other templates, the "split"
    encoding) follow as ``<variant>/<index>``, each entry with the variant's ``template_split``
    (``"held_out"``/``"in_distribution"``, None if unknown) added.
    """
    out = summary_of(result)
    if variants and isinstance(result.get("variants"), Mapping):
        for name, var in result["variants"].items():
            if isinstance(var, Mapping):
                out.update({f"{name}/{k}": {**e, "template_split": var.get("template_split")}
                            for k, e in summary_of(var).items()})
    return out


def init_final_rows(runs: Mapping[str, Sequence[Mapping]], variants: bool = False) -> list[dict]:
    """The init → final table: one row per (run, probe, n, summary index).

    Each row: ``run``, ``probe``, ``n``, ``index``, ``init`` and ``final`` (values, None if
    undefined or absent at the end), ``init_ci`` and ``final_ci`` (95 % intervals, None where
    undefined or not recorded), ``init_samples``, ``final_samples``, ``init_step``, ``final_step``, ``init_denominator``,
    ``final_denominator`` (``"-"`` if absent), ``template_split`` (the result's or variant's
    ``"held_out"``/``"in_distribution"``, None if unknown or not a template). Init = first evaluation, final = last one (by
    ``samples_seen``); the indices are those of the first evaluation. ``variants`` as in
    :func:`index_entries`.
    """
    rows = []
    for name, records in runs.items():
        for probe, n, recs in by_probe(records):
            first, last = recs[0], recs[-1]
            final = index_entries(last["result"], variants)
            for key, e0 in index_entries(first["result"], variants).items():
                e1 = final.get(key, {"value": None, "denominator": "-"})
                split = e0["template_split"] if "template_split" in e0 else first["result"].get("template_split")
                rows.append({"run": name, "probe": probe, "n": n, "index": key,
                             "init": e0.get("value"), "final": e1.get("value"),
                             "init_ci": e0.get("ci"), "final_ci": e1.get("ci"), "template_split": split,
                             "init_samples": first["samples_seen"], "final_samples": last["samples_seen"],
                             "init_step": first["step"], "final_step": last["step"],
                             "init_denominator": e0.get("denominator"), "final_denominator": e1.get("denominator")})
    return rows


def _fmt(x: float | None, signed: bool = False) -> str:
    return "n/a" if x is None else (f"{x:+.3f}" if signed else f"{x:.3f}")


def _fmt_ci(ci: Sequence[float] | None) -> str:
    return "-" if not ci else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


_SPLIT_NOTE = {"held_out": " (held-out template)", "in_distribution": " (in-distribution template)"}


def summary_table(runs: Mapping[str, Sequence[Mapping]]) -> str:
    """Markdown table: init vs final value of every summary index (TOR template variants too,
    marked held-out / in-distribution), with denominators and 95 % intervals."""
    lines = [
        "| run | probe | n | index | init (samples) | final (samples) | change | denominators init → final "
        "| 95 % CI init → final |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in init_final_rows(runs, variants=True):
        v0, v1 = r["init"], r["final"]
        change = None if v0 is None or v1 is None else v1 - v0
        index = r["index"] + (_SPLIT_NOTE.get(r["template_split"], "") if r["probe"] == "tor" else "")
        lines.append(
            f"| {r['run']} | {r['probe']} | {'-' if r['n'] is None else r['n']} | {index} | {_fmt(v0, True)} ({r['init_samples']}) "
            f"| {_fmt(v1, True)} ({r['final_samples']}) | {_fmt(change, True)} "
            f"| {r['init_denominator']} → {r['final_denominator']} "
            f"| {_fmt_ci(r['init_ci'])} → {_fmt_ci(r['final_ci'])} |"
        )
    if len(lines) == 2:
        lines.append("| (no summary indices: run tor, ior, i2tor, itm or claim1) | | | | | | | | |")
    return "\n".join(lines) + "\n"


#: (view label, shares key in a retrieval result, summary index suffix)
VIEWS = (("conditional", "conditional", "_conditional"), ("unconditional", "unconditional", ""),
         ("own objects", "own_objects", "_own"))


def _shares(shares: Mapping, labels: Sequence[str]) -> str:
    parts = []
    for lab in [*labels, "none"]:
        e = shares.get(lab)
        if isinstance(e, Mapping) and e.get("share") is not None:
            ci = e.get("ci")
            parts.append(f"{lab} {e['share']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""))
    return " · ".join(parts)


def view_rows(result: Mapping) -> list[dict]:
    """The three views of one retrieval result (TOR, IOR, I2TOR) side by side: per view its
    denominator, the top-1 shares by position/role with 95 % intervals, and the summary index's
    value and interval.

    A conditional view below the minimum N has no shares and no index (``None``): it is reported
    as ``n/a (N = k)``, never as numbers built on a handful of items."""
    labels = result.get("labels")
    if not labels or "conditional" not in result:
        return []
    summary = summary_of(result)
    index = next((k for k in summary if k.endswith("_bias")), None)
    n_items, n_cond = result.get("n_items"), result.get("n_conditional")
    rows = []
    for view, key, suffix in VIEWS:
        entry = summary.get(f"{index}{suffix}", {}) if index else {}
        defined = entry.get("value") is not None
        n = f"{n_cond}/{n_items} ({100 * n_cond / n_items:.0f} %)" if key == "conditional" else f"{n_items}"
        rows.append({"view": view, "n": n, "value": entry.get("value"), "ci": entry.get("ci"),
                     "shares": _shares(result.get(key) or {}, labels) if defined else f"n/a (N = {n_cond})"})
    return rows


def views_table(runs: Mapping[str, Sequence[Mapping]]) -> str:
    """Markdown table of the last evaluation: the paper's conditional view next to the
    unconditional and own-object views, for every retrieval probe, n and TOR template."""
    lines = ["| run | probe | n | template | view | N | top-1 shares [95 % CI] | order / size bias [95 % CI] |",
             "|---|---|---|---|---|---|---|---|"]
    for name, records in runs.items():
        for probe, n, recs in by_probe(records):
            last = recs[-1]
            results = [last["result"]] + [v for v in (last["result"].get("variants") or {}).values()
                                          if isinstance(v, Mapping)]
            for res in results:
                template = res.get("template") or "-"
                template += _SPLIT_NOTE.get(res.get("template_split"), "")
                for r in view_rows(res):
                    value = "n/a" if r["value"] is None else f"{r['value']:+.3f} {_fmt_ci(r['ci'])}"
                    lines.append(f"| {name} (step {last['step']}) | {probe} | {n} | {template} | {r['view']} "
                                 f"| {r['n']} | {r['shares']} | {value} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path) -> list[Path]:
    """Figures and ``summary.md`` for ``run_dirs`` into ``out_dir``; returns the written paths."""
    from eval.plots import plot_runs

    run_dirs = [Path(d) for d in run_dirs]
    runs, skipped = {}, []
    for label, d in zip(run_labels(run_dirs), run_dirs):
        runs[label], bad = scan_records(d)
        if bad:  # a torn or foreign line costs that line, not the report
            skipped.append(describe_bad_lines(bias_path(d), bad))
            log.warning("%s", skipped[-1])
    empty = [bias_path(d) for (label, recs), d in zip(runs.items(), run_dirs) if not recs]
    if empty:
        shown = ", ".join(f"{p} ({p.stat().st_size} bytes)" if p.is_file() else str(p) for p in empty)
        raise ValueError(f"no evaluation records in {shown}" + (f" ({'; '.join(skipped)})" if skipped else "")
                         + ": the run wrote no bias evaluation yet (BiasEvalCallback writes one at step 0 and "
                           "every eval_every_n_steps); report it once it has")
    out_dir = Path(out_dir)
    figures = plot_runs(runs, out_dir)
    table = summary_table(runs)
    text = (f"# Bias report\n\nRuns: {', '.join(f'`{d}`' for d in run_dirs)}\n\n"
            "Indices on unconditional shares unless marked `_conditional` (top-n = own objects, n/a below "
            "the minimum N) or `_own` (which of the item's own objects ranks highest); init = first "
            "evaluation (step 0), final = last one; 95 % intervals as in `eval.stats`.\n\n" + table + "\n"
            + (("## The three views at the last evaluation\n\nConditional = the paper's number: among items "
                "whose top-n retrieved objects are exactly their own n (N = how many); unconditional = top-1 "
                "over the whole gallery (\"none\": not one of the item's objects); own objects = which of the "
                "item's own objects ranks highest.\n\n" + views + "\n") if (views := views_table(runs)) else "")
            + "".join(f"![{p.stem}]({p.name})\n" for p in figures)
            + ("\n## Skipped lines\n\n" + "".join(f"- {line}\n" for line in skipped) if skipped else ""))
    summary = write_text_atomic(out_dir / SUMMARY_FILE, text)
    return [*figures, summary]


def default_out(run_dirs: Sequence[Path]) -> Path:
    """``RUN_DIR/report`` for one run, ``reports/<a>_vs_<b>...`` for several."""
    if len(run_dirs) == 1:
        return Path(run_dirs[0]) / "report"
    return Path("reports") / "_vs_".join(Path(d).name for d in run_dirs)


def run_report(args: argparse.Namespace) -> int:
    """Entry point of the ``report`` subcommand."""
    missing = [str(d) for d in args.run_dirs if not (Path(d) / "bias.jsonl").is_file()]
    if missing and not args.across_seeds:  # across seeds, a failed run of a sweep is left out with a line
        raise SystemExit(f"error: no bias.jsonl in {', '.join(missing)} (train with BiasEvalCallback "
                         "enabled, or pass the runs/<name> folder)")
    out = args.out or (Path("reports") / "across_seeds" if args.across_seeds else default_out(args.run_dirs))
    if args.results_block and not args.across_seeds:
        raise SystemExit("error: --results-block needs --across-seeds (it holds the tables across seeds)")
    try:  # before reading and plotting: fail on the output, not after the work
        check_writable(out, "--out" if args.out else "--out (default)", is_dir=True)
        if args.results_block:
            check_writable(args.results_block, "--results-block")
    except OutDirError as e:
        raise SystemExit(f"error: {e}") from None
    if args.across_seeds:
        from eval.seed_report import write_seed_report
        try:
            text, paths = write_seed_report(args.run_dirs, out, args.n_objects, args.results_block, args.command)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
        print(text)
        print(f"wrote {', '.join(str(p) for p in paths)}")
        return 0
    paths = write_report(args.run_dirs, out)
    print((Path(out) / SUMMARY_FILE).read_text(encoding="utf-8"))
    print(f"wrote {len(paths)} files to {out}")
    return 0


def add_subparser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``report`` on ``python -m eval``."""
    p = subparsers.add_parser(
        "report", help="bias curves and summary table of training runs",
        description="Plot bias.jsonl of one or more runs (overlaid) and write a markdown summary.")
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="runs/<name> folders with bias.jsonl")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: RUN_DIR/report for one run, reports/<a>_vs_<b> for several, "
                        "reports/across_seeds with --across-seeds)")
    seeds = p.add_argument_group("across seeds (runs named exp-<config>-s<seed>)")
    seeds.add_argument("--across-seeds", action="store_true",
                       help="group the runs by config: init -> final change per bias index, mean and 95 %% "
                            "t-interval over seeds, paired against the 'baseline' config; writes summary.md "
                            "and across_seeds.png")
    seeds.add_argument("--n-objects", type=int, default=3, help="objects per probe item to summarise (default 3)")
    seeds.add_argument("--results-block", type=Path, default=None, metavar="MARKDOWN",
                       help="put the tables between <!-- results:begin --> and <!-- results:end --> of this "
                            "file instead of summary.md (docs/results.md is written this way)")
    seeds.add_argument("--command", default="python -m eval report --across-seeds ...",
                       help="the command quoted in the tables as the way to reproduce them")
    p.set_defaults(func=run_report)
    return p
