"""``python -m train fit|validate --config NAME``: LightningCLI with config lookup in ``<repo>/configs/``."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.cli import LightningCLI

from train.data import WebDataModule
from train.models import REPO_ROOT
from train.module import CLIPModule
from train.run_dir import RunConfig, build_checkpoint_callback, build_loggers

CONFIG_DIR = REPO_ROOT / "configs"
DEFAULT_CONFIG = "quickstart.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


def list_configs() -> list[str]:
    """Config names usable with ``--config NAME``."""
    return sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))


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
    return out


class ClipCLI(LightningCLI):
    """LightningCLI plus the ``run`` section: run directory, loggers and checkpoints."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(RunConfig, "run")

    def _run_config(self) -> RunConfig:
        run = self._get(self.config_init, "run")
        return run if isinstance(run, RunConfig) else RunConfig(**dict(run))

    def instantiate_trainer(self, **kwargs):
        run = self._run_config()
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        resume = bool(self._get(self.config, "ckpt_path", default=None))
        callbacks = list(trainer_cfg.get("callbacks") or [])
        callbacks.append(build_checkpoint_callback(run))
        if trainer_cfg.get("enable_progress_bar", True) is not False:
            callbacks.append(RichProgressBar())
        if trainer_cfg.get("logger", True) is not False:
            kwargs.setdefault("logger", build_loggers(run, resume))
        kwargs.setdefault("default_root_dir", str(run.dir))
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)


def main(argv: list[str] | None = None) -> ClipCLI:
    """Entry point of ``python -m train``."""
    from_command_line = argv is None
    args = resolve_config_args(list(sys.argv[1:] if argv is None else argv))
    if from_command_line:  # LightningCLI warns when given args beside a non-empty sys.argv
        sys.argv[1:], args = args, None
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    return ClipCLI(
        CLIPModule,
        WebDataModule,
        args=args,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            "parser_mode": "yaml",
            "description": "Train a CLIP from scratch (open_clip + Lightning). --config NAME is looked up in "
            "configs/ (default quickstart.yaml). Export a checkpoint to plain open_clip with "
            "'python -m train export CKPT OUT.pt'.",
        },
    )
