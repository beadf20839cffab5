"""What a run says while and after it trains, on rank 0: one line per bias evaluation, a summary at
the end (run directory, final loss and R@1, each bias index at step 0 -> final with its denominator
and 95 % interval, the commands to run next), and the W&B side of the same (full config, plots,
init -> final table, ``last`` summaries of the indices).

The bias numbers are read back from the run's ``bias.jsonl`` (:mod:`eval.records`), and the
init -> final rows are :func:`eval.report.init_final_rows`, the same table ``eval report`` writes.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L

from eval.records import BIAS_FILE, scan_records, summary_of
from eval.report import init_final_rows
from eval.samples_axis import wandb_loggers

#: headline metrics of the end-of-run summary: (metric, label, percent?)
FINAL_METRICS = (("train/loss", "train loss", False), ("val/loss", "val loss", False),
                 ("val/i2t_R@1", "val i2t R@1", True), ("val/t2i_R@1", "val t2i R@1", True))
PLOT_KEY = "bias_plots"
TABLE_KEY = "bias_init_final"


# ------------------------------------------------------------------ config for W&B


def flatten_config(cfg: Any, prefix: str = "", sep: str = "/") -> dict[str, Any]:
    """Nested config -> ``{"data/batch_size": 128, "trainer/callbacks/0/init_args/probes": [...]}``.

    Lists of ``class_path`` entries (``data.sample_transforms``, ``trainer.callbacks``) also get one
    key holding their class names joined by ``,`` (``"none"`` when empty), so runs can be grouped by
    the mitigation that ran; lists of plain values stay one value.
    """
    out: dict[str, Any] = {}
    if isinstance(cfg, Mapping):
        for key, value in cfg.items():
            if key == "__path__" or (key == "config" and not prefix):  # jsonargparse bookkeeping, the config files given
                continue
            out.update(flatten_config(value, f"{prefix}{sep}{key}" if prefix else str(key), sep))
    elif isinstance(cfg, (list, tuple)) and any(isinstance(v, (Mapping, list, tuple)) for v in cfg):
        names = [str(v.get("class_path", "")).rsplit(".", 1)[-1] for v in cfg if isinstance(v, Mapping)]
        if names and all(names):
            out[prefix] = ",".join(names)
        for i, value in enumerate(cfg):
            out.update(flatten_config(value, f"{prefix}{sep}{i}", sep))
    elif (cfg is None or isinstance(cfg, (list, tuple)) and not cfg) and prefix.endswith(
            ("sample_transforms", "aux_losses", "callbacks")):
        out[prefix] = "none"  # so W&B can group the runs without a mitigation / aux loss
    else:
        out[prefix] = list(cfg) if isinstance(cfg, tuple) else cfg if cfg is None or isinstance(
            cfg, (bool, int, float, str, list)) else str(cfg)
    return out


# ------------------------------------------------------------------ one line per evaluation


def _signed(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:+.{digits}f}"


#: a probe whose main index is not its shortest summary name: the compositional probes' is the one
#: that needs the relation and order (``swap_obj``), not the first in the alphabet
HEADLINES = {"compositional": "swap_obj"}


def headline_index(result: Mapping, probe: str | None = None) -> tuple[str, dict] | None:
    """The probe's main index (``order_bias``, ``size_bias``, ``gap``...): :data:`HEADLINES`' for
    ``probe``, else the shortest summary name, the others being its ``_conditional`` / ``_own`` variants."""
    summary = summary_of(result)
    if not summary:
        return None
    name = HEADLINES.get(probe or "")
    if name not in summary:
        name = min(summary, key=lambda k: (len(k), k))
    return name, summary[name]


def probe_label(record: Mapping, several_n: bool) -> str:
    """``TOR n3`` (``n`` only when several are probed); a probe beyond the paper's by its own name."""
    n = record["n_objects"] if "n_objects" in record else record.get("n")
    return record["probe"].upper() + (f" n{n}" if several_n and n is not None else "")


def _value(name: str, x: float | None) -> str:
    """A bias index or gap signed (+0.31), an accuracy or share plain (0.40)."""
    if x is not None and math.isfinite(x) and not (name.endswith("_bias") or "bias_" in name or "gap" in name):
        return f"{x:.2f}"
    return _signed(x)


def eval_line(records: Sequence[Mapping]) -> str:
    """``bias @ step 52 (6,656 samples): TOR order +0.31 (N=62) | IOR size +0.40 (N=186) | ...``
    for the records of one evaluation."""
    first = records[0]
    several_n = len({r["n_objects"] for r in records} - {None}) > 1
    parts = []
    for rec in records:
        head = headline_index(rec["result"], rec.get("probe"))
        if head is None:
            continue
        name, entry = head
        label = name[:-len("_bias")] if name.endswith("_bias") else name
        parts.append(f"{probe_label(rec, several_n)} {label} {_value(name, entry.get('value'))} "
                     f"({entry.get('denominator', '-')})")
    return (f"bias @ step {first['step']} ({first['samples_seen']:,} samples): "
            + (" | ".join(parts) if parts else "no summary index (toc/ioc only)"))


