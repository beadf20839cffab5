"""``python -m train fit|validate --config NAME``: LightningCLI with config lookup in ``<repo>/configs/``."""
from __future__ import annotations

import os
import re
import sys
import traceback
from datetime import datetime, timezone
from pathlib import Path

import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from train.data import WebDataModule
from train.models import REPO_ROOT
from train.module import CLIPModule
from train.resume import ResumeMismatchError, refuse_changed_history
from train.run_dir import (
    AtomicCheckpointIO, RunConfig, RunDirError, RunLock, build_checkpoint_callback, build_loggers, check_before_fit,
    check_resume_checkpoint, finished_message, is_launching_process, last_checkpoint, start_run,
)

CONFIG_DIR = REPO_ROOT / "configs"
DEFAULT_CONFIG = "quickstart.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
# jsonargparse prints the whole option list (~80 lines) as "usage" before every error; a short usage
# keeps the error itself in view. `--help` still lists every option.
SUBCOMMAND_USAGE = "%(prog)s [--config NAME] [--SECTION.KEY VALUE ...]"
SIGTERM_EXIT = 143  # 128 + SIGTERM, as a shell reports a process the signal ended: stopped, not finished
TRACEBACK_ENV = "CLIP_BIAS_LAB_TRACEBACK"  # set to 1 to see the traceback behind a one-line error


class ConfigError(ValueError):
    """A config value was refused when its class was built; the message names the config path."""


def list_configs() -> list[str]:
    """Config names usable with ``--config NAME``: base configs, then overlays (``mitigation/...``)."""
    names = [p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml")]
    return sorted(names, key=lambda n: ("/" in n, n))


def is_overlay(path: str) -> bool:
    """A config in a subfolder of ``configs/`` (``mitigation/...``): it changes a base config, it is none."""
    try:
        return len(Path(path).resolve().relative_to(CONFIG_DIR.resolve()).parts) > 1
    except ValueError:
        return False


def find_config(value: str) -> str:
    """An existing path is used as is; otherwise ``configs/<value>`` (``.yaml`` optional)."""
    if Path(value).exists():
        return value
    for candidate in (CONFIG_DIR / value, CONFIG_DIR / f"{value}.yaml"):
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"--config {value!r} is neither a file nor a config in {CONFIG_DIR}; available: {', '.join(list_configs())}"
    )


def resolve_config_args(argv: list[str]) -> list[str]:
    """Rewrite ``--config NAME`` to a path and inject the quickstart config when none is given."""
    out: list[str] = []
    i, seen_config = 0, False
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-c") and i + 1 < len(argv):
            out += [arg, find_config(argv[i + 1])]
            seen_config = True
            i += 2
            continue
        if arg.startswith("--config="):
            out.append("--config=" + find_config(arg.split("=", 1)[1]))
            seen_config = True
        else:
            out.append(arg)
        i += 1
    if not seen_config and out and out[0] in SUBCOMMANDS and not {"-h", "--help"} & set(out):
        out[1:1] = ["--config", str(CONFIG_DIR / DEFAULT_CONFIG)]
    configs = [out[k + 1] for k, a in enumerate(out[:-1]) if a in ("--config", "-c")]
    configs += [a.split("=", 1)[1] for a in out if a.startswith("--config=")]
    if configs and all(is_overlay(c) for c in configs):
        shown = " ".join(f"--config {Path(c).resolve().relative_to(CONFIG_DIR.resolve()).as_posix()}" for c in configs)
        raise ConfigError(f"{shown} only changes a base config; add one first, e.g. "
                          f"--config {DEFAULT_CONFIG} {shown}")
    return out


