"""``samples_seen``, the x-axis of every training curve: its formula and its W&B declaration, once.

- :func:`samples_per_step`: per-device batch × world size × gradient accumulation — the one
  formula. ``train.module.CLIPModule.samples_seen`` adds it up from the value stored in the
  checkpoint; :func:`samples_seen` reads that property when the module has one.
- :func:`define_samples_axis`: ``define_metric(prefix, step_metric="samples_seen")`` on every
  :class:`~lightning.pytorch.loggers.WandbLogger` (matched with ``isinstance``; ``wandb`` stays
  optional). Each part of a run declares the prefixes it logs (the module ``train/*``, ``val/*``;
  the bias callback ``bias/*`` and its other probes' ``zeroshot/*``, ``word_order/*``,
  ``sugarcrepe/*``, ``coco_bias/*``; the data statistics callback ``data/*``); a prefix is declared once
  per logger however many parts ask. :data:`SUMMARY` says which prefixes keep their last value as
  the run's summary (the bias indices, so W&B's runs table compares final values).
- :func:`wandb_loggers`: the W&B loggers among a trainer's loggers.

The one home of W&B metric definitions: nothing else calls ``define_metric``.

Lives in ``eval`` because the bias callback needs it and ``eval`` never imports ``train``.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

STEP_METRIC = "samples_seen"
#: prefix -> W&B summary mode; prefixes not named keep W&B's default
SUMMARY = {"bias/*": "last", "zeroshot/*": "last", "word_order/*": "last", "sugarcrepe/*": "last",
           "coco_bias/*": "last", "compositional/*": "last"}
_DEFINED_ATTR = "_samples_axis_defined"  # set of names already declared, kept on the logger itself


def samples_per_step(trainer: Any, batch_size: int) -> int:
    """Samples one optimizer step consumes across all ranks."""
    return int(batch_size) * int(trainer.world_size) * int(trainer.accumulate_grad_batches)


def samples_seen(trainer: Any, pl_module: Any, batch_size: int | None = None) -> int:
    """``pl_module.samples_seen`` when the module keeps one (``CLIPModule`` does, continued across
    resumes); else ``global_step`` × :func:`samples_per_step` with ``batch_size`` (0 when unknown)."""
    seen = getattr(pl_module, "samples_seen", None)
    if seen is not None:
        return int(seen)
    return int(trainer.global_step) * samples_per_step(trainer, batch_size or 0)


def wandb_loggers(loggers: Iterable[Any]) -> list[Any]:
    """The :class:`~lightning.pytorch.loggers.WandbLogger` instances among ``loggers`` (``isinstance``)."""
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover - lightning always ships it; wandb itself is optional
        return []
    return [logger for logger in loggers if isinstance(logger, WandbLogger)]


def define_samples_axis(loggers: Iterable[Any], prefixes: Iterable[str]) -> list[Any]:
    """Declare ``samples_seen`` as the x-axis of ``prefixes`` (``"bias/*"``) on each W&B logger.

    Idempotent per logger: a name already declared is not declared again. Returns the W&B loggers
    found (empty without W&B, and then ``wandb`` is never imported).
    """
    found = wandb_loggers(loggers)
    for logger in found:
        experiment = logger.experiment
        if not hasattr(experiment, "define_metric"):  # W&B disabled: a dummy run
            continue
        done = getattr(logger, _DEFINED_ATTR, None)
        if done is None:
            done = set()
            setattr(logger, _DEFINED_ATTR, done)
        if STEP_METRIC not in done:
            experiment.define_metric(STEP_METRIC)
            done.add(STEP_METRIC)
        for prefix in prefixes:
            if prefix not in done:
                summary = {"summary": SUMMARY[prefix]} if prefix in SUMMARY else {}
                experiment.define_metric(prefix, step_metric=STEP_METRIC, **summary)
                done.add(prefix)
    return found