# ------------------------------------------------------------------ end of run


def _ci_text(ci: Any, name: str = "bias") -> str:
    """``[+0.38, +0.45]`` for a bias index or gap, ``[0.32, 0.56]`` for an accuracy or share."""
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        lo, hi = (_value(name, v) for v in ci)
        return f"[{lo}, {hi}]"
    return ""


def bias_table(records: Sequence[Mapping]) -> list[str]:
    """Lines of the init -> final table: value [95 % CI] at step 0 and at the end, and the denominators."""
    rows = init_final_rows({"run": records})
    if not rows:
        return []
    several_n = len({r["n"] for r in rows} - {None}) > 1
    steps = {(r["init_step"], r["final_step"]) for r in rows}
    shared = len(steps) == 1  # every probe evaluated at the same first and last step: say it once
    first, last = next(iter(steps)) if shared else ("first", "last")
    cells = [("probe", "index", f"step {first}", f"step {last}", "denominator")]
    for r in rows:
        label = probe_label(r, several_n)
        if not shared:
            label += f" (steps {r['init_step']}->{r['final_step']})"
        den0, den1 = r["init_denominator"], r["final_denominator"]
        cells.append((label, r["index"], f"{_value(r['index'], r['init'])} {_ci_text(r['init_ci'], r['index'])}".rstrip(),
                      f"{_value(r['index'], r['final'])} {_ci_text(r['final_ci'], r['index'])}".rstrip(),
                      den1 if den0 == den1 else f"{den0} -> {den1}"))
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    return ["  " + "  ".join(c[i].ljust(widths[i]) for i in range(5)).rstrip() for c in cells]


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it (what a user would type)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def probe_cost_line(n_evaluations: int, eval_seconds: float, prepare_seconds: float, render_seconds: float,
                    run_seconds: float | None) -> str:
    """What the bias callback cost: its evaluations as a share of the run's wall time, and the
    one-off preparation (decoding, tokenising, planning the text trie; rendering the eval set if it
    was not cached)."""
    share = f" = {100 * eval_seconds / run_seconds:.1f} % of the run" if run_seconds else ""
    once = f"{prepare_seconds:.1f} s preparing the inputs once"
    if render_seconds >= 0.5:
        once += f", {render_seconds:.1f} s rendering the eval set (cached for later runs)"
    return f"  bias probes: {n_evaluations} evaluations, {eval_seconds:.1f} s{share} (+ {once})"


def summary_text(run_dir: Path, steps: int, samples: int | None, seconds: float | None,
                 metrics: Mapping[str, float], records: Sequence[Mapping], wandb_offline_dir: Path | None,
                 probe_cost: str | None = None) -> str:
    """The end-of-run summary (plain text, one block); ``probe_cost``: :func:`probe_cost_line`."""
    run = _shown(run_dir)
    took = f", {seconds / 60:.1f} min" if seconds else ""
    seen = f", {samples:,} samples" if samples else ""
    lines = [f"Run finished: {run}/ ({steps:,} steps{seen}{took})"]
    if probe_cost:
        lines.append(probe_cost)
    shown = [f"{label} {metrics[key] * 100:.1f} %" if pct else f"{label} {metrics[key]:.3f}"
             for key, label, pct in FINAL_METRICS if key in metrics]
    if shown:
        lines.append("  " + " | ".join(shown))
    table = bias_table(records) if records else []
    if table:
        lines.append("Bias indices, value [95 % interval] (n/a: denominator below the minimum):")
        lines += table
    lines.append("Next:")
    if records:
        lines.append(f"  python -m eval report {run}    # curves and summary.md in {run}/report/")
    if wandb_offline_dir is not None:
        lines.append(f"  wandb sync {_shown(wandb_offline_dir)}    # upload the offline W&B run")
    lines.append(f"  python -m eval comco --checkpoint {run}/checkpoints/last.ckpt --out {run}/comco.json    # probe the final model")
    return "\n".join(lines)


def _emit(text: str) -> None:
    """Print above any live tqdm bar (plain print when none is active)."""
    try:
        from tqdm import tqdm

        tqdm.write(text, file=sys.stdout)
    except ImportError:  # pragma: no cover - tqdm ships with Lightning
        print(text, flush=True)


def _offline_dir(logger) -> Path | None:
    """The offline run folder (``.../wandb/offline-run-*``) of a W&B logger, None when online."""
    exp = logger.experiment
    settings = getattr(exp, "settings", None)
    if getattr(settings, "mode", None) not in ("offline", "dryrun") or not getattr(exp, "dir", None):
        return None
    return Path(exp.dir).parent  # exp.dir is <offline-run-...>/files


