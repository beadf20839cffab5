"""``BiasEvalCallback``: the paper's probes during training, as curves over samples seen.

Runs at step 0 (before the first optimizer step: the value at initialisation, which every curve
is read against) and then every ``every_n_steps`` optimizer steps, plus once at the end. Only
rank 0 evaluates (``eval()`` mode, ``torch.no_grad()``, the RNG state forked so training draws
the same random numbers with or without the callback); every rank then meets rank 0 in a
``broadcast`` of its outcome, so other ranks wait instead of deadlocking, and an evaluation
error stops all ranks instead of hanging them.

Outputs, under the run directory (``run_dir`` or else ``trainer.default_root_dir``):

- ``bias.jsonl``: one record per (evaluation, probe, n), see :mod:`eval.records`;
- scalars ``bias/<probe>/n<k>/<term>`` to every logger, with ``samples_seen`` in the same call
  and, for W&B, ``define_metric("bias/*", step_metric="samples_seen")``;
- ``plots/<probe>.png`` at the end of training.

Images and captions are decoded and tokenised once (``eval.suite.prepare_suite``); each
evaluation only runs the encoders and the probes (``eval.suite.run_suite``).
"""
from __future__ import annotations

import logging
import operator
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from eval.eval_sets import default_eval_set
from eval.model_access import ClipAdapter, model_image_size
from eval.records import BIAS_FILE, append_records, flatten, make_records, metric_key

log = logging.getLogger(__name__)

