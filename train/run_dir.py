"""Run directory ``runs/<name>/``: loggers (CSV + W&B, offline without a key), checkpoints, W&B run id."""
from __future__ import annotations

import netrc
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only

WandbMode = Literal["auto", "online", "offline", "disabled"]


@dataclass
class RunConfig:
    """Where a run lands and how it is logged.

    Args:
        name: Run name: files go to ``<root>/<name>/`` and W&B shows this name.
        root: Parent directory of run directories.
        checkpoint_every_n_steps: Keep a checkpoint every N optimizer steps (plus ``last.ckpt``).
        wandb_project: W&B project.
        wandb_mode: ``auto`` = online if an API key is configured, else offline (never prompts);
            the ``WANDB_MODE`` environment variable overrides ``auto``.
    """

    name: str = "default"
    root: str = "runs"
    checkpoint_every_n_steps: int = 500
    wandb_project: str = "clip-bias-lab"
    wandb_mode: WandbMode = "auto"

    def __post_init__(self) -> None:
        if self.checkpoint_every_n_steps <= 0:
            raise ValueError(f"run.checkpoint_every_n_steps must be > 0, got {self.checkpoint_every_n_steps}")
        if not self.name or "/" in self.name:
            raise ValueError(f"run.name must be a non-empty directory name, got {self.name!r}")

    @property
    def dir(self) -> Path:
        return Path(self.root) / self.name


def wandb_api_key_configured() -> bool:
    """True if W&B could log in without prompting: ``WANDB_API_KEY`` or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = os.environ.get("NETRC", os.path.expanduser("~/.netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: WandbMode) -> str:
    """``online``/``offline``/``disabled`` for the configured mode, the environment and the key."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("online", "offline", "disabled"):
        return env if env != "online" or wandb_api_key_configured() else "offline"
    if env == "dryrun":
        return "offline"
    return "online" if wandb_api_key_configured() else "offline"


def wandb_run_id(run: RunConfig, resume: bool) -> str:
    """The W&B id stored in ``<run dir>/wandb_id``: reused when resuming, fresh otherwise."""
    path = run.dir / "wandb_id"
    if resume and path.exists():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    if rank_zero_only.rank == 0:
        run.dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(run_id + "\n")
        os.replace(tmp, path)
    return run_id


class _AppendingWriter(ExperimentWriter):
    """Keeps an existing ``metrics.csv`` (Lightning's writer deletes it) and appends to it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = f.readline().strip()
            self.metrics_keys = sorted(k for k in header.split(",") if k)


class ResumableCSVLogger(CSVLogger):
    """CSVLogger that appends to the run's ``metrics.csv`` when resuming instead of deleting it."""

    def __init__(self, *args, resume: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._resume = resume

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None and self._resume:
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return CSVLogger.experiment.fget.__wrapped__(self)


def build_loggers(run: RunConfig, resume: bool) -> list[Logger]:
    """CSVLogger first (so ``trainer.log_dir`` is the run dir, where config.yaml lands), then W&B."""
    loggers: list[Logger] = [ResumableCSVLogger(save_dir=run.root, name=run.name, version="", resume=resume)]
    mode = resolve_wandb_mode(run.wandb_mode)
    if mode != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.append(
            WandbLogger(
                project=run.wandb_project, name=run.name, id=wandb_run_id(run, resume), save_dir=str(run.dir),
                offline=mode == "offline", resume="allow", log_model=False,
            )
        )
    return loggers


def build_checkpoint_callback(run: RunConfig) -> Callback:
    """``last.ckpt`` plus one checkpoint every ``run.checkpoint_every_n_steps`` steps, all kept."""
    return ModelCheckpoint(
        dirpath=run.dir / "checkpoints",
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=run.checkpoint_every_n_steps,
        save_top_k=-1,
        save_last=True,
    )
