"""``BiasEvalCallback``: the paper's probes during training, as curves over samples seen.

Runs at step 0 (before the first optimizer step: the value at initialisation, which every curve
is read against) and then every ``every_n_steps`` optimizer steps (or ``evaluations_per_run`` times,
evenly spaced over the run's length), plus once at the end. Only
rank 0 evaluates (``eval()`` mode, ``torch.no_grad()``, the RNG state forked so training draws
the same random numbers with or without the callback); every rank then meets rank 0 in a
``broadcast`` of its outcome, so other ranks wait instead of deadlocking, and an evaluation
error stops all ranks instead of hanging them.

Outputs, under the run directory (``run_dir`` or else ``trainer.default_root_dir``):

- ``bias.jsonl``: one record per (evaluation, probe, n), see :mod:`eval.records`;
- scalars ``bias/<probe>/n<k>/<term>`` to every logger, with ``samples_seen`` in the same call
  and, for W&B, ``define_metric("bias/*", step_metric="samples_seen")`` (:mod:`eval.samples_axis`);
- ``plots/<probe>.png`` at the end of training.

Images and captions are decoded and tokenised once (``eval.suite.prepare_suite``, before the
first evaluation; the default eval set is rendered then if it is not cached): ``render_seconds``
and ``prepare_seconds``. Each evaluation only runs the encoders and the probes
(``eval.suite.run_suite``): its wall time is ``eval_seconds`` in the records and adds up in
``total_seconds``.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from eval.eval_sets import default_eval_set, eval_set_cache_problem, n_objects_problem
from eval.model_access import ClipAdapter, model_image_size
from eval.benchmarks import METRIC_GLOBS, BenchmarkConfig
from eval.records import BIAS_FILE, append_records, flatten, make_records, metric_prefix
from eval.samples_axis import define_samples_axis, samples_seen
from eval.suite import SuiteConfig, SuiteOptionError, check_int, options_doc, suite_options

log = logging.getLogger(__name__)


def training_vocabulary(trainer: Any) -> list[str] | None:
    """The object names a rendered training corpus is restricted to (``data.synthetic.objects``), or
    None: every object (or data that is not rendered)."""
    synthetic = getattr(getattr(trainer, "datamodule", None), "synthetic", None)
    return getattr(synthetic, "objects", None)


class BiasEvalCallback(L.Callback):
    """Evaluate order/size-bias probes on rank 0 during training and log them over samples seen.

    Args:
        every_n_steps: evaluate after every N optimizer steps (plus at step 0 and at the end); null =
            500 unless ``evaluations_per_run`` is given.
        evaluations_per_run: instead of ``every_n_steps``: evaluate this many times after step 0,
            ``every_n_steps = ceil(run steps / evaluations_per_run)`` from the run's length when
            training starts (``trainer.estimated_stepping_batches``: ``trainer.max_steps`` or
            epochs x batches per epoch), so e.g. 6 gives 7 points on a curve of any length. The end
            of training counts as one of them when it falls between two.
        data_dir: an eval-set folder with ``manifest.jsonl``; None renders the default ComCO-style
            set once (``data_prep.comco.write_eval_set``) into ``cache_dir``.
        cache_dir: where default eval sets are cached (default: ``$CLIP_BIAS_LAB_CACHE`` or
            ``~/.cache/clip_bias_lab``, read when the set is needed; shared with ``python -m eval comco``,
            see :mod:`eval.eval_sets`).
        image_size: pixel size of the rendered default set (default: the model's input size).
        eval_set_blocks: counterbalanced blocks per setting in the rendered default set (1 block =
            62 images per large slot, 186 for n = 3); more blocks give IOR/I2TOR/ITM more images and
            narrower intervals (4 blocks: 744 images for n = 3, index half-width about ±0.05).
        run_dir: where ``bias.jsonl`` and ``plots/`` go; None = ``trainer.default_root_dir``.
        eval_at_end: evaluate once more at the end of training if the last step was not evaluated.
        plots: write PNG curves to ``<run_dir>/plots`` at the end of training.

    The probe options (``probes``, ``n_objects``, ``items_per_probe``, ... : ``SUITE_OPTIONS``, every
    field of :class:`eval.suite.SuiteConfig`) are arguments too: their defaults, checks and help are
    SuiteConfig's, which the callback builds from them (``self.suite``). Their ``Args`` entries are
    SuiteConfig's help, put first in the section when this module is imported
    (:func:`eval.suite.options_doc`), so LightningCLI's help under ``trainer.callbacks`` shows the same
    words as ``python -m eval comco --help``.
    """

    def __init__(
        self,
        probes: Sequence[str] = SuiteConfig.probes,
        n_objects: Sequence[int] = SuiteConfig.n_objects,
        items_per_probe: int | None = SuiteConfig.items_per_probe,
        itm_distractors: int | None = SuiteConfig.itm_distractors,
        every_n_steps: int | None = None,
        evaluations_per_run: int | None = None,
        data_dir: str | None = None,
        cache_dir: str | None = None,
        image_size: int | None = None,
        eval_set_blocks: int = 1,
        templates: Sequence[str] = SuiteConfig.templates,
        text_encodings: Sequence[str] = SuiteConfig.text_encodings,
        run_dir: str | None = None,
        eval_at_end: bool = True,
        plots: bool = True,
        seed: int = SuiteConfig.seed,
        gallery_template: str = SuiteConfig.gallery_template,
        split_template: str = SuiteConfig.split_template,
        linear_items: int = SuiteConfig.linear_items,
        linear_method: str = SuiteConfig.linear_method,
        linear_steps: int = SuiteConfig.linear_steps,
        train_frac: float = SuiteConfig.train_frac,
        zeroshot: bool = BenchmarkConfig.zeroshot,
        zeroshot_folder: str | None = BenchmarkConfig.zeroshot_folder,
        word_order: bool = BenchmarkConfig.word_order,
        word_order_items: int = BenchmarkConfig.word_order_items,
        word_order_template: str = BenchmarkConfig.word_order_template,
        sugarcrepe_dir: str | None = BenchmarkConfig.sugarcrepe_dir,
        sugarcrepe_images: str | None = BenchmarkConfig.sugarcrepe_images,
        coco_images: str | None = BenchmarkConfig.coco_images,
        coco_instances: str | None = BenchmarkConfig.coco_instances,
        coco_captions: str | None = BenchmarkConfig.coco_captions,
        coco_prompts: str | None = BenchmarkConfig.coco_prompts,
        coco_ratio: float = BenchmarkConfig.coco_ratio,
        compositional: bool = BenchmarkConfig.compositional,
        min_items: int = BenchmarkConfig.min_items,
    ) -> None:
        super().__init__()
        v = self._checked(
            probes=probes, n_objects=n_objects, items_per_probe=items_per_probe, itm_distractors=itm_distractors,
            every_n_steps=every_n_steps, evaluations_per_run=evaluations_per_run, data_dir=data_dir,
            cache_dir=cache_dir, image_size=image_size, eval_set_blocks=eval_set_blocks, templates=templates,
            text_encodings=text_encodings, run_dir=run_dir, eval_at_end=eval_at_end, plots=plots, seed=seed,
            gallery_template=gallery_template, split_template=split_template, linear_items=linear_items,
            linear_method=linear_method, linear_steps=linear_steps, train_frac=train_frac,
            benchmarks=BenchmarkConfig(
                zeroshot=zeroshot, zeroshot_folder=zeroshot_folder, word_order=word_order,
                word_order_items=word_order_items, word_order_template=word_order_template,
                sugarcrepe_dir=sugarcrepe_dir, sugarcrepe_images=sugarcrepe_images, coco_images=coco_images,
                coco_instances=coco_instances, coco_captions=coco_captions, coco_prompts=coco_prompts,
                coco_ratio=coco_ratio, compositional=compositional, min_items=min_items))
        #: the probe options (the suite's own defaults and checks)
        self.suite: SuiteConfig = v["suite"]
        #: the probes beyond the paper's (zero-shot, word order, SugarCrepe, COCO bias)
        self.benchmarks: BenchmarkConfig = v["benchmarks"]
        self._prepared_benchmarks: Any = None
        #: evaluation spacing in optimizer steps; with ``evaluations_per_run``, set when training starts
        self.every_n_steps: int | None = v["every_n_steps"]
        self.evaluations_per_run: int | None = v["evaluations_per_run"]
        self.data_dir = data_dir
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.image_size: int | None = v["image_size"]
        self.eval_set_blocks: int = v["eval_set_blocks"]
        self.run_dir = run_dir
        self.eval_at_end = eval_at_end
        self.plots = plots
        self._prepared: Any = None
        self._adapter: ClipAdapter | None = None
        self._last_step: int | None = None
        self._batch_size: int | None = None
        #: seconds spent evaluating on this rank (encoders + probes; for the cost share of the callback)
        self.total_seconds = 0.0
        self.n_evaluations = 0
        #: one-off seconds before the first evaluation: rendering the default eval set (only if it is
        #: not cached yet) and decoding/tokenising its inputs; not part of ``total_seconds``
        self.render_seconds = 0.0
        self.prepare_seconds = 0.0

    # ---------------------------------------------------------------- configuration

    #: the evaluation spacing when neither ``every_n_steps`` nor ``evaluations_per_run`` is given
    DEFAULT_EVERY_N_STEPS = 500
    #: where the arguments live in a training config; every message names them under it
    CONFIG_PATH = "trainer.callbacks[BiasEvalCallback].init_args"
    #: the probe options (every :class:`eval.suite.SuiteConfig` field), passed on to it under the same names
    SUITE_OPTIONS = tuple(opt.name for opt in suite_options())

    @classmethod
    def _checked(cls, **args: Any) -> dict[str, Any]:
        """The arguments normalised (the probe options as a ``SuiteConfig``), or one ``ValueError``
        on one line that names every bad argument, what it must be and what it got."""
        from data_prep.fileio import OutDirError, check_writable

        errs: list[str] = []
        out: dict[str, Any] = {"suite": None}
        try:
            out["suite"] = SuiteConfig(**{k: args[k] for k in cls.SUITE_OPTIONS})
        except SuiteOptionError as e:
            errs += e.messages()
        for key, low, hint in (("every_n_steps", 1, ""), ("evaluations_per_run", 1, ""),
                               ("image_size", 16, " or null (the model's input size)")):
            out[key], problem = check_int(args[key], low, optional=True, hint=hint)
            if problem:
                errs.append(key + problem)
        out["eval_set_blocks"], problem = check_int(args["eval_set_blocks"], 1)
        if problem:
            errs.append("eval_set_blocks" + problem)
        if out["every_n_steps"] is not None and out["evaluations_per_run"] is not None:
            errs.append(f"give every_n_steps ({out['every_n_steps']}) or evaluations_per_run "
                        f"({out['evaluations_per_run']}), not both")
        elif out["every_n_steps"] is None and out["evaluations_per_run"] is None:
            out["every_n_steps"] = cls.DEFAULT_EVERY_N_STEPS
        for key in ("eval_at_end", "plots"):
            if not isinstance(args[key], bool):
                errs.append(f"{key} must be true or false, got {args[key]!r}")
        data_dir = args["data_dir"]
        if data_dir is not None and not (Path(data_dir) / "manifest.jsonl").is_file():
            errs.append(f"data_dir: no manifest.jsonl in {data_dir}; omit data_dir to render the default set")
        elif data_dir is None and out["suite"] is not None:
            if problem := n_objects_problem(out["suite"].n_objects, "n_objects"):
                errs.append(problem)
            cache = Path(args["cache_dir"]) if args["cache_dir"] else None
            if problem := eval_set_cache_problem(cache, out["suite"].seed, out["image_size"], "cache_dir",
                                                 out["eval_set_blocks"] or 1):
                errs.append(problem)
        errs += args["benchmarks"].problems()
        out["benchmarks"] = args["benchmarks"]
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

    @staticmethod
    def spacing(run_steps: int, evaluations_per_run: int) -> int:
        """``every_n_steps`` for ``evaluations_per_run`` evaluations after step 0 in ``run_steps`` steps
        (at most that many, the end of training included): ``ceil(run_steps / evaluations_per_run)``."""
        return max(1, math.ceil(run_steps / evaluations_per_run))

    def resolve_every_n_steps(self, trainer: L.Trainer) -> int:
        """``every_n_steps``, derived from the run's length when ``evaluations_per_run`` is set."""
        if self.evaluations_per_run is None:
            return self.every_n_steps
        steps = trainer.estimated_stepping_batches
        if not isinstance(steps, (int, float)) or not math.isfinite(steps) or steps < 1:
            raise ValueError(
                f"BiasEvalCallback ({self.CONFIG_PATH}): evaluations_per_run needs a known run length "
                f"(trainer.max_steps, or trainer.max_epochs over a dataloader with a length), got {steps!r} steps; "
                "set trainer.max_steps or use every_n_steps")
        self.every_n_steps = self.spacing(int(steps), self.evaluations_per_run)
        return self.every_n_steps

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.resolve_every_n_steps(trainer)
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
        modes = {m: m.training for m in pl_module.modules()}
        devices = [torch.cuda.current_device()] if pl_module.device.type == "cuda" else []
        pl_module.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                prepare_suite, run_suite = self._suite()
                if self._prepared is None:
                    self._prepare(pl_module, prepare_suite)
                t0 = time.perf_counter()
                with self._adapter.evaluation():  # each registered input encoded once (share_inputs)
                    result = run_suite(self._adapter, self._prepared)
                    benchmarks = self._run_benchmarks()
        finally:
            for m, was_training in modes.items():
                m.train(was_training)
        seconds = time.perf_counter() - t0
        self.total_seconds += seconds
        self.n_evaluations += 1
        samples = samples_seen(trainer, pl_module, self._batch_size)
        records = make_records(result, trainer.global_step, samples, eval_seconds=seconds, benchmarks=benchmarks)
        append_records(self.resolve_run_dir(trainer) / BIAS_FILE, records)
        self._log(trainer, records, samples, seconds)

    def _prepare(self, pl_module: L.LightningModule, prepare_suite) -> None:
        """Once per fit: the eval set (rendered now if not cached) and its decoded, tokenised inputs.
        Timed apart from the evaluations (``render_seconds``, ``prepare_seconds``) and logged."""
        t0 = time.perf_counter()
        eval_set = self._eval_set(pl_module)
        self.render_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        self._adapter = ClipAdapter.from_module(pl_module)
        self._prepared = prepare_suite(self._adapter, eval_set, **self._suite_args())
        if self.benchmarks.active:
            from eval.benchmarks import prepare_benchmarks

            relation_set = None
            if self.benchmarks.compositional:
                from eval.eval_sets import relation_eval_set

                vocabulary = training_vocabulary(pl_module.trainer)
                if vocabulary is not None:
                    log.warning("the training corpus draws from %d objects (data.synthetic.objects): the relation "
                                "set uses the same ones; the ComCO bias probes still cover every object, most of "
                                "them never seen in training", len(set(vocabulary)))
                relation_set = relation_eval_set(self.cache_dir, self.suite.seed,
                                                 self.image_size or model_image_size(pl_module), objects=vocabulary)
            self._prepared_benchmarks = prepare_benchmarks(self._adapter, self.benchmarks, eval_set,
                                                           self.suite.n_objects, self.suite.seed,
                                                           relation_set=relation_set)
        parts = [p for p in (self._prepared_benchmarks.parts.values() if self._prepared_benchmarks else [])
                 if isinstance(p, dict)]
        self._adapter.share_inputs([getattr(self._prepared, "tokens", None), *(p.get("tokens") for p in parts)],
                                   [getattr(self._prepared, "images", None), *(p.get("images") for p in parts)])
        self.prepare_seconds = time.perf_counter() - t1
        log.info("bias probes ready in %.1f s (eval set %s in %.1f s; decoding, tokenising and planning %.1f s)",
                 self.render_seconds + self.prepare_seconds, getattr(eval_set, "root", "?"), self.render_seconds,
                 self.prepare_seconds)

    def _suite(self):
        """``(prepare_suite, run_suite)``; a separate method so tests can substitute a fake suite."""
        from eval.suite import prepare_suite, run_suite

        return prepare_suite, run_suite

    def _run_benchmarks(self) -> dict[str, dict]:
        if self._prepared_benchmarks is None:
            return {}
        from eval.benchmarks import run_benchmarks

        return run_benchmarks(self._adapter, self._prepared_benchmarks)

    def _suite_args(self) -> dict[str, Any]:
        return {"config": self.suite, "progress": False}

    def _eval_set(self, pl_module: L.LightningModule):
        from eval.manifest import load_eval_set

        if self.data_dir is not None:
            return load_eval_set(self.data_dir)
        return load_eval_set(self._default_set(pl_module))

    def _default_set(self, pl_module: L.LightningModule) -> Path:
        """The default ComCO-style set at the model's input size, rendered once into the cache
        shared with ``python -m eval comco`` (:func:`eval.eval_sets.default_eval_set`)."""
        size = self.image_size or model_image_size(pl_module)
        return default_eval_set(self.cache_dir, self.suite.seed, size, progress=False, blocks=self.eval_set_blocks)

    def _log(self, trainer: L.Trainer, records: list[dict], samples: int, seconds: float) -> None:
        metrics: dict[str, float] = {"samples_seen": float(samples), "bias/eval_seconds": seconds}
        for rec in records:
            metrics.update(flatten(rec["result"], metric_prefix(rec)))
        define_samples_axis(trainer.loggers, ["bias/*", *METRIC_GLOBS])  # once per logger, see eval.samples_axis
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)


