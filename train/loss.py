"""Contrastive loss construction shared by CLIPModule and the DDP gradient-equivalence test."""
from __future__ import annotations

from typing import Literal

import torch
from open_clip.loss import ClipLoss, SigLipLoss

from eval.text_encoding import trimmed_forward

LossKind = Literal["clip", "siglip"]


def build_loss(kind: LossKind = "clip", rank: int = 0, world_size: int = 1) -> torch.nn.Module:
    """open_clip loss for ``world_size`` ranks.

    ``local_loss=True, gather_with_grad=True`` is the only ClipLoss combination whose DDP gradients
    equal single-process gradients on the concatenated batch (see tests/test_train_ddp.py).
    """
    if kind == "clip":
        return ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world_size)
    if kind == "siglip":
        return SigLipLoss(rank=rank, world_size=world_size)
    raise ValueError(f"Unknown loss {kind!r}; valid: 'clip', 'siglip'")


def encode_pair(
    model: torch.nn.Module, images: torch.Tensor, texts: torch.Tensor, trim_text: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Both towers' forward: (image features, text features, logit scale, logit bias or None)."""
    with trimmed_forward(model, enabled=trim_text):
        out = model(images, texts)
    if isinstance(out, dict):
        return out["image_features"], out["text_features"], out["logit_scale"], out.get("logit_bias")
    return out[0], out[1], out[2], out[3] if len(out) > 3 else None


def contrastive_loss(
    model: torch.nn.Module, images: torch.Tensor, texts: torch.Tensor, loss_fn, trim_text: bool = True,
    features: dict | None = None,
) -> torch.Tensor:
    """Forward both towers of an open_clip ``CLIP`` (possibly DDP-wrapped) and return the scalar loss.

    ``trim_text``: the text tower runs only up to the batch's last end-of-text token where that is
    exact (``eval.text_encoding.trimmed_forward``); otherwise open_clip's own path.
    ``features``: a dict to receive what the loss was computed from (``image_features``,
    ``text_features``, ``logit_scale``, ``logit_bias``), for the aux losses (``train.aux_losses``).
    """
    image_features, text_features, logit_scale, logit_bias = encode_pair(model, images, texts, trim_text)
    if features is not None:
        features.update(image_features=image_features, text_features=text_features, logit_scale=logit_scale,
                        logit_bias=logit_bias)
    if logit_bias is not None:
        return loss_fn(image_features, text_features, logit_scale, logit_bias)
    return loss_fn(image_features, text_features, logit_scale)
