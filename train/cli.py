"""``python -m train fit|validate --config NAME``: LightningCLI with config lookup in ``<repo>/configs/``."""
from __future__ import annotations

import logging
import os
import re
import sys
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from data_prep.checks import is_int
from data_prep.shell import traceback_wanted
from train.data import WebDataModule, count_samples, expand_shards
from train.data_samples import NoUsableSamplesError
from train.models import REPO_ROOT
from train.module import CLIPModule
from train.progress import ModelSummaryNoFlops, StepProgressBar
from train.resume import ResumeMismatchError, refuse_changed_history
from train.run_dir import (
    AtomicCheckpointIO, RunConfig, RunDirError, RunLock, build_checkpoint_callback, build_loggers, check_before_fit,
    check_resume_checkpoint, finished_message, is_launching_process, label_rows_by_global_step, last_checkpoint,
    start_run,
)

CONFIG_DIR = REPO_ROOT / "configs"
DEFAULT_CONFIG = "quickstart.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
# jsonargparse prints the whole option list (~80 lines) as "usage" before every error; a short usage
# keeps the error itself in view. `--help` still lists every option.
SUBCOMMAND_USAGE = "%(prog)s [--config NAME] [--SECTION.KEY VALUE ...]"
SIGTERM_EXIT = 143  # 128 + SIGTERM, as a shell reports a process the signal ended: stopped, not finished
HELP_FLAGS = ("-h", "--help")
#: messages of the happy path that say nothing about this run, each matched exactly
NOISE_LOGS = (
    r"^💡 Tip: .*litlogger",  # Lightning advertising its cloud logger at every fit
    # the CLI registers ModelSummaryNoFlops on purpose
    r"^Trainer already configured with model summary callbacks: \[<class 'train\.progress\.ModelSummaryNoFlops'>\]",
)
NOISE_WARNINGS = (
    # torch deprecates LeafSpec, Lightning 2.6 still calls it: nothing the user can change
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # WebDataModule sizes every worker's share itself (with_epoch per worker), so __len__ is exact
    (r"Your `IterableDataset` has `__len__` defined", UserWarning),
    # only a resume meets its own checkpoints: the run-dir rule refuses a fresh fit in a used directory
    (r"Checkpoint directory .* exists and is not empty", UserWarning),
)
_NOISE_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


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
    for config in configs:
        if (error := yaml_syntax_error(config)) is not None:
            raise error
    if configs and all(is_overlay(c) for c in configs):
        shown = " ".join(f"--config {Path(c).resolve().relative_to(CONFIG_DIR.resolve()).as_posix()}" for c in configs)
        raise ConfigError(f"{shown} only changes a base config; add one first, e.g. "
                          f"--config {DEFAULT_CONFIG} {shown}")
    return out


