"""Run directory ``runs/<name>/``: one run per directory (refuse / resume / move aside), a lock held for
the run's life, atomic checkpoint writes, loggers (CSV + W&B, offline without a key), W&B run id."""
from __future__ import annotations

import contextlib
import fcntl
import json
import netrc
import os
import re
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from data_prep.fileio import (
    TMP_MARK, atomic_write, parse_temp, pid_alive, writable_problem, write_json_atomic, write_text_atomic,
)

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
        wandb_group: W&B run group (e.g. one sweep or experiment); None = no group.
        wandb_tags: W&B run tags (e.g. the mitigation), for filtering runs in the W&B UI.
        overwrite: ``fit`` on a run directory that already holds a run: move the old run aside to
            ``<root>/<name>.old-<UTC time>`` (nothing is deleted) and start afresh. Without it such a
            ``fit`` refuses unless it resumes (``--ckpt_path last``).
    """

    name: str = "default"
    root: str = "runs"
    checkpoint_every_n_steps: int = 500
    wandb_project: str = "clip-bias-lab"
    wandb_mode: WandbMode = "auto"
    wandb_group: str | None = None
    wandb_tags: list[str] | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.checkpoint_every_n_steps <= 0:
            raise ValueError(f"run.checkpoint_every_n_steps must be > 0, got {self.checkpoint_every_n_steps}")
        validate_run_name(self.name)
        bad = [t for t in self.wandb_tags or [] if not isinstance(t, str) or not 0 < len(t) <= 64]
        if bad:
            raise ValueError(f"run.wandb_tags must be strings of 1 to 64 characters (W&B's limit), got {bad}")

    @property
    def dir(self) -> Path:
        return Path(self.root) / self.name


def validate_run_name(name: str) -> None:
    """A run name is one plain directory name under ``run.root``: never a path, never hidden."""
    bad = (not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name
           or (os.altsep is not None and os.altsep in name))
    if bad:
        raise ValueError(
            f"run.name must be a plain directory name (not empty, no '/' or '\\', not starting with '.'; "
            f"so not '.' or '..'), got {name!r}"
        )


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
        write_text_atomic(path, run_id + "\n")
    return run_id


#: ``metrics.csv`` column groups, in order: training first, evaluations after, everything else last
_COLUMN_ORDER = ("step", "epoch", "train/", "samples_seen", "val/", "data/", "bias/")


def column_order(key: str) -> tuple[int, str]:
    """Sort key of a ``metrics.csv`` column: ``step``, ``train/*``, ``samples_seen``, ``val/*``,
    ``data/*``, ``bias/*``, then anything else; alphabetical within a group."""
    for rank, prefix in enumerate(_COLUMN_ORDER):
        if key == prefix or (prefix.endswith("/") and key.startswith(prefix)):
            return rank, key
    return len(_COLUMN_ORDER), key


class _AppendingWriter(ExperimentWriter):
    """Keeps an existing ``metrics.csv`` (Lightning's writer deletes it) and appends to it; columns
    in :func:`column_order` (Lightning's sort would put the ~140 ``bias/*`` columns before the loss)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = f.readline().strip()
            self.metrics_keys = sorted((k for k in header.split(",") if k), key=column_order)

    def _record_new_keys(self) -> set[str]:
        new_keys = set().union(*self.metrics) - set(self.metrics_keys)
        self.metrics_keys.extend(new_keys)
        self.metrics_keys.sort(key=column_order)
        return new_keys


class GlobalStepLabels:
    """Logger mixin: every row is labelled with ``trainer.global_step`` when it is written, the optimizer
    updates done so far — the step of ``stepNNNNNNN.ckpt`` and of every ``bias.jsonl`` record. The
    train row of step ``s`` is the batch whose update made step ``s`` (so ``samples_seen`` there is
    ``s`` × samples per step); the validation after ``s`` updates is step ``s``. Lightning's own label
    (its count of stepped batches) is one less for validation rows and drifts by one on every resume
    from a checkpoint written at the end of training. Set ``trainer`` once the trainer exists
    (:func:`label_rows_by_global_step`); until then Lightning's step is kept. The ``epoch`` column is
    the epoch of step ``s``'s batch, counted from the step (Lightning's starts a new epoch after a resume
    from the end of training)."""

    trainer: Any = None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.trainer is not None:
            step = int(self.trainer.global_step)
            if "epoch" in metrics and (epoch := epoch_of_step(self.trainer, step)) is not None:
                metrics = {**metrics, "epoch": epoch}
        super().log_metrics(metrics, step)


def epoch_of_step(trainer, step: int) -> int | None:
    """The epoch whose batches made optimizer step ``step`` (1-based; step 0 is epoch 0), from the
    trainer's batches per epoch; None when that is unknown."""
    batches = getattr(trainer, "num_training_batches", None)
    accumulate = getattr(trainer, "accumulate_grad_batches", 1) or 1
    if not isinstance(batches, int) or batches <= 0:
        return None
    steps_per_epoch = -(-batches // accumulate)  # the last window of an epoch steps however short it is
    return max(step - 1, 0) // steps_per_epoch


def label_rows_by_global_step(trainer) -> None:
    """Point every :class:`GlobalStepLabels` logger of ``trainer`` at it."""
    for logger in trainer.loggers:
        if isinstance(logger, GlobalStepLabels):
            logger.trainer = trainer


class ResumableCSVLogger(GlobalStepLabels, CSVLogger):
    """CSVLogger that appends to the run's ``metrics.csv`` instead of deleting it.

    Lightning's writer deletes ``metrics.csv`` (and warns) whenever the log dir is not empty; here the
    run-dir rule already keeps a fresh fit out of an old run's directory, and the only other entry at
    start is ``run.lock``, so nothing is ever deleted.
    """

    def __init__(self, *args, resume: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._resume = resume

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return CSVLogger.experiment.fget.__wrapped__(self)


class StepWandbLogger(GlobalStepLabels, WandbLogger):
    """Lightning's ``WandbLogger`` with rows labelled by :class:`GlobalStepLabels`."""


def _wandb_logger(**kwargs: Any) -> Logger:
    """:class:`StepWandbLogger` without its ``anonymous=None`` init argument, which W&B >= 0.19
    answers with "The anonymous setting has no effect" on every run."""
    logger = StepWandbLogger(**kwargs)
    if logger._wandb_init.get("anonymous") is None:
        logger._wandb_init.pop("anonymous", None)
    return logger


def build_loggers(run: RunConfig, resume: bool) -> list[Logger]:
    """CSVLogger first (so ``trainer.log_dir`` is the run dir, where config.yaml lands), then W&B."""
    loggers: list[Logger] = [ResumableCSVLogger(save_dir=run.root, name=run.name, version="", resume=resume)]
    mode = resolve_wandb_mode(run.wandb_mode)
    if mode != "disabled":
        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.append(
            _wandb_logger(
                project=run.wandb_project, name=run.name, id=wandb_run_id(run, resume), save_dir=str(run.dir),
                offline=mode == "offline", resume="allow", log_model=False, group=run.wandb_group,
                tags=list(run.wandb_tags) if run.wandb_tags else None,
            )
        )
    return loggers


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose ``last.ckpt`` is always the run's own, so a resumed run overwrites it
    (atomically) instead of writing ``last-v1.ckpt`` beside it. Lightning only knows ``last.ckpt`` is
    its own from the callback state saved in the checkpoint, which is missing when resuming from the
    first step checkpoint or with another ``run.checkpoint_every_n_steps``; the run-dir rule (one run
    per directory) makes the answer always yes. Step checkpoints keep Lightning's ``-v1`` versioning:
    resuming from an older step never overwrites the abandoned branch's files."""

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        if not self.last_model_path and self.dirpath:
            self.last_model_path = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
        if trainer.ckpt_path:  # resumed: this step is saved already; never save again mid-accumulation
            self._last_global_step_saved = trainer.global_step

    def _save_final_last(self, trainer) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking or self._last_global_step_saved == trainer.global_step:
            return
        if _mid_accumulation(trainer):  # the partial window's gradients are not in a checkpoint
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer, pl_module) -> None:
        """``last.ckpt`` holds the final step (Lightning saves it only every N steps, not at the end)."""
        self._save_final_last(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """On SIGTERM Lightning stops after the current batch (``SIGTERMException``): save ``last.ckpt``
        there (atomically, like every checkpoint), so ``--ckpt_path last`` continues from that step.
        Other exceptions save nothing: the state they leave may be the reason for them."""
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            self._save_final_last(trainer)


def _mid_accumulation(trainer) -> bool:
    """True when the batches trained so far end inside a gradient-accumulation window."""
    accumulate = getattr(trainer, "accumulate_grad_batches", 1) or 1
    if accumulate <= 1:
        return False
    try:
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
    except AttributeError:
        return False
    return done % accumulate != 0


def build_checkpoint_callback(run: RunConfig) -> Callback:
    """``last.ckpt`` plus one checkpoint every ``run.checkpoint_every_n_steps`` steps, all kept."""
    return RunCheckpoint(
        dirpath=run.dir / "checkpoints",
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=run.checkpoint_every_n_steps,
        save_top_k=-1,
        save_last=True,
    )


# ------------------------------------------------------------------ one run, one directory

LOCK_FILE = "run.lock"
_LAST_RE = re.compile(r"^last(-v?\d+)?\.ckpt$")
_STEP_RE = re.compile(r"step(\d+)")
_RANK_VARS = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")  # Lightning's order


class RunDirError(RuntimeError):
    """``fit`` refused before doing any work; the message says why and how to go on."""


class RunLockedError(RunDirError):
    """Another live process holds the run directory's lock."""


def is_launching_process() -> bool:
    """True in the process the user started (global rank 0), False in the ranks a launcher spawned.

    Lightning's DDP launcher re-runs the CLI with ``LOCAL_RANK=1..`` (and ``NODE_RANK`` on other
    nodes); torchrun / SLURM set ``RANK`` / ``SLURM_PROCID``. Only the launching process may refuse,
    lock or move run directories: the others would see its lock and its fresh files.
    """
    for key in ("NODE_RANK", "GROUP_RANK"):
        if os.environ.get(key, "0").strip() not in ("", "0"):
            return False
    for key in _RANK_VARS:
        value = os.environ.get(key)
        if value is not None and value.strip() != "":
            return value.strip() == "0"
    return True


def run_contents(run_dir: Path) -> list[str]:
    """What makes ``run_dir`` hold a run: every entry but the lock file (``checkpoints/`` with a slash)."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir() if p.name != LOCK_FILE)


#: what a fit writes before its first training step
STARTUP_FILES = ("config.yaml", "hparams.yaml", "metrics.csv", "wandb_id", "wandb/", "checkpoints/", "branch.json")


def never_trained(run_dir: Path) -> bool:
    """True when ``run_dir`` holds only what a fit writes before its first step (a start that crashed):
    no checkpoint, no metric row, no bias record, nothing else. Such a directory is no run: the next
    fit starts there afresh instead of being refused."""
    contents = run_contents(run_dir)
    if not contents or any(name not in STARTUP_FILES for name in contents):
        return False
    ckpt_dir = Path(run_dir) / "checkpoints"
    if ckpt_dir.is_dir() and any(p.suffix == ".ckpt" and TMP_MARK not in p.name for p in ckpt_dir.iterdir()):
        return False
    metrics = Path(run_dir) / "metrics.csv"
    try:
        return not metrics.is_file() or len(metrics.read_text().splitlines()) <= 1
    except OSError:
        return False


def held_run(run_dir: Path) -> list[str]:
    """:func:`run_contents` of a directory that holds a run; [] for an empty or :func:`never_trained` one."""
    return [] if never_trained(run_dir) else run_contents(run_dir)


def reuse_untrained(run_dir: Path) -> None:
    """Make an :func:`never_trained` directory ready for a fresh start: its header-only ``metrics.csv``
    goes (it holds no row; the other start-up files are rewritten by the new start), and one line says so."""
    if not never_trained(run_dir):
        return
    metrics = Path(run_dir) / "metrics.csv"
    if metrics.is_file():
        metrics.unlink()
    print(f"note: {run_dir} holds only the files of an earlier start that stopped before its first step "
          f"({', '.join(run_contents(run_dir))}); starting the run there afresh", file=sys.stderr)


class RunLock:
    """An exclusive ``flock`` on ``<run dir>/run.lock`` with the holder's pid, host and start time inside.

    The kernel drops the lock when the holder exits, however it exits (kill -9 included), so a lock
    file left behind never blocks a later run; only a live holder does.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(_locked_message(self.run_dir, self.path)) from None
        except BaseException:
            os.close(fd)
            raise
        info = (f"pid {os.getpid()}\nhost {socket.gethostname()}\n"
                f"started {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n"
                f"command {' '.join(sys.argv)}\n")
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __del__(self) -> None:
        self.release()

    @staticmethod
    def holder(run_dir: Path) -> str | None:
        """The holder's description if a live process holds the lock, else None (takes nothing)."""
        path = Path(run_dir) / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _describe_holder(path)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)


def _describe_holder(path: Path) -> str:
    try:
        fields = dict(line.split(" ", 1) for line in path.read_text().splitlines() if " " in line)
    except OSError:
        fields = {}
    if "pid" not in fields:
        return "a process that has not yet written its pid"
    return f"pid {fields['pid']} on {fields.get('host', '?')}, started {fields.get('started', '?')}"


def _locked_message(run_dir: Path, path: Path) -> str:
    return (f"{run_dir} is in use by another fit ({_describe_holder(path)}; lock file {path}). Two runs in one "
            f"directory would interleave their files: wait for that run to end, or choose another --run.name.")


def _ways_on(run: RunConfig) -> str:
    return (f"Ways on:\n"
            f"  --ckpt_path last       resume that run from {run.dir / 'checkpoints' / 'last.ckpt'}\n"
            f"  --run.name NEW_NAME    start a new run in {Path(run.root) / 'NEW_NAME'}\n"
            f"  --run.overwrite true   move the old run aside to {Path(run.root) / (run.name + '.old-<UTC time>')} "
            f"(nothing is deleted) and start afresh")


def _refuse_unwritable_run_dir(run: RunConfig) -> None:
    problem = writable_problem(run.dir, is_dir=True)
    if problem:
        raise RunDirError(f"run.root {run.root}: cannot create the run directory {run.dir}, {problem}")


def checkpoint_problem(path: Path) -> str | None:
    """None if ``path`` loads as a checkpoint, else why not (one line). Cheap: tensors are mmapped, not read."""
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):  # a legacy (non-zip) file cannot be mmapped; read it whole
                raise
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any failure means "not usable"; say which
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else 'no detail'}"
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        return "not a Lightning checkpoint (no state_dict)"
    return None


def finished_message(path: Path, max_steps: int | None) -> str | None:
    """One line when the checkpoint at ``path`` already reached ``trainer.max_steps`` (nothing to train),
    else None. Resuming a finished run would otherwise re-run validation and append duplicate rows."""
    if max_steps is None or max_steps < 0 or not Path(path).is_file():
        return None
    step = checkpoint_step(path)  # None: unreadable, reported elsewhere
    if step is None or step < max_steps:
        return None
    return (f"the run is finished: {path} holds step {step} and trainer.max_steps is {max_steps}, so there is "
            f"nothing to train. To train further, raise trainer.max_steps (e.g. --trainer.max_steps={2 * step}) "
            f"and resume with --ckpt_path last.")


def checkpoint_step(path: Path) -> int | None:
    """The ``global_step`` a checkpoint holds (None: unreadable). Cheap: tensors are mmapped, not read."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("global_step", 0))
    except Exception:  # noqa: BLE001 - unreadable checkpoints are reported by checkpoint_problem
        return None


def run_of_checkpoint(path: Path) -> Path | None:
    """The run directory a checkpoint file belongs to (``<run>/checkpoints/<file>``), else None."""
    path = Path(path).resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else None


def newest_state(run_dir: Path) -> tuple[Path, int] | None:
    """The run's newest trained state: the readable checkpoint (``last.ckpt`` included) with the highest step."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    found = []
    last = last_checkpoint_in(ckpt_dir)
    if last is not None and (step := checkpoint_step(last)) is not None:
        found.append((last, step))
    if (step_file := newest_readable_checkpoint(ckpt_dir)) is not None:
        found.append(step_file)
    return max(found, key=lambda f: f[1]) if found else None


def branch_name(run: RunConfig, step: int) -> str:
    """The run name suggested for a branch of ``run`` from ``step``."""
    return f"{run.name}-from-step{step}"


def older_state_problem(run: RunConfig, path: Path) -> str | None:
    """Why resuming the step file ``path`` of ``run`` inside ``run.dir`` would lose data (None: it would not):
    the run trained past it, so ``last.ckpt`` and ``metrics.csv`` hold a later history a resume there
    would overwrite and mix. The fix named is a branch: the same checkpoint into a new run."""
    step = checkpoint_step(path)
    newest = newest_state(run.dir)
    if step is None or newest is None or newest[1] <= step:
        return None
    branch = Path(run.root) / branch_name(run, step)
    return (f"--ckpt_path {path} holds step {step}, but {run.dir} trained on to step {newest[1]} ({newest[0]}): "
            f"resuming it there would overwrite {run.dir / 'checkpoints' / 'last.ckpt'} and add a second history to "
            f"its metrics.csv. Branch it into a new run instead (the parent stays as it is; both runs record the "
            f"branch):\n  --run.name {branch.name} --ckpt_path {path}")


def newest_readable_checkpoint(ckpt_dir: Path, exclude: tuple[Path, ...] = ()) -> tuple[Path, int] | None:
    """The readable checkpoint in ``ckpt_dir`` with the highest global step (``last*.ckpt`` excluded)."""
    if not ckpt_dir.is_dir():
        return None
    skip = {p.resolve() for p in exclude}
    candidates = [p for p in ckpt_dir.glob("*.ckpt")
                  if p.is_file() and not _LAST_RE.match(p.name) and p.resolve() not in skip]

    def order(p: Path) -> tuple[int, float]:
        m = _STEP_RE.search(p.stem)
        return (int(m.group(1)) if m else -1, p.stat().st_mtime)

    for path in sorted(candidates, key=order, reverse=True):
        if checkpoint_problem(path) is None:
            ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
            return path, int(ckpt.get("global_step", order(path)[0]))
    return None


def _instead(ckpt_dir: Path, exclude: tuple[Path, ...]) -> str:
    found = newest_readable_checkpoint(ckpt_dir, exclude)
    if found is None:
        return (f"No other readable checkpoint in {ckpt_dir}: start afresh with --run.overwrite true "
                f"(the old run is moved aside) or another --run.name.")
    path, step = found
    return f"The newest readable checkpoint is {path} (global step {step}): pass --ckpt_path {path}"


def last_checkpoint(run: RunConfig) -> Path | None:
    """What Lightning's ``--ckpt_path last`` picks: the newest ``last*.ckpt`` in the run's checkpoints."""
    return last_checkpoint_in(run.dir / "checkpoints")


def last_checkpoint_in(ckpt_dir: Path) -> Path | None:
    """The newest ``last*.ckpt`` in ``ckpt_dir`` (None: there is none)."""
    found = [p for p in ckpt_dir.glob("last*.ckpt") if _LAST_RE.match(p.name)] if ckpt_dir.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def check_resume_checkpoint(run: RunConfig, ckpt_path: str | None) -> None:
    """Refuse a ``--ckpt_path`` that cannot be loaded, naming the newest readable checkpoint instead."""
    if not ckpt_path or ckpt_path in ("best", "hpc", "registry") or "://" in str(ckpt_path):
        return
    ckpt_dir = run.dir / "checkpoints"
    if ckpt_path == "last":
        path = last_checkpoint(run)
        if path is None:
            if never_trained(run.dir):
                raise RunDirError(f"--ckpt_path last: {run.dir} holds no checkpoint: an earlier start stopped before "
                                  f"its first step, so nothing was trained. Start the run again: leave out --ckpt_path.")
            if run_contents(run.dir):  # Lightning would warn and start from scratch inside the old run
                raise RunDirError(f"--ckpt_path last: {run.dir} holds a run ({', '.join(run_contents(run.dir))}) "
                                  f"but {ckpt_dir / 'last.ckpt'} does not exist. " + _instead(ckpt_dir, ()))
            # Lightning would train from step 0 (with a hint about save_last): a typo in --run.name
            # would silently start a new run instead of continuing the old one
            runs = sorted(Path(p).parent.parent.name for p in Path(run.root).glob("*/checkpoints/last.ckpt"))
            shown = f" Runs under {run.root} that can resume: {', '.join(runs[:8])}{', ...' if len(runs) > 8 else ''}." \
                if runs else ""
            raise RunDirError(f"--ckpt_path last: there is no run {run.name!r} to resume ({run.dir} holds no "
                              f"checkpoint).{shown} To start the run, leave out --ckpt_path.")
        problem = checkpoint_problem(path)
        if problem:
            raise RunDirError(f"--ckpt_path last: {path} is unreadable ({problem}). " + _instead(ckpt_dir, (path,)))
        return
    path = Path(ckpt_path)
    if not path.is_file():
        raise RunDirError(f"--ckpt_path {ckpt_path}: no such file; pass a checkpoint file, or 'last' to resume "
                          f"{run.dir / 'checkpoints' / 'last.ckpt'}")
    problem = checkpoint_problem(path)
    if problem:
        raise RunDirError(f"--ckpt_path {path} is unreadable ({problem}). " + _instead(path.parent, (path,)))