class BiasEvalCallback(L.Callback):
    """Evaluate order/size-bias probes on rank 0 during training and log them over samples seen.

    Args:
        probes: probe names (``tor``, ``toc``, ``ior``, ``ioc``, ``i2tor``, ``itm``, ``claim1``).
        n_objects: objects per item to evaluate (each must be in the eval set; 2..5 for rendered sets).
        items_per_probe: items (captions / images) per probe and n; fewer = faster, wider intervals.
            TOR rounds up to whole Latin-square blocks of the vocabulary (62 objects by default).
        itm_distractors: absent objects per image in ITM (None = all); each adds 2 captions per
            image and scenario, so this is the main cost knob of ITM.
        every_n_steps: evaluate after every N optimizer steps (plus at step 0 and at the end).
        data_dir: an eval-set folder with ``manifest.jsonl``; None renders the default ComCO-style
            set once (``data_prep.comco.write_eval_set``) into ``cache_dir``.
        cache_dir: where default eval sets are cached (default: ``$CLIP_BIAS_LAB_CACHE`` or
            ``~/.cache/clip_bias_lab``, read when the set is needed; shared with ``python -m eval comco``,
            see :mod:`eval.eval_sets`).
        image_size: pixel size of the rendered default set (default: the model's input size).
        templates: caption templates (``data_prep.captions.TEMPLATES`` ids), the first is the
            headline; None keeps the suite's default (bare "A and B" form, then "a photo of ...").
        text_encodings: ``plain`` and/or ``split`` (per-object caption splitting) for TOR, ITM,
            Claim 1; None keeps the suite's default (``plain``).
        run_dir: where ``bias.jsonl`` and ``plots/`` go; None = ``trainer.default_root_dir``.
        eval_at_end: evaluate once more at the end of training if the last step was not evaluated.
        plots: write PNG curves to ``<run_dir>/plots`` at the end of training.
        seed: seed of the item selection (fixed, so every evaluation sees the same items).
    """

    def __init__(
        self,
        probes: Sequence[str] = ("tor", "ior", "i2tor", "itm"),
        n_objects: Sequence[int] = (3,),
        items_per_probe: int = 62,
        itm_distractors: int | None = 2,
        every_n_steps: int = 500,
        data_dir: str | None = None,
        cache_dir: str | None = None,
        image_size: int | None = None,
        templates: Sequence[str] | None = None,
        text_encodings: Sequence[str] | None = None,
        run_dir: str | None = None,
        eval_at_end: bool = True,
        plots: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        v = self._checked(
            probes=probes, n_objects=n_objects, items_per_probe=items_per_probe, itm_distractors=itm_distractors,
            every_n_steps=every_n_steps, data_dir=data_dir, cache_dir=cache_dir, image_size=image_size,
            templates=templates, text_encodings=text_encodings, run_dir=run_dir, eval_at_end=eval_at_end,
            plots=plots, seed=seed)
        self.probes: list[str] = v["probes"]
        self.n_objects: list[int] = v["n_objects"]
        self.items_per_probe: int = v["items_per_probe"]
        self.itm_distractors: int | None = v["itm_distractors"]
        self.every_n_steps: int = v["every_n_steps"]
        self.data_dir = data_dir
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.image_size: int | None = v["image_size"]
        self.templates: list[str] | None = v["templates"]
        self.text_encodings: list[str] | None = v["text_encodings"]
        self.run_dir = run_dir
        self.eval_at_end = eval_at_end
        self.plots = plots
        self.seed: int = v["seed"]
        self._prepared: Any = None
        self._adapter: ClipAdapter | None = None
        self._last_step: int | None = None
        self._batch_size: int | None = None
        self._wandb_defined = False
        #: seconds spent evaluating on this rank (for the cost share of the callback)
        self.total_seconds = 0.0
        self.n_evaluations = 0

    # ---------------------------------------------------------------- configuration

    #: where the arguments live in a training config; every message names them under it
    CONFIG_PATH = "trainer.callbacks[BiasEvalCallback].init_args"

    @classmethod
    def _checked(cls, **args: Any) -> dict[str, Any]:
        """The arguments normalised (``probes`` lower-case, a ``"tor,ior"`` string split), or one
        ``ValueError`` on one line that names every bad argument, what it must be and what it got."""
        from data_prep.captions import TEMPLATES
        from data_prep.shards import OutDirError, check_writable
        from eval.eval_sets import eval_set_cache_problem
        from eval.probes import PROBE_NAMES
        from eval.suite import TEXT_ENCODINGS

        errs: list[str] = []
        out: dict[str, Any] = {}

        def names(key: str) -> list[str] | None:
            value = args[key]
            if value is None:
                return None
            if isinstance(value, str):
                return [x.strip() for x in value.split(",") if x.strip()]
            if isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value):
                return list(value)
            errs.append(f"{key} must be a list of names, got {value!r}")
            return None

        def integer(key: str, low: int, optional: bool = False, hint: str = "") -> int | None:
            value = args[key]
            if value is None and optional:
                return None
            try:  # 3, "3", 3.0 and numpy integers are fine; True, 2.5 and "x" are not
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise TypeError
                value = int(value) if isinstance(value, (str, float)) else operator.index(value)
            except (TypeError, ValueError):
                errs.append(f"{key} must be an integer >= {low}{hint}, got {value!r}")
                return None
            if value < low:
                errs.append(f"{key} must be an integer >= {low}{hint}, got {value!r}")
                return None
            return value

        probes = names("probes")
        out["probes"] = [p.lower() for p in probes or ()]
        bad = [p for p in out["probes"] if p not in PROBE_NAMES]
        if bad:
            errs.append(f"probes: unknown {bad}; valid: {list(PROBE_NAMES)}")
        elif probes == [] or args["probes"] is None:
            errs.append(f"probes: none given; valid: {list(PROBE_NAMES)}")
        n_objects = args["n_objects"]
        n_objects = [n_objects] if isinstance(n_objects, int) else n_objects
        if not isinstance(n_objects, (list, tuple)) or not all(
                isinstance(n, int) and not isinstance(n, bool) for n in n_objects):
            errs.append(f"n_objects must be a list of integers in 2..5, got {args['n_objects']!r}")
            n_objects = []
        else:
            bad_n = [n for n in n_objects if not 2 <= n <= 5]
            if bad_n or not n_objects:
                errs.append(f"n_objects: {bad_n or '(empty)'} outside 2..5")
        out["n_objects"] = [int(n) for n in n_objects]
        out["items_per_probe"] = integer("items_per_probe", 1)
        out["itm_distractors"] = integer("itm_distractors", 1, optional=True, hint=" or null (all)")
        out["every_n_steps"] = integer("every_n_steps", 1)
        out["image_size"] = integer("image_size", 16, optional=True, hint=" or null (the model's input size)")
        out["seed"] = integer("seed", 0)
        out["templates"] = names("templates")
        bad_t = [t for t in out["templates"] or () if t not in TEMPLATES]
        if bad_t or out["templates"] == []:
            errs.append(f"templates: unknown {bad_t or '(empty)'}; valid: {list(TEMPLATES)}")
        out["text_encodings"] = names("text_encodings")
        bad_enc = [e for e in out["text_encodings"] or () if e not in TEXT_ENCODINGS]
        if bad_enc or out["text_encodings"] == []:
            errs.append(f"text_encodings: {bad_enc or '(empty)'}; valid: {list(TEXT_ENCODINGS)}")
        for key in ("eval_at_end", "plots"):
            if not isinstance(args[key], bool):
                errs.append(f"{key} must be true or false, got {args[key]!r}")
        data_dir = args["data_dir"]
        if data_dir is not None and not (Path(data_dir) / "manifest.jsonl").is_file():
            errs.append(f"data_dir: no manifest.jsonl in {data_dir}; omit data_dir to render the default set")
        elif data_dir is None and isinstance(out["seed"], int):
            cache = Path(args["cache_dir"]) if args["cache_dir"] else None
            if problem := eval_set_cache_problem(cache, out["seed"], out["image_size"], "cache_dir"):
                errs.append(problem)
        if args["run_dir"] is not None:
            try:
                check_writable(Path(args["run_dir"]), "run_dir", is_dir=True)
            except OutDirError as e:
                errs.append(str(e))
        if errs:
            raise ValueError(f"BiasEvalCallback ({cls.CONFIG_PATH}): " + "; ".join(errs))
        return out

    def resolve_run_dir(self, trainer: L.Trainer) -> Path:
        """``run_dir`` if given, else ``trainer.default_root_dir`` (``runs/<name>`` in this toolkit)."""
        return Path(self.run_dir or trainer.default_root_dir)

    # ---------------------------------------------------------------- Lightning hooks

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

        if isinstance(trainer.strategy, (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)):
            raise ValueError(
                f"BiasEvalCallback runs the model on rank 0 alone, which a sharded strategy "
                f"({type(trainer.strategy).__name__}) cannot do; use ddp, or evaluate checkpoints "
                "afterwards with `python -m eval comco --checkpoint ...`."
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == 0:  # a resumed run already holds its initial record
            self._evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._batch_size is None:
            self._batch_size = _batch_len(batch)
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0:
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.eval_at_end:
            self._evaluate(trainer, pl_module)
        if self.plots and trainer.is_global_zero:
            run_dir = self.resolve_run_dir(trainer)
            if (run_dir / BIAS_FILE).is_file():
                from eval.plots import plot_run

                plot_run(run_dir, run_dir / "plots")

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_step = state_dict.get("last_step")

    # ---------------------------------------------------------------- evaluation

    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Rank 0 evaluates; all ranks then meet in a broadcast of the outcome (the barrier)."""
        step = trainer.global_step
        if step == self._last_step:  # accumulation: several batch ends per optimizer step
            return
        self._last_step = step
        error = None
        if trainer.is_global_zero:
            try:
                self._evaluate_rank0(trainer, pl_module)
            except Exception as e:  # re-raised below on every rank, so no rank waits forever
                log.exception("bias evaluation failed at step %d", step)
                error = f"{type(e).__name__}: {e}"
        error = trainer.strategy.broadcast(error, src=0)
        if error is not None:
            raise RuntimeError(f"BiasEvalCallback failed at step {step} on rank 0: {error}")

    def _evaluate_rank0(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        t0 = time.perf_counter()
        modes = {m: m.training for m in pl_module.modules()}
        devices = [torch.cuda.current_device()] if pl_module.device.type == "cuda" else []
        pl_module.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                prepare_suite, run_suite = self._suite()
                if self._prepared is None:
                    self._adapter = ClipAdapter.from_module(pl_module)
                    self._prepared = prepare_suite(self._adapter, self._eval_set(pl_module), **self._suite_args())
                result = run_suite(self._adapter, self._prepared)
        finally:
            for m, was_training in modes.items():
                m.train(was_training)
        seconds = time.perf_counter() - t0
        self.total_seconds += seconds
        self.n_evaluations += 1
        samples = self._samples_seen(trainer, pl_module)
        records = make_records(result, trainer.global_step, samples, eval_seconds=seconds)
        append_records(self.resolve_run_dir(trainer) / BIAS_FILE, records)
        self._log(trainer, records, samples, seconds)

    def _suite(self):
        """``(prepare_suite, run_suite)``; a separate method so tests can substitute a fake suite."""
        from eval.suite import prepare_suite, run_suite

        return prepare_suite, run_suite

    def _suite_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"probes": tuple(self.probes), "n_objects": tuple(self.n_objects),
                                "items_per_probe": self.items_per_probe, "itm_distractors": self.itm_distractors,
                                "seed": self.seed, "progress": False}
        if self.templates is not None:
            args["templates"] = tuple(self.templates)
        if self.text_encodings is not None:
            args["text_encodings"] = tuple(self.text_encodings)
        return args

    def _eval_set(self, pl_module: L.LightningModule):
        from eval.manifest import load_eval_set

        if self.data_dir is not None:
            return load_eval_set(self.data_dir)
        return load_eval_set(self._default_set(pl_module))

    def _default_set(self, pl_module: L.LightningModule) -> Path:
        """The default ComCO-style set at the model's input size, rendered once into the cache
        shared with ``python -m eval comco`` (:func:`eval.eval_sets.default_eval_set`)."""
        size = self.image_size or model_image_size(pl_module)
        return default_eval_set(self.cache_dir, self.seed, size, progress=False)

    def _samples_seen(self, trainer: L.Trainer, pl_module: L.LightningModule) -> int:
        seen = getattr(pl_module, "samples_seen", None)
        if seen is not None:
            return int(seen)
        batch = self._batch_size or 0
        return trainer.global_step * batch * trainer.world_size * trainer.accumulate_grad_batches

    def _log(self, trainer: L.Trainer, records: list[dict], samples: int, seconds: float) -> None:
        metrics: dict[str, float] = {"samples_seen": float(samples), "bias/eval_seconds": seconds}
        for rec in records:
            metrics.update(flatten(rec["result"], f"bias/{metric_key(rec)}"))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and not self._wandb_defined:
                logger.experiment.define_metric("samples_seen")
                logger.experiment.define_metric("bias/*", step_metric="samples_seen")
                self._wandb_defined = True
            logger.log_metrics(metrics, step=trainer.global_step)


def _batch_len(batch: Any) -> int | None:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_len(batch[0])
    return None