class _DropMessages(logging.Filter):
    """Drops log records whose message matches one of ``patterns``; lets everything else through."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(p.search(record.getMessage()) for p in self.patterns)


def quiet_known_noise() -> None:
    """Silence the exact happy-path messages in :data:`NOISE_LOGS` / :data:`NOISE_WARNINGS`; other
    warnings stay. Idempotent."""
    for name in _NOISE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(NOISE_LOGS))
    for message, category in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def _shard_patterns(data) -> list[tuple[str, object]]:
    """``(config path, shard pattern)`` of every shard set in ``data``: train, each train source, val."""
    sources = data.get("train_sources")
    listed = [(f"train_sources[{i}].shards", entry.get("shards")) for i, entry in enumerate(sources)
              if hasattr(entry, "get")] if isinstance(sources, (list, tuple)) else []
    return [("train_shards", data.get("train_shards")), *listed, ("val_shards", data.get("val_shards"))]


def missing_shards_error(section) -> ConfigError | None:
    """One error naming missing local ``data.train_shards`` / ``data.val_shards`` and the command that
    downloads LAION shards, checked from the config alone (before the model is built)."""
    data = section.get("data") if hasattr(section, "get") else None
    if data is None or not hasattr(data, "get"):
        return None
    for key, pattern in _shard_patterns(data):
        if not pattern or (key == "train_shards" and data.get("synthetic") is not None):
            continue
        try:
            urls = expand_shards(pattern)
        except ValueError as err:
            return ConfigError(f"data.{key}: {err}")
        local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
        missing = [u for u in local if not os.path.exists(u)]
        if not urls or missing:
            shown = (f"{len(missing)} of {len(urls)} shards are missing ({missing[0]}"
                     f"{', ...' if len(missing) > 1 else ''})" if urls else "the pattern expands to no files")
            folder = Path(missing[0]).parent if missing else Path("DIR")
            return ConfigError(
                f"data.{key}: {shown}.\nDownload LAION-style shards with `python -m data_prep laion --parquet "
                f"PARQUET --out {folder}{_image_size_flag(section)}` (PARQUET: a file with url and caption columns; "
                f"needs pip install -e '.[laion]', see docs/real_data.md) and point data.{key} at what it writes, "
                f"or train on the rendered corpus: --config {DEFAULT_CONFIG}")
    return None


def world_size_of(trainer) -> int:
    """Ranks the trainer config asks for (``devices`` × ``num_nodes``); 1 where ``devices`` is not a count."""
    devices, nodes = trainer.get("devices"), trainer.get("num_nodes") or 1
    count = devices if is_int(devices) and devices > 0 else len(devices) if isinstance(devices, (list, tuple)) else 1
    return count * (nodes if is_int(nodes) and nodes > 0 else 1)


def epoch_size_error(section) -> ConfigError | None:
    """``data.train_shards`` whose samples cannot be counted (no ``sizes.json``, ``pipe:`` or remote URLs)
    without ``data.samples_per_epoch``, or an epoch smaller than one batch: checked from the config,
    before the model is built (the data module would find out after)."""
    data, trainer = section.get("data"), section.get("trainer") or {}
    if not hasattr(data, "get") or data.get("samples_per_epoch") is not None:
        return None
    if data.get("synthetic") is not None:
        spec = data.get("synthetic")
        n, where = (spec.get("num_samples") if hasattr(spec, "get") else None), "data.synthetic.num_samples"
    elif data.get("train_shards") or data.get("train_sources"):
        patterns = [p for key, p in _shard_patterns(data) if key != "val_shards" and p]
        try:
            urls = [url for p in patterns for url in expand_shards(p)]
        except (ValueError, TypeError):
            return None  # reported by missing_shards_error or the data module's own checks
        where = "data.train_shards" if data.get("train_shards") else "data.train_sources"
        n = count_samples(urls)
        if n is None and urls:
            remote = [u for u in urls if "://" in u or u.startswith("pipe:")]
            why = (f"{len(remote)} of {len(urls)} shards are pipe: or remote URLs" if remote else
                   f"no sizes.json or *_stats.json beside {urls[0]}")
            return ConfigError(f"{where}: cannot count the training samples ({why}), so an epoch has no "
                               f"length: set data.samples_per_epoch=N (the samples in one pass over the shards)")
    else:
        return None
    batch, world = data.get("batch_size"), world_size_of(trainer)
    if is_int(n) and is_int(batch) and batch > 0 and n < batch * world:
        return ConfigError(f"data.batch_size={batch}: one batch ({batch} x {world} rank(s)) is more than the {n} samples "
                           f"of {where}; lower data.batch_size to at most {max(n // world, 1)}")
    return None


def train_sources_error(section) -> ConfigError | None:
    """A malformed ``data.train_sources`` (names, weights, keys), refused before anything is built."""
    from train.data_mix import source_problems

    data = section.get("data")
    sources = data.get("train_sources") if hasattr(data, "get") else None
    problems = source_problems(sources) if sources is not None else []
    return ConfigError("; ".join(problems)) if problems else None


def micro_batch_error(section) -> ConfigError | None:
    """``model.accumulate_contrastive`` larger than ``data.batch_size`` (no sample for some micro-batch),
    refused before the model is built rather than at the first step."""
    from train.contrastive_cache import check_batch

    model, data = section.get("model"), section.get("data")
    k = model.get("accumulate_contrastive") if hasattr(model, "get") else None
    batch = data.get("batch_size") if hasattr(data, "get") else None
    if is_int(k) and is_int(batch) and batch > 0:
        try:
            check_batch(k, batch)
        except ValueError as err:
            return ConfigError(str(err))
    return None


def model_name_error(section) -> ConfigError | None:
    """An unknown ``model.model_name``, named with the valid ones (the model's own check, run early)."""
    from eval.models import check_model_name

    model = section.get("model")
    name = model.get("model_name") if hasattr(model, "get") else None
    if not isinstance(name, str):
        return None
    try:
        check_model_name(name)
    except ValueError as err:
        return ConfigError(f"model.model_name: {err}")
    return None


def accelerator_error(section) -> ConfigError | None:
    """``trainer.accelerator`` naming a device this machine lacks (Lightning raises it as a traceback)."""
    trainer = section.get("trainer") or {}
    accelerator = str(trainer.get("accelerator") or "auto").lower()
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        return ConfigError(f"trainer.accelerator={accelerator}: this machine has no usable CUDA GPU "
                           f"(torch {torch.__version__}, torch.cuda.is_available() is False); use "
                           f"--trainer.accelerator=cpu, or auto to take a GPU where there is one")
    if accelerator == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        return ConfigError("trainer.accelerator=mps: this machine has no Apple GPU; use --trainer.accelerator=cpu or auto")
    return None


def yaml_syntax_error(path: str) -> ConfigError | None:
    """A config file that is not valid YAML, named with its own path (jsonargparse says ``<unicode string>``)."""
    import yaml

    try:
        yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        return ConfigError(f"--config {path}:{where}: not valid YAML ({problem})")
    except (OSError, UnicodeDecodeError) as err:
        return ConfigError(f"--config {path}: cannot read it ({err})")
    return None


def schedule_problems(section) -> tuple[list[str], list[str]]:
    """(errors, warnings) of ``trainer.max_steps`` against the LR schedule, from the config alone.

    Errors: ``max_steps`` 0 or below -1 (nothing to train), or -1 (no limit) with nothing else that
    sizes the cosine schedule. Warning: ``model.warmup_steps`` > ``max_steps`` with no explicit
    ``model.total_steps`` (an explicit one is checked by the model): the LR never reaches ``model.lr``."""
    trainer, model = section.get("trainer"), section.get("model")
    if not hasattr(trainer, "get") or not hasattr(model, "get"):
        return [], []
    max_steps, max_epochs = trainer.get("max_steps"), trainer.get("max_epochs")
    total, warmup = model.get("total_steps"), model.get("warmup_steps")
    if not is_int(max_steps):
        return [], []
    if max_steps == 0 or max_steps < -1:
        return [f"trainer.max_steps={max_steps} trains nothing: set it to the number of optimizer steps to run "
                f"(> 0), or -1 with trainer.max_epochs"], []
    if max_steps == -1:
        if total is None and not (is_int(max_epochs) and max_epochs > 0):
            return [f"trainer.max_steps=-1 sets no step limit and trainer.max_epochs={max_epochs} none either, so "
                    f"the cosine schedule has no length: set trainer.max_steps > 0, or trainer.max_epochs > 0 (or "
                    f"model.total_steps)"], []
        return [], []
    if total is None and is_int(warmup) and warmup > max_steps and section.get("ckpt_path") is None:
        lr = model.get("lr")
        peak = f" (it ends at {max_steps}/{warmup} x model.lr = {lr * max_steps / warmup:g})" if isinstance(lr, float) else ""
        return [], [f"model.warmup_steps={warmup} > trainer.max_steps={max_steps}: the LR rises for the whole run "
                    f"and never reaches model.lr{peak}; lower model.warmup_steps or raise trainer.max_steps"]
    return [], []


def _image_size_flag(section) -> str:
    """`` --image-size N`` for the configured model (from its JSON config; nothing is built)."""
    model = section.get("model")
    name = model.get("model_name") if hasattr(model, "get") else None
    try:
        from eval.models import model_config

        size = (model_config(name) or {}).get("vision_cfg", {}).get("image_size")
    except Exception:  # noqa: BLE001 - an unknown model is reported by the model's own check
        return ""
    return f" --image-size {size}" if isinstance(size, int) else ""


def help_config_args(args: list[str]) -> tuple[list[str], list[str]]:
    """For ``SUBCOMMAND [--config NAME ...] --help``: the arguments without the ``--config`` pairs,
    and the config files whose values ``--help`` should show as defaults (the default config when
    none is given, as ``fit`` without ``--config`` trains it)."""
    if not args or args[0] not in SUBCOMMANDS or not set(HELP_FLAGS) & set(args):
        return args, []
    rest, configs, i = [], [], 0
    while i < len(args):
        if args[i] in ("--config", "-c") and i + 1 < len(args):
            configs.append(args[i + 1])
            i += 2
            continue
        if args[i].startswith("--config="):
            configs.append(args[i].split("=", 1)[1])
        else:
            rest.append(args[i])
        i += 1
    return rest, configs or [str(CONFIG_DIR / DEFAULT_CONFIG)]


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
        if data.get("seed") is None and is_int(seed):
            data["seed"] = seed
        run, trainer = section.get("run"), section.get("trainer") or {}
        every = run.get("checkpoint_every_n_steps") if run is not None else None
        if data.get("segment_batches", "absent") is None and is_int(every) and every > 0:
            accumulate = trainer.get("accumulate_grad_batches") or 1
            data["segment_batches"] = every * (accumulate if is_int(accumulate) and accumulate > 0 else 1)

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
        for check in (train_sources_error, missing_shards_error, model_name_error, accelerator_error) + \
                ((epoch_size_error, micro_batch_error) if subcommand == "fit" else ()):
            if (error := check(section)) is not None:
                raise error
        if subcommand == "fit":
            errors, notes = schedule_problems(section)
            if errors:
                raise ConfigError("; ".join(errors))
            for note in notes:
                print(f"warning: {note}", file=sys.stderr)

    def _parse_ckpt_path(self) -> None:
        """``fit``: today's config builds the model, whatever ``--ckpt_path`` names (a file, ``last``, another
        run's file), so that the history check (:func:`train.resume.refuse_changed_history`) compares the
        checkpoint with what the user asked for and refuses or prints "applying changed ...". Lightning's
        own version replaces ``model.*`` with the checkpoint's values for an explicit file only, so a
        changed ``model.model_name`` or ``model.lr`` was silently dropped there. Other subcommands keep
        Lightning's (they evaluate the checkpoint's model)."""
        if self.config.get("subcommand") != "fit":
            super()._parse_ckpt_path()

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
            # defaults a config may replace with its own bar or summary
            if trainer_cfg.get("enable_progress_bar", True) is not False \
                    and not any(isinstance(c, ProgressBar) for c in callbacks):
                callbacks.append(StepProgressBar())
            if trainer_cfg.get("enable_model_summary", True) is not False \
                    and not any(isinstance(c, ModelSummary) for c in callbacks):
                callbacks.append(ModelSummaryNoFlops())
            from train.summary import RunSummary  # after the config's callbacks: reads what they wrote

            callbacks.append(RunSummary(config=self._resolved_config()))
            if trainer_cfg.get("logger", True) is not False:
                kwargs.setdefault("logger", build_loggers(run, resume))
            kwargs.setdefault("default_root_dir", str(run.dir))
            kwargs["callbacks"] = callbacks
            plugins = trainer_cfg.get("plugins")
            plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
            if not any(isinstance(p, CheckpointIO) for p in plugins):
                plugins.append(AtomicCheckpointIO())  # every checkpoint: temp file beside it, then rename
            kwargs["plugins"] = plugins
            trainer = super().instantiate_trainer(**kwargs)
            label_rows_by_global_step(trainer)
            return trainer
        except BaseException:
            self._release_run_lock()
            raise

    def _resolved_config(self) -> dict:
        """This subcommand's resolved config as plain data (what config.yaml holds), for W&B."""
        section = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        try:
            return section.clone().as_dict()
        except Exception:  # noqa: BLE001 - the summary must never stop a run
            return {}

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


def subcommand_parser_kwargs(sub: str, help_configs: list[str]) -> dict:
    """Parser options of ``python -m train SUB``: its own prog and short usage; under ``--help``,
    the given configs as default config files, so the defaults shown are theirs."""
    kwargs: dict = {"usage": SUBCOMMAND_USAGE.replace("%(prog)s", f"python -m train {sub}")}
    if help_configs:
        kwargs["default_config_files"] = help_configs
        kwargs["description"] = (f"Options of `python -m train {sub}`; defaults shown are those of "
                                 f"{' + '.join(Path(c).name for c in help_configs)}.")
    return kwargs


def main(argv: list[str] | None = None) -> ClipCLI:
    """Entry point of ``python -m train``."""
    from_command_line = argv is None
    try:
        args = resolve_config_args(list(sys.argv[1:] if argv is None else argv))
    except (ConfigError, FileNotFoundError) as err:
        if not from_command_line or traceback_wanted():
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    args, help_configs = help_config_args(args)
    if from_command_line:  # LightningCLI warns when given args beside a non-empty sys.argv
        sys.argv[1:], args = args, None
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    quiet_known_noise()
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
                **{sub: subcommand_parser_kwargs(sub, help_configs) for sub in SUBCOMMANDS},
            },
        )
    except SIGTERMException:
        # Lightning stopped after the batch it was in; RunCheckpoint saved last.ckpt there.
        print("stopped by SIGTERM: last.ckpt holds the last finished step; continue with --ckpt_path last",
              file=sys.stderr)
        raise SystemExit(SIGTERM_EXIT) from None
    except (ConfigError, RunDirError, ResumeMismatchError, NoUsableSamplesError) as err:
        # From the shell: one readable error, no traceback (set CLIP_BIAS_LAB_TRACEBACK=1 for it).
        # In-process callers (tests, notebooks) get the exception itself.
        if not from_command_line or traceback_wanted():
            raise
        print(f"error: {without_worker_traceback(err)}", file=sys.stderr)
        raise SystemExit(2) from None


def without_worker_traceback(err: BaseException) -> str:
    """The message of ``err`` without the worker's traceback that torch's DataLoader puts in front of it
    when it re-raises a worker's exception in the main process ("Caught X in DataLoader worker process 0.
    Original Traceback ... X: message")."""
    text = str(err)
    if "Original Traceback" not in text:
        return text
    marker = f"{type(err).__name__}: "
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(marker) or lines[i].startswith(f"{type(err).__module__}.{marker}"):
            return lines[i].split(marker, 1)[1] + "".join("\n" + rest for rest in lines[i + 1:])
    return text