def callback_init_args(config: Mapping) -> dict | None:
    """The ``init_args`` of the ``BiasEvalCallback`` a plain-data run config (a parsed YAML) attaches
    under ``trainer.callbacks``; ``None`` when it attaches none."""
    for cb in (config.get("trainer") or {}).get("callbacks") or []:
        if str(cb.get("class_path", "")).endswith("BiasEvalCallback"):
            return dict(cb.get("init_args") or {})
    return None


def _with_probe_options(doc: str) -> str:
    """``doc`` with the probe options' entries (SuiteConfig's help, ``null`` for None) first in its
    ``Args:`` section and BenchmarkConfig's after them, where docstring_parser (and so jsonargparse's
    help) finds them."""
    head, args, rest = doc.partition("    Args:\n")
    if not args:
        raise RuntimeError("BiasEvalCallback's docstring needs an Args: section for the probe options")
    bench = BenchmarkConfig.__doc__.partition("    Args:\n")[2].rstrip()
    return f"{head}{args}{options_doc(BiasEvalCallback.SUITE_OPTIONS, none_as='null')}\n{bench}\n{rest}"


BiasEvalCallback.__doc__ = _with_probe_options(BiasEvalCallback.__doc__)


def _batch_len(batch: Any) -> int | None:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_len(batch[0])
    return None