def check_before_fit(run: RunConfig, ckpt_path: str | None) -> None:
    """Everything ``fit`` refuses before any work: run root not writable, run dir in use by a live
    process, run dir already holding a run (unless resuming or ``run.overwrite``), an unreadable
    ``--ckpt_path``. Changes nothing on disk."""
    _refuse_unwritable_run_dir(run)
    holder = RunLock.holder(run.dir)
    if holder is not None:
        raise RunLockedError(_locked_message(run.dir, run.dir / LOCK_FILE))
    contents = held_run(run.dir)
    if run.overwrite and ckpt_path:
        inside = ckpt_path == "last" or run.dir.resolve() in Path(ckpt_path).resolve().parents
        if inside and contents:
            raise RunDirError(f"--run.overwrite true moves {run.dir} aside and starts afresh, --ckpt_path "
                              f"{ckpt_path} resumes from that run: pass one of them, not both.")
    if contents and ckpt_path and ckpt_path != "last" and not run.overwrite \
            and run.dir.resolve() not in Path(ckpt_path).resolve().parents:
        raise RunDirError(f"--ckpt_path {ckpt_path} is not a checkpoint of {run.dir}, which already holds a run; "
                          "resuming it there would mix two runs. Resume it under its own --run.name, or start "
                          "from it in a new, empty --run.name.")
    if contents and ckpt_path and ckpt_path != "last" and not run.overwrite and Path(ckpt_path).is_file() \
            and run.dir.resolve() in Path(ckpt_path).resolve().parents:
        if (problem := older_state_problem(run, Path(ckpt_path))) is not None:
            raise RunDirError(problem)
    if contents and not ckpt_path and not run.overwrite:
        shown = ", ".join(contents[:6]) + (", ..." if len(contents) > 6 else "")
        raise RunDirError(f"{run.dir} already holds a run ({shown}); fit will not mix a second run into it. "
                          + _ways_on(run))
    check_resume_checkpoint(run, ckpt_path)


