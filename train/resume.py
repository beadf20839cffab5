"""What must match between a checkpoint and today's config when a run resumes (``--ckpt_path``).

A checkpoint written by :class:`train.module.CLIPModule` carries ``checkpoint[HISTORY_KEY]``:

- ``history``: the values that define what the run's past steps *were* — model name and open_clip
  architecture, ``pretrained``, loss, per-device batch size, world size, gradient accumulation and
  the LR schedule's shape (warmup, resolved cosine length, ``min_lr_ratio``). A resume whose
  values differ is refused with a diff, before the first training step: continuing would
  either mix two different runs under one name or make ``samples_seen`` (the x-axis of every
  bias curve) wrong for the past.
- ``optimizer``: peak ``lr``, ``weight_decay``, ``betas``, ``eps``. These may change on resume;
  the new values are applied from the resume step on (Lightning would otherwise restore the old
  ones with the optimizer state) and one line says so.
- ``samples_seen``, ``global_step``, ``skipped_steps``: counters continued from the checkpoint,
  never recounted from today's batch size.

Everything else (``trainer.max_steps``, callbacks and their cadence, ``model.nan_policy``,
gradient clipping, ...) is simply today's config.

The cosine length is part of the history: when ``model.total_steps`` is unset it is resolved
from ``trainer.max_steps`` once, when the run starts, and stored. A resume with another
``trainer.max_steps`` changes only where the run stops, not the schedule; steps past the stored
length run at ``min_lr_ratio × lr``. An explicit ``model.total_steps`` must equal the stored length.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

#: Key of the run record in a Lightning checkpoint dict.
HISTORY_KEY = "clip_bias_lab_run"

HOW_TO_PROCEED = (
    "Resume with the checkpoint's values, or start a new run with another --run.name (to start it from "
    "these weights: `python -m train export {ckpt} model.pt`, then `--model.pretrained model.pt`)."
)


class ResumeMismatchError(ValueError):
    """Today's config differs from a checkpoint's run history; raised before any training step."""


def run_history(
    *,
    model_name: str,
    model_cfg: Mapping | None,
    pretrained: str | None,
    loss: str,
    batch_size: int | None,
    world_size: int,
    accumulate_grad_batches: int,
    warmup_steps: int,
    total_steps: int | None,
    min_lr_ratio: float,
    aux_losses: list[dict] | None = None,
) -> dict[str, Any]:
    """The history-defining values, keyed by the config path shown to the user.

    ``aux_losses``: :func:`describe_aux_loss` of each ``model.aux_losses`` entry (the objective the
    past steps were trained with); None leaves them out (records written before they existed).

    ``batch_size`` / ``total_steps`` of None mean "not known (yet)" and are left out, so not compared.
    """
    values = {
        "model.model_name": model_name,
        "model architecture": dict(model_cfg) if model_cfg is not None else None,
        "model.pretrained": pretrained,
        "model.loss": loss,
        "data.batch_size": batch_size,
        "world size (trainer.devices x trainer.num_nodes)": int(world_size),
        "trainer.accumulate_grad_batches": int(accumulate_grad_batches),
        "model.warmup_steps": int(warmup_steps),
        "model.total_steps (cosine schedule length)": total_steps,
        "model.min_lr_ratio": float(min_lr_ratio),
        "model.aux_losses": aux_losses,
    }
    return {k: v for k, v in values.items() if v is not None or k not in UNKNOWN_IF_NONE}


#: History values that may be unknown when the check runs; left out (not compared) while None.
UNKNOWN_IF_NONE = ("data.batch_size", "model.total_steps (cosine schedule length)", "model.aux_losses")


def describe_aux_loss(loss: Any) -> dict[str, Any]:
    """``{"class_path": ..., <public scalar attributes>}`` of an auxiliary loss, e.g. its weight and mode."""
    scalars = (int, float, str, bool, type(None))
    attrs = {k: v for k, v in sorted(vars(loss).items())
             if not k.startswith("_") and k != "training" and isinstance(v, scalars)}
    return {"class_path": f"{type(loss).__module__}.{type(loss).__qualname__}", **attrs}


def optimizer_values(lr: float, weight_decay: float, betas, eps: float) -> dict[str, Any]:
    """The optimizer settings applied (not refused) when they change on resume."""
    return {"model.lr": float(lr), "model.weight_decay": float(weight_decay),
            "model.betas": [float(b) for b in betas], "model.eps": float(eps)}


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k in sorted(value):
            out.update(_flatten(value[k], f"{prefix}.{k}"))
        return out
    return {prefix: value}


def history_diff(stored: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``"<config path>: checkpoint X, now Y"`` for every stored value that differs today.

    A key missing today (not known yet, see :data:`UNKNOWN_IF_NONE`) is not compared. The model
    architecture is compared field by field, and only when the names match.
    """
    lines = []
    for key, old in stored.items():
        if key not in now:
            continue
        new = now[key]
        if key == "model architecture":
            if old is None or stored.get("model.model_name") != now.get("model.model_name"):
                continue
            name = now.get("model.model_name")
            a, b = _flatten(old, ""), _flatten(new, "")
            for field in sorted(set(a) | set(b)):
                if a.get(field) != b.get(field):
                    lines.append(f"model architecture of {name!r} ({field.lstrip('.')}): "
                                 f"checkpoint {a.get(field)}, now {b.get(field)}")
            continue
        if old != new:
            lines.append(f"{key}: checkpoint {old}, now {new}")
    return lines


def refusal_message(ckpt_path: Any, lines: list[str]) -> str:
    where = f" {ckpt_path}" if ckpt_path else ""
    return (
        f"Cannot resume from{where}: these values define the run's history and differ from the checkpoint:\n  "
        + "\n  ".join(lines) + "\n" + HOW_TO_PROCEED.format(ckpt=ckpt_path or "CKPT")
    )


def changed_values(stored: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``"model.lr 0.001 -> 0.01"`` for each applied value that differs from the checkpoint."""
    return [f"{k} {stored[k]} -> {now[k]}" for k in now if k in stored and stored[k] != now[k]]


def read_run_record(ckpt_path: str) -> dict | None:
    """The run record of a checkpoint file (None: written before records existed).

    Tensors are memory-mapped, not read, so this is cheap even for large models.
    """
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):  # a legacy (non-zip) file cannot be mmapped: read it whole
            raise
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    return ckpt.get(HISTORY_KEY) if isinstance(ckpt, dict) else None


def refuse_changed_history(ckpt_path: str, module, trainer, datamodule=None) -> None:
    """Raise :class:`ResumeMismatchError` if resuming ``module`` from ``ckpt_path`` would change its history.

    For a CLI's ``before_fit`` (``ckpt_path`` resolved, e.g. ``last`` → ``checkpoints/last.ckpt``): the
    check ``CLIPModule.on_load_checkpoint`` makes anyway, but before ``trainer.fit`` writes anything,
    so a refused resume leaves the run directory (``config.yaml`` included) untouched.
    """
    record = read_run_record(ckpt_path)
    if not record:
        return
    batch = getattr(datamodule, "batch_size", None)
    now = module.run_history(batch_size=batch, world_size=trainer.num_devices * trainer.num_nodes,
                             accumulate_grad_batches=trainer.accumulate_grad_batches)
    lines = history_diff(record["history"], now)
    if lines:
        raise ResumeMismatchError(refusal_message(ckpt_path, lines))
