"""Contrastive batches larger than memory: the loss over K micro-batches' features, one graph at a time.

``model.accumulate_contrastive: K`` (GradCache, Gao et al. 2021; open_clip's ``--accum-freq`` idea
applied within one data batch): each device's batch of B is cut into K micro-batches and

1. every micro-batch runs both towers without a graph; the features are kept (B × embed, small);
2. the contrastive loss runs on all B features (gathered over ranks as usual); its gradient with
   respect to each feature is taken, and the logit scale's gradient comes from this loss directly;
3. each micro-batch runs again with a graph, back-propagates ``<features, their gradient>`` and
   frees its activations before the next one runs.

By the chain rule the parameters' gradient equals the one of the single batch of B (and under DDP
of the world's B × ranks), with the activation memory of B / K samples plus the features; the cost
is one extra forward pass. The second forward replays the first's random state, so dropout-style
randomness draws the same masks both times. Lightning's ``accumulate_grad_batches`` still works on
top (its loss scale is applied to every micro-batch's backward).

Backward calls inside ``training_step`` never reach DDP's reducer: it ignores gradient hooks until
the (DDP-wrapped) forward has returned, exactly as under ``no_sync``. The last micro-batch's graph is
returned inside the loss, so Lightning's own backward all-reduces the summed gradients once.
tests/test_contrastive_cache.py checks all of it against the single big batch, with 2 gloo ranks.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from train.loss import encode_pair

#: no accumulation: one forward with a graph over the whole batch
OFF = 1


def check_accumulate_contrastive(k: int, aux_losses: list, model: nn.Module) -> list[str]:
    """Problems with ``model.accumulate_contrastive = k`` (an integer >= 1) beside the aux losses and the
    model (empty: valid), each naming the config path."""
    if k == OFF:
        return []
    problems = []
    if aux_losses:
        names = ", ".join(type(loss).__name__ for loss in aux_losses)
        problems.append(
            f"model.accumulate_contrastive={k} cannot be combined with model.aux_losses ({names}): they need the "
            "features' graph and extra text forwards of the whole batch; use accumulate_contrastive: 1 with them")
    norms = [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        problems.append(
            f"model.accumulate_contrastive={k}: this model has BatchNorm layers ({norms[0]}, ...), which normalise "
            "over each micro-batch, so the gradient would not equal the full batch's; use a ViT model or 1")
    return problems


def check_batch(k: int, batch_size: int) -> None:
    """Refuse a batch too small to cut into ``k`` micro-batches."""
    if batch_size < k:
        raise ValueError(f"model.accumulate_contrastive={k} needs at least {k} samples per device batch, got a "
                         f"batch of {batch_size}: lower accumulate_contrastive or raise data.batch_size")


def _rng_state() -> tuple[Tensor, list[Tensor]]:
    devices = range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


@contextmanager
def _replayed_rng(state: tuple[Tensor, list[Tensor]]) -> Iterator[None]:
    """Run with ``state``'s CPU and CUDA random state; the state from before is restored after."""
    devices = list(range(len(state[1])))
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(state[0])
        for d, s in zip(devices, state[1]):
            torch.cuda.set_rng_state(s, d)
        yield


def _features_loss(loss_fn, image_features: Tensor, text_features: Tensor, scale: Tensor, bias: Tensor | None) -> Tensor:
    return loss_fn(image_features, text_features, scale) if bias is None else loss_fn(image_features, text_features, scale, bias)


def cached_contrastive_loss(
    model: nn.Module, images: Tensor, texts: Tensor, loss_fn, k: int, backward: Callable[[Tensor], None],
    trim_text: bool = True,
) -> Tensor:
    """The contrastive loss of the whole batch, its gradient built micro-batch by micro-batch.

    ``backward(tensor)`` back-propagates one micro-batch's share (the caller applies its loss scale
    and mixed-precision scaling). Returns the loss (the value of ``contrastive_loss`` on the whole
    batch) carrying the graph of the last micro-batch and of the logit scale/bias: the caller's
    ordinary backward of it completes the gradient. A non-finite loss returns before any backward.
    """
    check_batch(k, images.shape[0])
    chunks = list(zip(images.tensor_split(k), texts.tensor_split(k)))
    states, image_parts, text_parts = [], [], []
    with torch.no_grad():
        for imgs, txts in chunks:
            states.append(_rng_state())  # the random state advances as in one pass over the batch
            img, txt, _, _ = encode_pair(model, imgs, txts, trim_text)
            image_parts.append(img)
            text_parts.append(txt)
    image_features = torch.cat(image_parts).requires_grad_()
    text_features = torch.cat(text_parts).requires_grad_()
    inner = getattr(model, "module", model)
    scale = inner.logit_scale.exp()
    bias = getattr(inner, "logit_bias", None)
    loss = _features_loss(loss_fn, image_features, text_features, scale, bias)
    if not torch.isfinite(loss.detach()):
        return loss
    grad_img, grad_txt = torch.autograd.grad(loss, [image_features, text_features], retain_graph=True)
    sizes = [c[0].shape[0] for c in chunks]
    surrogate = None
    for i, ((imgs, txts), gi, gt) in enumerate(zip(chunks, grad_img.split(sizes), grad_txt.split(sizes))):
        with _replayed_rng(states[i]):
            img, txt, _, _ = encode_pair(model, imgs, txts, trim_text)
        share = (img * gi).sum() + (txt * gt).sum()  # d share / d params = this micro-batch's part of d loss
        if i < len(chunks) - 1:
            backward(share)
        else:
            surrogate = share
    # value: the loss; gradient: the logit scale's (through `loss`) + the last micro-batch's share
    return loss + (surrogate - surrogate.detach())
