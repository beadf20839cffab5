"""The auxiliary-loss hook: ``model.aux_losses`` entries, what they receive, how their terms are summed.

An :class:`AuxLoss` is a small ``torch.nn.Module`` built from the config (``class_path`` +
``init_args``, like ``data.sample_transforms``). ``CLIPModule.training_step`` runs the contrastive
forward once, then calls every aux loss with an :class:`AuxBatch` (images, tokens, per-sample meta,
the open_clip model, its tokenizer and the features already computed) and adds the returned terms:

- ``forward(batch) -> {term name: value}`` where value is a scalar tensor (weighted by the loss's
  ``weight``) or ``(tensor, weight)`` (its own weight; weight 0 = logged only, never summed);
- every term is logged as ``train/aux/<term name>`` (the unweighted value);
- ``loss = contrastive + sum(weight * value)``; names must be unique over all configured losses.

DDP: a term that needs other ranks' features gathers them with :meth:`AuxBatch.gather` (autograd
all-gather) and normalises by the *global* count (:meth:`AuxBatch.all_sum`), so that DDP's gradient
average equals one process on the concatenated batch (tests/test_aux_losses.py checks it). Every
rank must call the same collectives in the same order, whatever its data.

Aux losses must not own trainable parameters (the optimizer holds the open_clip model's only);
they are refused when the module is built.
"""
from __future__ import annotations

import random
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, ClassVar, ContextManager, Iterable, Iterator, Union

import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  (all_gather with gradient; not imported by torch.distributed)
from torch import Tensor, nn

from data_prep.checks import is_real
from eval.text_encoding import encode_text
from train.data_samples import derive_seed

#: ``forward``'s result: term name -> value (weighted by ``AuxLoss.weight``) or (value, weight).
Terms = dict[str, Union[Tensor, tuple[Tensor, float]]]


def _distributed(world_size: int) -> bool:
    return world_size > 1 and dist.is_available() and dist.is_initialized()


@dataclass
class AuxBatch:
    """What an aux loss sees of one training step (one rank's part of it under DDP).

    Attributes:
        images: preprocessed images ``[B, 3, H, W]``.
        texts: caption tokens ``[B, context]``.
        meta: per-sample dicts (the sample json + ``caption`` as tokenised, ``__key__``,
            ``preprocess`` = the source region the model input shows, see
            :func:`train.aux_losses.geometry.preprocess_geometry`); None if the data module sent none.
        image_features, text_features: the L2-normalised embeddings the contrastive loss used.
        logit_scale: ``exp`` of the model's logit scale (with grad); logit_bias: SigLIP's, else None.
        model: the open_clip model (not DDP-wrapped); tokenizer: its open_clip tokenizer.
        rank, world_size: this rank and the number of ranks.
        seed, step: run seed and global step, for seeded draws (:meth:`rng`).
        trim_text: encode captions with ``eval.text_encoding``'s trimming, as the main loss does.
    """

    images: Tensor
    texts: Tensor
    meta: list[dict] | None
    image_features: Tensor
    text_features: Tensor
    logit_scale: Tensor
    logit_bias: Tensor | None
    model: nn.Module
    tokenizer: Callable[[list[str]], Tensor]
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    step: int = 0
    trim_text: bool = True

    def encode_text(self, captions: list[str]) -> Tensor:
        """L2-normalised text embeddings of ``captions`` (with grad), the way the main loss encodes."""
        tokens = self.tokenizer(captions).to(self.texts.device)
        return encode_text(self.model, tokens, normalize=True, trim=self.trim_text)

    def encode_extra(self, captions: dict[int, str]) -> tuple[Tensor, Tensor, float]:
        """One extra caption for some of this rank's samples (``{sample index: caption}``):
        ``(mask [B], embeddings [B, D], global count)``. Rows without a caption are zeros *in the
        graph* (a gather of them needs a backward on every rank, also one without captions)."""
        txt = self.text_features
        mask = torch.zeros(txt.shape[0], dtype=torch.bool, device=txt.device)
        emb = txt * 0.0
        if captions:
            where = torch.tensor(list(captions), device=txt.device)
            mask[where] = True
            emb = emb.index_copy(0, where, self.encode_text(list(captions.values())).to(txt.dtype))
        return mask, emb, self.all_sum(len(captions))

    def gather(self, x: Tensor) -> Tensor:
        """Concatenate every rank's ``x`` (same shape on all ranks) in rank order, with gradient."""
        if not _distributed(self.world_size):
            return x
        return torch.cat(torch.distributed.nn.functional.all_gather(x), dim=0)

    def gather_nograd(self, x: Tensor) -> Tensor:
        """Like :meth:`gather`, without gradient (masks, counts)."""
        if not _distributed(self.world_size):
            return x
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    def all_sum(self, value: float) -> float:
        """Sum of a number over ranks (e.g. the global count a term is normalised by)."""
        if not _distributed(self.world_size):
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.texts.device)
        dist.all_reduce(t)
        return float(t.item())

    def gather_objects(self, items: list) -> list:
        """Every rank's picklable ``items`` list, concatenated in rank order."""
        if not _distributed(self.world_size):
            return list(items)
        out: list = [None] * self.world_size
        dist.all_gather_object(out, list(items))
        return [x for part in out for x in part]

    def rng(self, purpose: str, index: int) -> random.Random:
        """A ``random.Random`` for sample ``index`` seeded by (run seed, purpose, sample key, step):
        the same draws whatever the rank, worker or batch layout, a new draw when the sample recurs."""
        key = (self.meta[index].get("__key__") or self.meta[index].get("key")) if self.meta else None
        if key is None:
            key = f"rank{self.rank}-index{index}"
        return random.Random(derive_seed(self.seed, "aux", purpose, str(key), self.step))