def move_aside(run_dir: Path) -> Path:
    """Rename ``run_dir`` to ``<run_dir>.old-<UTC time>`` (a free name) and return the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
    n = 1
    while aside.exists():
        aside = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{n}")
        n += 1
    os.rename(run_dir, aside)
    return aside


def start_run(run: RunConfig, ckpt_path: str | None) -> RunLock:
    """Take the run directory for this process: move an old run aside if ``run.overwrite``, lock the
    directory for the run's life, check again that no other run slipped in since
    :func:`check_before_fit`, and remove temp files that dead writers left behind."""
    resume = bool(ckpt_path)
    if run.overwrite and held_run(run.dir):  # check_before_fit refused resuming from inside it
        old = RunLock(run.dir).acquire()  # nobody may be writing the run we move
        try:
            aside = move_aside(run.dir)
        finally:
            old.release()
        print(f"run.overwrite: moved the old run {run.dir} aside to {aside} (nothing deleted)", file=sys.stderr)
    lock = RunLock(run.dir).acquire()
    if not resume or ckpt_path != "last":
        reuse_untrained(run.dir)
    contents = held_run(run.dir)
    if contents and not resume:
        lock.release()
        raise RunDirError(f"{run.dir} already holds a run ({', '.join(contents)}), written since this fit "
                          f"started; fit will not mix a second run into it. " + _ways_on(run))
    clean_stale_temps(run.dir / "checkpoints")
    if ckpt_path and ckpt_path != "last" and not contents:
        record_branch(run, Path(ckpt_path))
    return lock


BRANCH_FILE = "branch.json"  #: in a branch: where it came from
BRANCHES_FILE = "branches.json"  #: in a parent: the runs branched from its checkpoints


def record_branch(run: RunConfig, ckpt: Path) -> None:
    """A fit that starts an empty run directory from a checkpoint is a branch: ``branch.json`` in it
    names the checkpoint, its step and its run; that run's ``branches.json`` lists its branches. The
    parent's checkpoints, ``metrics.csv`` and ``bias.jsonl`` are never touched."""
    parent = run_of_checkpoint(ckpt)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    entry = {"checkpoint": str(Path(ckpt).resolve()), "global_step": checkpoint_step(ckpt), "created": stamp}
    write_json_atomic(run.dir / BRANCH_FILE, {**entry, "parent_run": str(parent) if parent else None})
    if parent is None or not (parent / "checkpoints").is_dir():
        return
    path = parent / BRANCHES_FILE
    try:
        branches = json.loads(path.read_text()) if path.is_file() else []
        branches = [b for b in branches if b.get("run") != str(run.dir.resolve())]  # a restarted branch: once
        branches.append({**entry, "run": str(run.dir.resolve())})
        write_json_atomic(path, branches)
    except (OSError, ValueError) as err:  # a read-only parent: the branch still records where it came from
        print(f"warning: could not record this branch in {path} ({err}); {run.dir / BRANCH_FILE} records it",
              file=sys.stderr)


