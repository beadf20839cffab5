"""CLIPModule: contrastive training of an open_clip CLIP from scratch under Lightning."""
from __future__ import annotations

import math
import os
import time
from typing import Any, Literal

import lightning as L
import open_clip
import torch
import torch.distributed as dist

from lightning.pytorch.trainer.states import TrainerFn

from data_prep.checks import is_int, is_real
from eval.samples_axis import define_samples_axis, samples_per_step
from eval.text_encoding import encode_text
from train import resume
from train.aux_losses import AuxBatch, AuxLoss, aux_terms, capture_all, check_aux_losses
from train.contrastive_cache import cached_contrastive_loss, check_accumulate_contrastive
from train.loss import LossKind, build_loss, contrastive_loss
from train.models import build_model_and_transforms, check_model_name, model_config
from train.optim import adamw, fused_allowed, param_groups, warmup_cosine
from train.retrieval import retrieval_recall

LOGIT_SCALE_MAX = math.log(100.0)
NAN_POLICIES = ("raise", "skip")
LOSSES = ("clip", "siglip")


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value) if isinstance(value, str) else str(value)


def check_model_args(
    model_name: str, pretrained: str | None, loss: str, lr: float, weight_decay: float, betas, eps: float,
    warmup_steps: int, total_steps: int | None, min_lr_ratio: float, nan_policy: str, max_consecutive_skips: int,
    accumulate_contrastive: int = 1,
) -> list[str]:
    """Every problem with :class:`CLIPModule`'s arguments, each naming its config path (empty: all valid).

    Cheap (no model is built), so a bad value is refused before any slow work.
    """
    problems = []
    try:
        check_model_name(model_name)
    except ValueError as e:
        problems.append(f"model.model_name: {e}")
    if pretrained is not None and (os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))):
        if not os.path.isfile(pretrained):
            problems.append(f"model.pretrained must be an open_clip tag or an existing weights file, got {pretrained!r}")
    if loss not in LOSSES:
        problems.append(f"model.loss must be one of {', '.join(LOSSES)}, got {_show(loss)}")
    if not is_real(lr) or lr <= 0:
        problems.append(f"model.lr must be > 0, got {_show(lr)}")
    if not is_real(weight_decay) or weight_decay < 0:
        problems.append(f"model.weight_decay must be >= 0, got {_show(weight_decay)}")
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        problems.append(f"model.betas must be two numbers (beta1, beta2), got {betas!r}")
    else:
        for i, beta in enumerate(betas):
            if not is_real(beta) or not 0 <= beta < 1:
                problems.append(f"model.betas[{i}] must be in [0, 1), got {_show(beta)}")
    if not is_real(eps) or eps <= 0:
        problems.append(f"model.eps must be > 0, got {_show(eps)}")
    if not is_int(warmup_steps) or warmup_steps < 0:
        problems.append(f"model.warmup_steps must be an integer >= 0, got {_show(warmup_steps)}")
    if total_steps is not None and (not is_int(total_steps) or total_steps <= 0):
        problems.append(f"model.total_steps must be an integer > 0 (or null: trainer.max_steps), got {_show(total_steps)}")
    elif total_steps is not None and is_int(warmup_steps) and warmup_steps > total_steps:
        problems.append(f"model.warmup_steps ({warmup_steps}) must be <= model.total_steps ({total_steps}): "
                        "the schedule would never reach the peak LR")
    if not is_real(min_lr_ratio) or not 0 <= min_lr_ratio <= 1:
        problems.append(f"model.min_lr_ratio must be in [0, 1], got {_show(min_lr_ratio)}")
    if nan_policy not in NAN_POLICIES:
        problems.append(f"model.nan_policy must be one of {', '.join(NAN_POLICIES)}, got {_show(nan_policy)}")
    if not is_int(max_consecutive_skips) or max_consecutive_skips < 0:
        problems.append(f"model.max_consecutive_skips must be an integer >= 0, got {_show(max_consecutive_skips)}")
    if not is_int(accumulate_contrastive) or accumulate_contrastive < 1:
        problems.append(f"model.accumulate_contrastive must be an integer >= 1 (1: off), got {_show(accumulate_contrastive)}")
    return problems