class AuxLoss(nn.Module):
    """Base class of ``model.aux_losses`` entries (see the module docstring).

    Subclasses set ``needs_meta = True`` if they read ``batch.meta`` (then the data module carries
    it; otherwise batches stay ``(images, tokens, stats)``), may override :meth:`check_model`
    (refuse a model they cannot work with, at build time) and :meth:`capture` (a context entered
    around the contrastive forward, e.g. to keep a tower's intermediate tokens), and implement
    :meth:`forward`.
    """

    needs_meta: ClassVar[bool] = False

    def __init__(self, weight: float = 1.0) -> None:
        """
        Args:
            weight: Factor of this loss's terms in the training loss (0: computed and logged only).
        """
        super().__init__()
        if not is_real(weight):
            raise ValueError(f"weight must be a finite number, got {weight!r}")
        self.weight = float(weight)

    def check_model(self, model: nn.Module) -> list[str]:
        """Problems that keep this loss from working with ``model`` (empty: it works)."""
        return []

    def capture(self, model: nn.Module) -> ContextManager:
        """Context entered around the contrastive forward of each training step."""
        return nullcontext()

    def forward(self, batch: AuxBatch) -> Terms:  # pragma: no cover - abstract
        raise NotImplementedError


def check_aux_losses(losses: Iterable, model: nn.Module) -> list[str]:
    """Every problem with a ``model.aux_losses`` list for ``model``, each naming its entry."""
    problems = []
    for i, loss in enumerate(losses):
        where = f"model.aux_losses[{i}]"
        if not isinstance(loss, AuxLoss):
            problems.append(f"{where} must be a train.aux_losses.AuxLoss, got {type(loss).__name__}")
            continue
        trainable = [n for n, p in loss.named_parameters() if p.requires_grad]
        if trainable:
            problems.append(f"{where} ({type(loss).__name__}) has trainable parameters ({', '.join(trainable[:3])}); "
                            "the optimizer holds only the open_clip model's, so they would never be trained")
        problems.extend(f"{where} ({type(loss).__name__}): {p}" for p in loss.check_model(model))
    return problems


@contextmanager
def capture_all(losses: Iterable[AuxLoss], model: nn.Module) -> Iterator[None]:
    """Every loss's :meth:`AuxLoss.capture` context, entered together around the contrastive forward."""
    with ExitStack() as stack:
        for loss in losses:
            stack.enter_context(loss.capture(model))
        yield


def aux_terms(losses: Iterable[AuxLoss], batch: AuxBatch) -> tuple[Tensor, dict[str, Tensor]]:
    """``(sum of weight x term, {term name: unweighted value})`` over ``losses``.

    Terms with weight 0 are returned (logged) but not summed, so they leave the gradient as it was.
    A name returned twice (by two losses) raises ``ValueError``.
    """
    total = batch.image_features.new_zeros(())
    values: dict[str, Tensor] = {}
    for loss in losses:
        if loss.needs_meta and batch.meta is None:
            raise ValueError(
                f"{type(loss).__name__} needs per-sample meta in the batch (images, tokens, stats, meta): "
                "train.data.WebDataModule adds it when a configured aux loss sets needs_meta; this batch has none "
                "(another data module?)")
        for name, term in loss(batch).items():
            value, weight = term if isinstance(term, tuple) else (term, loss.weight)
            if name in values:
                raise ValueError(f"aux loss term {name!r} of {type(loss).__name__} is returned twice: give the "
                                 "losses distinct names")
            if value.dim() != 0:
                raise ValueError(f"aux loss term {name!r} of {type(loss).__name__} must be a scalar, got shape "
                                 f"{tuple(value.shape)}")
            values[name] = value
            if weight != 0:
                total = total + weight * value
    return total, values