# ------------------------------------------------------------------ atomic checkpoints


def clean_stale_temps(directory: Path) -> list[Path]:
    """Remove the temp files of atomic writes (``.<name>.tmp-<pid>``, :func:`data_prep.fileio.temp_path`)
    in ``directory`` whose writer is dead; return what went."""
    removed = []
    if not Path(directory).is_dir():
        return removed
    for p in Path(directory).glob(f".*{TMP_MARK}*"):
        temp = parse_temp(p)
        # called at start, before this process writes any checkpoint: a temp with our own pid is a
        # leftover of an earlier process that had the same pid (containers often start at pid 1)
        if temp is None or (temp[1] != os.getpid() and pid_alive(temp[1])):
            continue
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with an atomic ``torch.save`` for local paths: to a temp file in the
    checkpoint's own directory, fsynced, then renamed over it (:func:`data_prep.fileio.atomic_write`).

    Lightning's own save streams through fsspec, whose temp file lives in ``$TMPDIR``: when the run
    directory is on another filesystem the final step is a copy, and a kill or full disk during it
    leaves a partial file under the checkpoint's name (and the temp file in ``$TMPDIR``).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        try:
            with atomic_write(path, "wb") as f:
                torch.save(checkpoint, f)
        except (OSError, RuntimeError) as err:  # torch reports a full disk as "unexpected pos" (a RuntimeError)
            if not _disk_full(err):
                raise
            raise CheckpointWriteError(
                f"the disk holding {Path(path).parent} is full: checkpoint {Path(path).name} was not written (the "
                f"previous checkpoints are whole; nothing partial is left). Free space there, then continue with "
                f"--ckpt_path last") from err


class CheckpointWriteError(RunDirError):
    """A checkpoint could not be written (disk full); the previous ones are intact."""


def _disk_full(err: BaseException) -> bool:
    """True if ``err`` or an exception behind it is ENOSPC (torch wraps it in a RuntimeError)."""
    import errno

    while err is not None:
        if getattr(err, "errno", None) == errno.ENOSPC or "No space left" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False