class RunSummary(L.Callback):
    """Registered by the CLI after the config's callbacks: rank 0 prints one line per bias
    evaluation and the end-of-run summary; W&B gets the whole resolved config, the bias plots as
    ``wandb.Image``, the init -> final table as ``wandb.Table`` and ``last`` summaries of ``bias/*``.

    Args:
        config: the resolved run config (nested; flattened with ``/`` for W&B).
        print_summary: print the per-evaluation lines and the end-of-run summary.
    """

    def __init__(self, config: Mapping[str, Any] | None = None, print_summary: bool = True) -> None:
        self.config = dict(config or {})
        self.print_summary = print_summary
        self._printed: set[int] = set()
        self._bias_size = -1
        self._start: float | None = None
        self._run_dir: Path | None = None

    # ---------------------------------------------------------------- where things are

    @staticmethod
    def bias_callback(trainer: L.Trainer):
        """The trainer's ``BiasEvalCallback``, or None."""
        from eval.callback import BiasEvalCallback

        return next((cb for cb in trainer.callbacks if isinstance(cb, BiasEvalCallback)), None)

    def run_dir(self, trainer: L.Trainer) -> Path:
        """The bias callback's run dir (``bias.jsonl``, ``plots/``), else ``trainer.default_root_dir``."""
        cb = self.bias_callback(trainer)
        return cb.resolve_run_dir(trainer) if cb is not None else Path(trainer.default_root_dir)

    def _records(self) -> list[dict]:
        path = self._run_dir / BIAS_FILE if self._run_dir else None
        if path is None or not path.is_file():
            return []
        return scan_records(path)[0]

    # ---------------------------------------------------------------- hooks

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._run_dir = self.run_dir(trainer)
        self._start = time.perf_counter()
        if trainer.is_global_zero:  # a resumed run's earlier evaluations were reported then
            self._printed = {r["step"] for r in self._records()}
        if self.config:
            flat = flatten_config(self.config)
            for logger in wandb_loggers(trainer.loggers):
                logger.log_hyperparams(flat)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report_evaluations(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._report_evaluations(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report_evaluations(trainer)

    def _report_evaluations(self, trainer: L.Trainer) -> None:
        """One line per evaluation appended to ``bias.jsonl`` since the last call (rank 0)."""
        if not (trainer.is_global_zero and self.print_summary) or self._run_dir is None:
            return
        path = self._run_dir / BIAS_FILE
        size = path.stat().st_size if path.is_file() else -1
        if size == self._bias_size:
            return
        self._bias_size = size
        new: dict[int, list[dict]] = {}
        for rec in self._records():
            if rec["step"] not in self._printed:
                new.setdefault(rec["step"], []).append(rec)
        for step in sorted(new):
            self._printed.add(step)
            _emit(eval_line(new[step]))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After every ``on_train_end`` (the bias callback's plots are written): summary and W&B media."""
        if not trainer.is_global_zero:
            return
        records = self._records()
        wandb = wandb_loggers(trainer.loggers)
        self._log_media(trainer, wandb, records)
        if not self.print_summary:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if getattr(v, "numel", lambda: 1)() == 1 and math.isfinite(float(v))}
        offline = next((d for d in (_offline_dir(lg) for lg in wandb) if d is not None), None)
        samples = getattr(pl_module, "samples_seen", None)
        seconds = time.perf_counter() - self._start if self._start else None
        run_dir = Path(trainer.default_root_dir)
        _emit(summary_text(run_dir, trainer.global_step, int(samples) if samples else None, seconds, metrics,
                           records, offline, self._probe_cost(trainer, seconds)))

    def _probe_cost(self, trainer: L.Trainer, seconds: float | None) -> str | None:
        cb = self.bias_callback(trainer)
        if cb is None or not cb.n_evaluations:
            return None
        return probe_cost_line(cb.n_evaluations, cb.total_seconds, cb.prepare_seconds, cb.render_seconds, seconds)

    def _log_media(self, trainer: L.Trainer, loggers: list, records: Sequence[Mapping]) -> None:
        """The bias plots as ``wandb.Image`` and the init -> final rows as ``wandb.Table``."""
        if not loggers or self._run_dir is None:
            return
        plots = sorted((self._run_dir / "plots").glob("*.png"))
        rows = init_final_rows({"run": records}) if records else []
        columns = ["probe", "n", "index", "init", "init_ci_lo", "init_ci_hi", "final", "final_ci_lo",
                   "final_ci_hi", "init_denominator", "final_denominator", "init_samples", "final_samples"]

        def ci(row: Mapping, end: str, i: int) -> float | None:
            value = row.get(f"{end}_ci")
            return float(value[i]) if isinstance(value, (list, tuple)) and len(value) == 2 else None

        data = [[r["probe"], r["n"], r["index"], r["init"], ci(r, "init", 0), ci(r, "init", 1), r["final"],
                 ci(r, "final", 0), ci(r, "final", 1), r["init_denominator"], r["final_denominator"],
                 r["init_samples"], r["final_samples"]] for r in rows]
        for logger in loggers:
            for plot in plots:  # one key per figure: the figures differ in size
                logger.log_image(key=f"{PLOT_KEY}/{plot.stem}", images=[str(plot)], caption=[plot.stem])
            if data:
                logger.log_table(key=TABLE_KEY, columns=columns, data=data)