class CLIPModule(L.LightningModule):
    """open_clip CLIP + ClipLoss + AdamW with warmup/cosine, logit-scale clamp and exact resume.

    Resume (``--ckpt_path``) is exact or refuses, see :mod:`train.resume`: values that define the
    run's history (model, loss, per-device batch, world size, accumulation, LR schedule shape) must
    match the checkpoint, else the run stops before its first step with a diff; a changed peak
    ``lr`` (or ``weight_decay``, ``betas``, ``eps``) is applied from the resume step on and printed;
    ``samples_seen`` continues from the value stored in the checkpoint. When ``total_steps`` is
    unset, the cosine length resolved from ``trainer.max_steps`` at the run's start is stored and
    kept: a resume with another ``max_steps`` only moves the end of training (steps past the
    schedule run at ``min_lr_ratio × lr``).
    """

    def __init__(
        self,
        model_name: str = "clip-tiny",
        pretrained: str | None = None,
        loss: LossKind = "clip",
        lr: float = 5e-4,
        weight_decay: float = 0.2,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
        warmup_steps: int = 100,
        total_steps: int | None = None,
        min_lr_ratio: float = 0.0,
        nan_policy: Literal["raise", "skip"] = "raise",
        max_consecutive_skips: int = 3,
        trim_text: bool = True,
        grad_checkpointing: bool = False,
        accumulate_contrastive: int = 1,
        compile_model: bool = False,
        aux_losses: list[AuxLoss] | None = None,
    ) -> None:
        """
        Args:
            model_name: open_clip architecture (``ViT-B-32``, ``RN50``, ...) or a config in ``configs/models/``.
            pretrained: open_clip pretrained tag or weights file; None (default) trains from random init.
            loss: ``clip`` (InfoNCE, open_clip ClipLoss) or ``siglip``.
            lr: Peak learning rate.
            weight_decay: AdamW decay on weight matrices (gains, biases, logit_scale are exempt).
            betas: AdamW betas.
            eps: AdamW epsilon.
            warmup_steps: Linear warmup length in optimizer steps.
            total_steps: Length of the cosine schedule (default: the trainer's ``max_steps`` /
                estimated stepping batches, resolved when the run starts and kept on resume).
            min_lr_ratio: Final LR as a fraction of ``lr``, in [0, 1].
            nan_policy: On a non-finite loss, ``raise`` (stop naming the step) or ``skip`` the step
                (no update; counted as ``train/skipped_steps``, no loss logged for it).
            max_consecutive_skips: With ``nan_policy=skip``, stop the run when more than this many
                steps in a row had a non-finite loss (0: stop at the first, like ``raise``). Under
                gradient accumulation both count training batches (micro-batches), not optimizer
                steps, and a window with some skipped batches still updates from the others.
            trim_text: Run the text tower only up to the batch's last end-of-text token
                (``eval.text_encoding``): equal results to ~1e-6, several times faster for short
                captions; towers where that is not exact fall back to open_clip's ``encode_text``.
            grad_checkpointing: Recompute each transformer block's activations in the backward pass
                instead of keeping them (open_clip's ``set_grad_checkpointing``, both towers): less
                activation memory for a larger batch, about one more forward of time; the same
                gradients (to float rounding).
            accumulate_contrastive: Cut each device batch into this many micro-batches and build the
                gradient of the whole batch's contrastive loss one micro-batch at a time
                (:mod:`train.contrastive_cache`): the negatives of the full batch (and of every rank)
                with the activation memory of batch / K, for one extra forward pass. 1 (default): off.
                Not with ``aux_losses`` or BatchNorm towers (refused).
            compile_model: ``torch.compile`` the model's training forward (``nn.Module.compile``: the
                state_dict and checkpoints are unchanged). Off by default: on a 2-core CPU the
                quickstart step is slower compiled (298 vs 245 ms steady state, after about a minute
                of compiling; ``bench/roofline.py --variants after compile``); try it on a GPU.
            aux_losses: Auxiliary objectives added to the contrastive loss (``train.aux_losses``; each
                ``class_path`` + ``init_args``), their terms logged as ``train/aux/<name>``; the
                contrastive part alone as ``train/loss_contrastive`` when any is set.
        """
        super().__init__()
        problems = check_model_args(model_name, pretrained, loss, lr, weight_decay, betas, eps, warmup_steps,
                                    total_steps, min_lr_ratio, nan_policy, max_consecutive_skips,
                                    accumulate_contrastive)
        if problems:  # before building the model: that is slow for the larger architectures
            raise ValueError("Invalid model config: " + "; ".join(problems))
        self.save_hyperparameters()
        self.model_name = model_name
        # SigLIP needs a learnable logit bias; -10 is the SigLIP paper's initialisation.
        extra = {"init_logit_bias": -10.0} if loss == "siglip" else {}
        self.model, self.preprocess_train, self.preprocess_val = build_model_and_transforms(
            model_name, pretrained, **extra
        )
        if not isinstance(grad_checkpointing, bool):
            raise ValueError(f"Invalid model config: grad_checkpointing must be true or false, got {grad_checkpointing!r}")
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        if not isinstance(compile_model, bool):
            raise ValueError(f"Invalid model config: compile_model must be true or false, got {compile_model!r}")
        if compile_model:
            self.model.compile()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        problems = check_aux_losses(aux_losses or [], self.model)
        problems += check_accumulate_contrastive(accumulate_contrastive, aux_losses or [], self.model)
        if problems:
            raise ValueError("Invalid model config: " + "; ".join(problems))
        self.aux_losses = torch.nn.ModuleList(aux_losses or [])  # parameter-free: no state_dict keys
        self._aux_seed = 0
        self.loss_fn: torch.nn.Module | None = None
        self._per_device_batch: int | None = None
        self._last_step_time: float | None = None
        self._val_features: list[tuple[torch.Tensor, torch.Tensor]] = []
        # run record (see train.resume): counters continued from a checkpoint, resolved cosine length
        self._resumed = False
        self._resume_history: dict | None = None
        self._samples_at_resume = 0
        self._step_at_resume = 0
        self._skipped_steps = 0
        self._consecutive_skips = 0
        self._total_steps: int | None = None
        self._step_lr: float | None = None

    # ---------------------------------------------------------------- bookkeeping
    def setup(self, stage: str) -> None:
        # Built here, not in __init__: only now does the trainer know rank and world size.
        self.loss_fn = build_loss(self.hparams.loss, rank=self.global_rank, world_size=self.trainer.world_size)
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and getattr(dm, "batch_size", None):
            self._per_device_batch = int(dm.batch_size)
        # aux losses' seeded draws: the data seed (= seed_everything unless set apart), as the mitigations'
        seed = getattr(dm, "seed", None)
        self._aux_seed = int(seed) if isinstance(seed, int) else int(os.environ.get("PL_GLOBAL_SEED", 0))

    @property
    def samples_seen(self) -> int:
        """Samples at the last resume (stored in the checkpoint) + steps since × samples per step
        (:func:`eval.samples_axis.samples_per_step`); without a resume, global_step × that."""
        if self._trainer is None or self._per_device_batch is None:
            return self._samples_at_resume
        per_step = samples_per_step(self.trainer, self._per_device_batch)
        return self._samples_at_resume + (self.global_step - self._step_at_resume) * per_step

    def run_history(self, *, batch_size: int | None, world_size: int, accumulate_grad_batches: int,
                    total_steps: int | None = None) -> dict[str, Any]:
        """This run's history-defining values (:func:`train.resume.run_history`); ``total_steps``
        defaults to an explicit ``model.total_steps`` (None: not compared)."""
        hp = self.hparams
        return resume.run_history(
            model_name=self.model_name, model_cfg=model_config(self.model_name), pretrained=hp.pretrained,
            loss=hp.loss, batch_size=batch_size, world_size=world_size, accumulate_grad_batches=accumulate_grad_batches,
            warmup_steps=hp.warmup_steps, total_steps=total_steps or hp.total_steps, min_lr_ratio=hp.min_lr_ratio,
            aux_losses=[resume.describe_aux_loss(loss) for loss in self.aux_losses],
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Self-describing checkpoints: `python -m train export` needs no registry lookups.
        checkpoint["open_clip"] = {"model_name": self.model_name, "model_cfg": model_config(self.model_name)}
        t = self.trainer
        checkpoint[resume.HISTORY_KEY] = {
            "history": self.run_history(batch_size=self._per_device_batch, world_size=t.world_size,
                                        accumulate_grad_batches=t.accumulate_grad_batches, total_steps=self._total_steps),
            "samples_seen": int(self.samples_seen),
            "global_step": int(self.global_step),
            "skipped_steps": self._skipped_steps,
            "consecutive_skips": self._consecutive_skips,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """On ``fit`` resume: refuse a changed history (before any step), take over the run's counters.

        Lightning calls this after ``setup`` (batch size, world size known) and before
        ``configure_optimizers`` and the optimizer/scheduler restore (see ``on_train_start``).
        """
        if self._trainer is None or self.trainer.state.fn != TrainerFn.FITTING:
            return  # load_from_checkpoint / validate: nothing is continued
        self._resumed = True
        record = checkpoint.get(resume.HISTORY_KEY)
        if record is None:
            self.print("Resuming from a checkpoint without a run record (older version): its history is not "
                       "checked and samples_seen is recounted from today's batch size.")
            return
        t = self.trainer
        now = self.run_history(batch_size=self._per_device_batch, world_size=t.world_size,
                               accumulate_grad_batches=t.accumulate_grad_batches)
        lines = resume.history_diff(record["history"], now)
        if lines:
            raise resume.ResumeMismatchError(resume.refusal_message(t.ckpt_path, lines))
        self._resume_history = record["history"]
        self._samples_at_resume = int(record["samples_seen"])
        self._step_at_resume = int(record["global_step"])
        self._skipped_steps = int(record.get("skipped_steps", 0))
        self._consecutive_skips = int(record.get("consecutive_skips", 0))
        self._total_steps = record["history"].get("model.total_steps (cosine schedule length)")

    def _check_batch_size_on_resume(self) -> None:
        """Without a datamodule the batch size is first known at the first batch: check it there."""
        stored = (self._resume_history or {}).get("data.batch_size")
        if stored is not None and stored != self._per_device_batch:
            lines = [f"data.batch_size: checkpoint {stored}, now {self._per_device_batch}"]
            raise resume.ResumeMismatchError(resume.refusal_message(self.trainer.ckpt_path, lines))

    def _apply_optimizer_settings_on_resume(self) -> None:
        """Lightning restored the optimizer's lr/betas/... from the checkpoint: today's config wins."""
        hp = self.hparams
        opt = self.trainer.optimizers[0]
        # the implementation is today's choice (train.optim.adamw), not the checkpoint's: a state
        # saved by a fused optimizer would otherwise bring `fused` into a run that cannot use it
        for group in opt.param_groups:
            group.update(self._adamw_flags)
        # the groups of train.optim.param_groups, in order: decayed weights, exempt parameters
        want = [{"initial_lr": hp.lr, "weight_decay": wd, "betas": tuple(hp.betas), "eps": hp.eps}
                for wd in (hp.weight_decay, 0.0)]
        first = opt.param_groups[0]  # the decayed group: its values are the config's
        before = {"lr": first["initial_lr"], "weight_decay": first["weight_decay"], "betas": list(first["betas"]),
                  "eps": first["eps"]}
        after = {"lr": hp.lr, "weight_decay": hp.weight_decay, "betas": list(hp.betas), "eps": hp.eps}
        changes = [f"model.{k} {_show(before[k])} -> {_show(after[k])}" for k in after if before[k] != after[k]]
        if not changes:
            return
        for group, values in zip(opt.param_groups, want):
            group.update(values)
        sched = self.trainer.lr_scheduler_configs[0].scheduler if self.trainer.lr_scheduler_configs else None
        if sched is not None:
            sched.base_lrs = [hp.lr] * len(opt.param_groups)
            for group, fn in zip(opt.param_groups, sched.lr_lambdas):
                group["lr"] = hp.lr * fn(sched.last_epoch)
            sched._last_lr = [group["lr"] for group in opt.param_groups]
        self.print(f"Resuming at step {self.global_step}: applying changed {', '.join(changes)} from this step on.")

    # ---------------------------------------------------------------- training
    def training_step(self, batch, batch_idx: int):
        images, texts = batch[0], batch[1]  # a third element (data statistics) is train.data_stats's
        if self._per_device_batch is None:
            self._per_device_batch = images.shape[0]
            self._check_batch_size_on_resume()
        features = {} if len(self.aux_losses) else None
        if self.hparams.accumulate_contrastive > 1:
            if batch_idx % self.trainer.accumulate_grad_batches == 0:  # see optimizer_zero_grad
                self.trainer.optimizers[0].zero_grad(set_to_none=True)
            loss = cached_contrastive_loss(self.model, images, texts, self.loss_fn, self.hparams.accumulate_contrastive,
                                           self._micro_backward, trim_text=self.hparams.trim_text)
        else:
            with capture_all(self.aux_losses, self.model):
                loss = contrastive_loss(self.model, images, texts, self.loss_fn, trim_text=self.hparams.trim_text,
                                        features=features)
        aux_logs = self._aux_step(batch, features, loss) if features is not None else {}
        loss = aux_logs.pop("train/loss", loss)
        if not self._all_finite(loss):  # every rank takes the same branch, so all skip or all raise together
            step, hp = self.global_step, self.hparams
            advice = "Lower model.lr, raise model.warmup_steps, enable trainer.gradient_clip_val"
            if hp.nan_policy == "skip":
                self._skipped_steps += 1
                self._consecutive_skips += 1
                if self._consecutive_skips > hp.max_consecutive_skips:
                    raise FloatingPointError(
                        f"Loss became {loss.item()} at global step {step} (batch {batch_idx}): a non-finite loss on "
                        f"{self._consecutive_skips} step{'s' if self._consecutive_skips != 1 else ''} in a row, more "
                        f"than model.max_consecutive_skips={hp.max_consecutive_skips}. {advice}."
                    )
                self.print(f"non-finite loss {loss.item()} at global step {step}: step skipped (model.nan_policy=skip, "
                           f"{self._consecutive_skips} in a row, {self._skipped_steps} in all)")
                self._drop_step_metric("train/loss")
                return None
            raise FloatingPointError(
                f"Loss became {loss.item()} at global step {step} (batch {batch_idx}). {advice}, or set "
                f"model.nan_policy=skip."
            )
        self._consecutive_skips = 0
        self.log("train/loss", loss, prog_bar=True)
        for name, value in aux_logs.items():
            self.log(name, value)
        return loss

    def _micro_backward(self, share: torch.Tensor) -> None:
        """One micro-batch's backward inside the step (``model.accumulate_contrastive``), scaled as
        Lightning scales the step's own: by gradient accumulation and, under fp16, the grad scaler."""
        share = share / self.trainer.accumulate_grad_batches
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        (share if scaler is None else scaler.scale(share)).backward()

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer) -> None:
        """Lightning zeroes the gradients between ``training_step`` and its backward; with
        ``accumulate_contrastive`` the micro-batches' backwards ran inside the step, so the step
        zeroes them itself before those (at the first batch of each accumulation window)."""
        if self.hparams.accumulate_contrastive == 1:
            optimizer.zero_grad()

    def _aux_step(self, batch, features: dict, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """The aux losses' terms: ``train/loss`` (contrastive + weighted terms), ``train/loss_contrastive``
        and ``train/aux/<name>`` (each term's unweighted value, detached)."""
        aux = AuxBatch(
            images=batch[0], texts=batch[1], meta=batch[3] if len(batch) > 3 else None,
            image_features=features["image_features"], text_features=features["text_features"],
            logit_scale=features["logit_scale"], logit_bias=features["logit_bias"], model=self.model,
            tokenizer=self.tokenizer, rank=self.global_rank, world_size=self.trainer.world_size,
            seed=self._aux_seed, step=self.global_step, trim_text=self.hparams.trim_text,
        )
        extra, terms = aux_terms(self.aux_losses, aux)
        logs = {f"train/aux/{name}": value.detach() for name, value in terms.items()}
        return {"train/loss": loss + extra, "train/loss_contrastive": loss.detach(), **logs}

    def _drop_step_metric(self, name: str) -> None:
        """Keep a skipped step from logging ``name``'s last finite value again.

        Lightning's result collection keeps each step-level value until the epoch ends and writes
        every kept value at each logging step; resetting the entry hides it until it is logged anew.
        """
        results = getattr(self.trainer, "_results", None)  # private: no public way to un-log a value
        for metric in (results or {}).values():
            if getattr(getattr(metric, "meta", None), "name", None) == name and hasattr(metric, "reset"):
                metric.reset()

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """All ranks agree, so a skip never leaves one rank waiting in backward's all-reduce."""
        ok = torch.isfinite(loss.detach()).float()
        if self.trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item() > 0)

    def optimizer_step(self, *args, **kwargs) -> None:
        self._step_lr = self.trainer.optimizers[0].param_groups[0]["lr"]  # logged as the LR this step used
        super().optimizer_step(*args, **kwargs)
        with torch.no_grad():  # after the step, as open_clip's trainer does
            self.model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last_step_time is not None and self._per_device_batch:
            dt = now - self._last_step_time
            sps = self._per_device_batch * self.trainer.world_size / max(dt, 1e-9)
            self.log("train/samples_per_sec", sps, prog_bar=True)
        self._last_step_time = now
        lr = self._step_lr if self._step_lr is not None else self.optimizers().param_groups[0]["lr"]
        self.log("train/lr", lr)
        self.log("train/logit_scale", self.model.logit_scale.detach().exp())
        self.log("samples_seen", float(self.samples_seen))
        self.log("train/skipped_steps", float(self._skipped_steps))

    def on_train_start(self) -> None:
        # after Lightning restored the optimizer and scheduler state: the first hook that can change them
        self._last_step_time = None
        if self._resumed:
            self._apply_optimizer_settings_on_resume()
            max_steps, total = self.trainer.max_steps, self._total_steps
            if self.hparams.total_steps is None and total and max_steps and max_steps > total:
                hp = self.hparams
                first, last = (hp.lr * warmup_cosine(s, hp.warmup_steps, total, hp.min_lr_ratio)
                               for s in (max(total, self.global_step), max_steps - 1))
                shown = f"LR {first:g}" if first == last else f"LR {first:g} .. {last:g}"
                self.print(
                    f"trainer.max_steps={max_steps} goes past the LR schedule, whose length ({total} steps, warmup "
                    f"{hp.warmup_steps}) was fixed when the run started: steps {max(total, self.global_step) + 1}.."
                    f"{max_steps} run at the stored schedule's {shown}, not a new cosine."
                )
        define_samples_axis(self.loggers, ["train/*", "val/*"])  # bias/*, data/*: their callbacks

    def on_train_end(self) -> None:
        if self._skipped_steps:
            self.print(f"{self._skipped_steps} of {self.global_step} steps were skipped for a non-finite loss "
                       "(model.nan_policy=skip): see train/skipped_steps in metrics.csv.")

    def configure_optimizers(self):
        hp = self.hparams
        # the fused kernel where torch has one for the device (CPU, CUDA) and Lightning allows it:
        # same update, one pass per tensor (train.optim.adamw)
        opt = adamw(param_groups(self.model, hp.weight_decay), lr=hp.lr, betas=hp.betas, eps=hp.eps,
                    allow_fused=fused_allowed(self._trainer))
        self._adamw_flags = {k: opt.param_groups[0][k] for k in ("fused", "foreach")}
        # on resume, on_load_checkpoint has set the stored length (history); read lazily, so that also
        # holds where a strategy restores the checkpoint after configuring the optimizers
        self._total_steps = hp.total_steps or self._total_steps or self._total_steps_from_trainer()
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, hp.warmup_steps, self._total_steps, hp.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def _total_steps_from_trainer(self) -> int:
        if self.trainer.max_steps and self.trainer.max_steps > 0:
            return int(self.trainer.max_steps)
        est = self.trainer.estimated_stepping_batches
        if not math.isfinite(est):
            raise ValueError("Cannot size the cosine schedule: set trainer.max_steps or model.total_steps")
        return int(est)

    # ---------------------------------------------------------------- validation: retrieval R@k
    def on_validation_epoch_start(self) -> None:
        self._val_features = []
        # per-rank loss on the rank's own batch (no gather): validation needs no gradients
        self._val_loss = build_loss(self.hparams.loss)

    def validation_step(self, batch, batch_idx: int) -> None:
        images, texts = batch[0], batch[1]
        img = self.model.encode_image(images, normalize=True)
        txt = encode_text(self.model, texts, normalize=True, trim=self.hparams.trim_text)
        self._val_features.append((img.float().cpu(), txt.float().cpu()))
        # the features open_clip's forward would return: no second pass through the towers
        bias = getattr(self.model, "logit_bias", None)
        loss = self._val_loss(img, txt, self.model.logit_scale.exp(), *([] if bias is None else [bias]))
        self.log("val/loss", loss, batch_size=images.shape[0])

    def on_validation_epoch_end(self) -> None:
        if not self._val_features:
            return
        img = torch.cat([f[0] for f in self._val_features])
        txt = torch.cat([f[1] for f in self._val_features])
        # Every rank holds the whole validation set (see WebDataModule.val_dataloader): no gather needed.
        for k, v in retrieval_recall(img, txt).items():
            self.log(f"val/{k}", v)
        self.log("val/num_samples", float(img.shape[0]))
        self._val_features = []
