"""CLIPModule: contrastive training of an open_clip CLIP from scratch under Lightning."""
from __future__ import annotations

import math
import time
from typing import Any, Literal

import lightning as L
import open_clip
import torch
import torch.distributed as dist

from train.loss import LossKind, build_loss, contrastive_loss
from train.models import build_model_and_transforms, model_config
from train.optim import param_groups, warmup_cosine
from train.retrieval import retrieval_recall

LOGIT_SCALE_MAX = math.log(100.0)


class CLIPModule(L.LightningModule):
    """open_clip CLIP + ClipLoss + AdamW with warmup/cosine, logit-scale clamp and exact resume."""

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
                estimated stepping batches).
            min_lr_ratio: Final LR as a fraction of ``lr``.
            nan_policy: On a non-finite loss, ``raise`` (stop naming the step) or ``skip`` the step.
        """
        super().__init__()
        problems = []
        if lr <= 0:
            problems.append(f"model.lr must be > 0, got {lr}")
        if warmup_steps < 0:
            problems.append(f"model.warmup_steps must be >= 0, got {warmup_steps}")
        if total_steps is not None and total_steps <= 0:
            problems.append(f"model.total_steps must be > 0, got {total_steps}")
        if problems:
            raise ValueError("Invalid model config: " + "; ".join(problems))
        self.save_hyperparameters()
        self.model_name = model_name
        # SigLIP needs a learnable logit bias; -10 is the SigLIP paper's initialisation.
        extra = {"init_logit_bias": -10.0} if loss == "siglip" else {}
        self.model, self.preprocess_train, self.preprocess_val = build_model_and_transforms(
            model_name, pretrained, **extra
        )
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.loss_fn: torch.nn.Module | None = None
        self._per_device_batch: int | None = None
        self._last_step_time: float | None = None
        self._worker_stats: dict[Any, dict[str, int]] = {}
        self._val_features: list[tuple[torch.Tensor, torch.Tensor]] = []

    # ---------------------------------------------------------------- bookkeeping
    def setup(self, stage: str) -> None:
        # Built here, not in __init__: only now does the trainer know rank and world size.
        self.loss_fn = build_loss(self.hparams.loss, rank=self.global_rank, world_size=self.trainer.world_size)
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and getattr(dm, "batch_size", None):
            self._per_device_batch = int(dm.batch_size)

    @property
    def samples_seen(self) -> int:
        """global_step × per-device batch × world size × gradient accumulation."""
        if self._trainer is None or self._per_device_batch is None:
            return 0
        t = self.trainer
        return self.global_step * self._per_device_batch * t.world_size * t.accumulate_grad_batches

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Self-describing checkpoints: `python -m train export` needs no registry lookups.
        checkpoint["open_clip"] = {"model_name": self.model_name, "model_cfg": model_config(self.model_name)}

    # ---------------------------------------------------------------- training
    def training_step(self, batch, batch_idx: int):
        images, texts = batch[0], batch[1]
        if len(batch) > 2:
            self._worker_stats[batch[2]["source"]] = batch[2]["counts"]
        if self._per_device_batch is None:
            self._per_device_batch = images.shape[0]
        loss = contrastive_loss(self.model, images, texts, self.loss_fn)
        if not self._all_finite(loss):
            step = self.global_step
            if self.hparams.nan_policy == "skip":
                self.print(f"non-finite loss {loss.item()} at global step {step}: step skipped (model.nan_policy=skip)")
                self.log("train/skipped_steps", 1.0, reduce_fx="sum", on_step=False, on_epoch=True)
                return None
            raise FloatingPointError(
                f"Loss became {loss.item()} at global step {step} (batch {batch_idx}). Lower model.lr, raise "
                f"model.warmup_steps, enable trainer.gradient_clip_val, or set model.nan_policy=skip."
            )
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """All ranks agree, so a skip never leaves one rank waiting in backward's all-reduce."""
        ok = torch.isfinite(loss.detach()).float()
        if self.trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item() > 0)

    def optimizer_step(self, *args, **kwargs) -> None:
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
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        self.log("train/logit_scale", self.model.logit_scale.detach().exp())
        self.log("samples_seen", float(self.samples_seen))
        totals: dict[str, int] = {}
        for counts in self._worker_stats.values():
            for k, v in counts.items():
                totals[k] = totals.get(k, 0) + v
        for k, v in totals.items():
            if k != "ok":
                self.log(f"data/{k}", float(v))

    def on_train_start(self) -> None:
        self._last_step_time = None
        for logger in self.loggers:
            if type(logger).__name__ == "WandbLogger" and hasattr(logger.experiment, "define_metric"):
                logger.experiment.define_metric("samples_seen")
                for prefix in ("train/*", "val/*", "bias/*", "data/*"):
                    logger.experiment.define_metric(prefix, step_metric="samples_seen")

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.AdamW(param_groups(self.model, hp.weight_decay), lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)
        total = hp.total_steps or self._total_steps_from_trainer()
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, hp.warmup_steps, total, hp.min_lr_ratio)
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
        txt = self.model.encode_text(texts, normalize=True)
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