def _exception_chain(err: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        chain.append(err)
        seen.add(id(err))
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return chain


def _raised_by(err: BaseException, package: str) -> bool:
    frames = list(traceback.walk_tb(err.__traceback__))
    return bool(frames) and frames[-1][0].f_globals.get("__name__", "").startswith(package)


def _failing_class(err: BaseException) -> type | None:
    """The class whose construction raised ``err``: the innermost ``class_type`` jsonargparse or
    LightningCLI was instantiating, else the innermost ``__init__``/``__post_init__``'s class."""
    frames = [frame for frame, _ in traceback.walk_tb(err.__traceback__)]
    for frame in reversed(frames):
        if isinstance(frame.f_locals.get("class_type"), type):
            return frame.f_locals["class_type"]
    for frame in frames:
        if frame.f_code.co_name in ("__init__", "__post_init__") and "self" in frame.f_locals:
            return type(frame.f_locals["self"])
    return None


def _class_paths(value, cls_path: str, where: str):
    """Config paths (``trainer.callbacks[0]``) under ``where`` whose ``class_path`` is ``cls_path``."""
    if hasattr(value, "items"):
        if value.get("class_path") == cls_path:
            yield where
        for key, sub in value.items():
            if key not in ("class_path", "__path__"):
                yield from _class_paths(sub, cls_path, f"{where}.{key}" if where else str(key))
    elif isinstance(value, (list, tuple)):
        for i, sub in enumerate(value):
            yield from _class_paths(sub, cls_path, f"{where}[{i}]")


class ClipCLI(LightningCLI):
    """LightningCLI plus the ``run`` section: run directory, lock, atomic checkpoints, loggers."""

    _run_lock: RunLock | None = None

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(RunConfig, "run")

    def before_instantiate_classes(self) -> None:
        """One seed unless set apart: ``data.seed`` None → ``seed_everything``'s (written into config.yaml).
        The training stream is reseeded at every checkpoint (``data.segment_batches``), so a resume
        from any checkpoint skips nothing, and from any other step skips less than one interval."""
        section = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        data = section.get("data")
        if data is None or not hasattr(data, "get"):
            return
        seed = section.get("seed_everything")
        if data.get("seed") is None and isinstance(seed, int) and not isinstance(seed, bool):
            data["seed"] = seed
        run, trainer = section.get("run"), section.get("trainer") or {}
        every = run.get("checkpoint_every_n_steps") if run is not None else None
        if data.get("segment_batches", "absent") is None and isinstance(every, int) and every > 0:
            accumulate = trainer.get("accumulate_grad_batches") or 1
            data["segment_batches"] = every * (accumulate if isinstance(accumulate, int) and accumulate > 0 else 1)

    def _run_config(self) -> RunConfig:
        run = self._get(self.config_init, "run")
        return run if isinstance(run, RunConfig) else RunConfig(**dict(run))

    def parse_arguments(self, parser, args) -> None:
        """Parse, then refuse what cannot work before anything is built or loaded (LightningCLI loads
        an explicit ``--ckpt_path`` for its hyperparameters right after this; ViT-B-32 takes ~17 s to build)."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand is None:
            return
        section = self.config[subcommand]
        try:
            run = RunConfig(**section["run"].as_dict())
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if not is_launching_process():  # ranks a DDP launcher spawned: the launching process checked
            return
        if subcommand == "fit":
            check_before_fit(run, section.get("ckpt_path"))
        else:  # validate/test/predict: no run-dir rule, but an unreadable checkpoint is still named
            check_resume_checkpoint(run, section.get("ckpt_path"))

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ConfigError:
            raise
        except ValueError as err:
            raise self._config_error(err) from err

    def _config_error(self, err: ValueError) -> ConfigError:
        """One line naming the config path of the class that refused its arguments, and its reason."""
        chain = _exception_chain(err)
        cause = next((e for e in chain if isinstance(e, ValueError) and not _raised_by(e, "jsonargparse")), err)
        cls = _failing_class(cause) or _failing_class(err)
        problem = " ".join(str(cause).split()) or type(cause).__name__
        if cls is None:
            return ConfigError(f"invalid config: {problem}")
        qualname = f"{cls.__module__}.{cls.__qualname__}"
        section = self.config.get(str(self.subcommand), self.config)
        paths = list(_class_paths(section, qualname, ""))
        if not paths:
            known = {"model": self._model_class, "data": self._datamodule_class, "run": RunConfig,
                     "trainer": self.trainer_class}
            paths = [key for key, base in known.items() if isinstance(base, type) and issubclass(cls, base)]
        # "BiasEvalCallback: x" / "BiasEvalCallback (its own idea of the path): x" -> "x"
        problem = re.sub(rf"^{re.escape(cls.__name__)}(\s*\([^)]*\))?:\s*", "", problem)
        return ConfigError(f"{' or '.join(paths) or 'config'} ({qualname}): {problem}")

    def instantiate_trainer(self, **kwargs):
        run = self._run_config()
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        ckpt_path = self._get(self.config, "ckpt_path", default=None)
        # Only fit continues a run's record; validate/test/predict append to metrics.csv and leave the
        # run's config.yaml (the fit's) alone.
        fit = self.subcommand == "fit"
        resume = bool(ckpt_path) or not fit
        if not fit:
            self.save_config_callback = None
        elif ckpt_path:  # config.yaml stays the config the run started with; each resume keeps its own
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": f"config.resume-{stamp}.yaml"}
        if fit and is_launching_process() and self._run_lock is None:
            self._run_lock = start_run(run, ckpt_path)  # held until fit ends (see _run_subcommand)
        try:
            callbacks = list(trainer_cfg.get("callbacks") or [])
            callbacks.append(build_checkpoint_callback(run))
            from train.data_stats import DataStatsLogger  # data/<reason> metrics, beside the data module
            if not any(isinstance(c, DataStatsLogger) for c in callbacks):
                callbacks.append(DataStatsLogger())
            if trainer_cfg.get("enable_progress_bar", True) is not False:
                callbacks.append(RichProgressBar())
            if trainer_cfg.get("logger", True) is not False:
                kwargs.setdefault("logger", build_loggers(run, resume))
            kwargs.setdefault("default_root_dir", str(run.dir))
            kwargs["callbacks"] = callbacks
            plugins = trainer_cfg.get("plugins")
            plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
            if not any(isinstance(p, CheckpointIO) for p in plugins):
                plugins.append(AtomicCheckpointIO())  # every checkpoint: temp file beside it, then rename
            kwargs["plugins"] = plugins
            return super().instantiate_trainer(**kwargs)
        except BaseException:
            self._release_run_lock()
            raise

    def before_fit(self) -> None:
        """Refuse a resume that would change the run's history before ``fit`` writes anything."""
        ckpt_path = self._get(self.config, "ckpt_path", default=None)
        if not ckpt_path or not is_launching_process():
            return
        path = last_checkpoint(self._run_config()) if ckpt_path == "last" else Path(ckpt_path)
        if path is not None and path.is_file():
            refuse_changed_history(str(path), self.model, self.trainer, self.datamodule)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            ckpt_path = self._get(self.config, "ckpt_path", default=None)
            if subcommand == "fit" and ckpt_path:  # every rank: one that went on would wait for the others
                path = last_checkpoint(self._run_config()) if ckpt_path == "last" else Path(ckpt_path)
                message = finished_message(path, self.trainer.max_steps) if path is not None else None
                if message:
                    print(message, file=sys.stderr)
                    return
            super()._run_subcommand(subcommand)
        finally:
            self._release_run_lock()

    def _release_run_lock(self) -> None:
        if self._run_lock is not None:
            self._run_lock.release()
            self._run_lock = None


def main(argv: list[str] | None = None) -> ClipCLI:
    """Entry point of ``python -m train``."""
    from_command_line = argv is None
    try:
        args = resolve_config_args(list(sys.argv[1:] if argv is None else argv))
    except (ConfigError, FileNotFoundError) as err:
        if not from_command_line or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if from_command_line:  # LightningCLI warns when given args beside a non-empty sys.argv
        sys.argv[1:], args = args, None
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    try:
        return ClipCLI(
            CLIPModule,
            WebDataModule,
            args=args,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={
                "parser_mode": "yaml",
                "prog": "python -m train",
                "description": "Train a CLIP from scratch (open_clip + Lightning). --config NAME is looked up in "
                "configs/ (default quickstart.yaml). Export a checkpoint to plain open_clip with "
                "'python -m train export CKPT OUT.pt'.",
                **{sub: {"usage": SUBCOMMAND_USAGE} for sub in SUBCOMMANDS},
            },
        )
    except SIGTERMException:
        # Lightning stopped after the batch it was in; RunCheckpoint saved last.ckpt there.
        print("stopped by SIGTERM: last.ckpt holds the last finished step; continue with --ckpt_path last",
              file=sys.stderr)
        raise SystemExit(SIGTERM_EXIT) from None
    except (ConfigError, RunDirError, ResumeMismatchError) as err:
        # From the shell: one readable error, no traceback (set CLIP_BIAS_LAB_TRACEBACK=1 for it).
        # In-process callers (tests, notebooks) get the exception itself.
        if not from_command_line or os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
