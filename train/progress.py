"""Console progress for training runs: a step bar over the whole run, a model summary without FLOPs.

Lightning's bars count batches per epoch (``Epoch 0/-2``, ``312/11`` on a ``max_steps`` run over an
iterable dataset); a run here is defined by ``trainer.max_steps``, so the training bar counts
optimizer steps to it and shows the loss and samples/s the module logs.
"""
from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelSummary, TQDMProgressBar
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

#: progress-bar metrics shown, in this order, with their short names
SHOWN = {"train/loss": "loss", "train/samples_per_sec": "samples/s"}


def run_steps(trainer: L.Trainer) -> int | None:
    """Optimizer steps the run will take: ``trainer.max_steps``, else Lightning's estimate, else None."""
    if trainer.max_steps is not None and trainer.max_steps > 0:
        return int(trainer.max_steps)
    try:
        steps = trainer.estimated_stepping_batches
    except Exception:  # noqa: BLE001 - an unknown length only costs the bar its total
        return None
    return int(steps) if isinstance(steps, (int, float)) and math.isfinite(steps) and steps > 0 else None


class StepProgressBar(TQDMProgressBar):
    """One training bar over the whole run: ``train  52/312 [00:40<03:20, loss=3.1, samples/s=170]``.

    The count is ``trainer.global_step`` (optimizer steps, so a resumed run starts where it stopped
    and gradient accumulation counts once per step), the total the run's length. Validation keeps
    Lightning's transient bar.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset(total=run_steps(trainer))
        # a resumed run starts at its step: rate and ETA count only the steps run now
        self.train_progress_bar.initial = self.train_progress_bar.n = trainer.global_step
        self.train_progress_bar.set_description("train")
        self.train_progress_bar.refresh()

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        """The bar spans epochs: nothing to reset."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step
        if bar is None or bar.disable or step == bar.n:
            return
        if step % max(1, self.refresh_rate) == 0 or (bar.total is not None and step >= bar.total):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        bar = self.train_progress_bar
        if bar is not None and not bar.disable:
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Loss and samples/s, rounded; no ``v_num`` (the run is named by its directory)."""
        metrics = trainer.progress_bar_metrics
        out: dict[str, Any] = {}
        for key, short in SHOWN.items():
            value = metrics.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                out[short] = f"{value:.3g}" if short == "loss" else f"{value:.0f}"
        return out


class ModelSummaryNoFlops(ModelSummary):
    """Lightning's model summary without the FLOPs column and total when they were not counted
    (zero without ``example_input_array``): ``Total FLOPs: 0`` reads as a bug."""

    @staticmethod
    def summarize(summary_data, total_parameters: int, trainable_parameters: int, model_size: float,
                  total_training_modes: dict[str, int], total_flops: int, **summarize_kwargs: Any) -> None:
        if total_flops:
            return ModelSummary.summarize(summary_data, total_parameters, trainable_parameters, model_size,
                                          total_training_modes, total_flops, **summarize_kwargs)
        from lightning.pytorch.callbacks.model_summary import log

        data = [col for col in summary_data if col[0] != "FLOPs"]
        table = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes,
                                      total_flops, *data)
        lines = table.splitlines()
        if lines and lines[-1].rstrip().endswith("Total Flops"):
            lines = lines[:-1]
        log.info("\n" + "\n".join(lines))
