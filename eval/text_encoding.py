"""Length-trimmed text encoding: run an open_clip text tower only on the tokens that exist.

open_clip's ``encode_text`` runs the text transformer over the full ``context_length`` (77 for the
standard models) although captions end after a dozen tokens. For a tower with a *causal*
attention mask and *argmax/EOS pooling*, the output at position ``i`` depends only on tokens
``0..i`` and only one position per row is pooled, so every token after the batch's last pooled
position is dead weight: running the tower on ``text[:, :L]`` with ``L`` = (last pooled position
of the batch) + 1 — positional embedding and causal mask sliced to ``L`` — gives the same
embeddings and the same gradients (equal up to float rounding of smaller matrix products,
~1e-6; see tests/test_text_encoding.py).

:func:`encode_text` is that function: a drop-in for ``model.encode_text(text, normalize)`` that
mirrors open_clip's code path line by line except for the slicing, and falls back to open_clip's
own ``encode_text`` whenever the equivalence is not certain for the model at hand. Why a model
falls back is returned by :func:`trim_ineligibility` and logged once per model class and reason.

Eligible (see :func:`trim_ineligibility`): an open_clip ``CLIP`` (its own ``encode_text``) or a
``CustomTextCLIP`` whose tower is an open_clip ``TextTransformer`` (its own ``forward``), with

- pooling ``argmax`` (EOT = highest token id) or ``eos`` (first ``eos_id``): the pooled index of
  each row is the first occurrence of a value, which trimming after it cannot change;
- the standard causal mask (``-inf`` strictly above the diagonal, 0 elsewhere);
- no appended CLS token and no padding mask (both make the output depend on the padding);
- an open_clip ``Transformer``/``CustomTransformer`` of ``ResidualAttentionBlock`` /
  ``CustomResidualAttentionBlock`` blocks, whose ops are per-token except the masked attention.

Everything else (``last``/``first``/``avg``/``none`` pooling, bidirectional towers such as
SigLIP's, HF text towers, CoCa, custom text models) goes through ``model.encode_text`` unchanged,
as does every call with ``trim=False`` (the switch) and every batch that cannot be trimmed
(a caption that fills the context): those outputs are bit-identical to open_clip's.

For ``model(images, texts)`` (training; works through DDP) use :func:`trimmed_forward`.
"""
from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.transformer import (
    CustomResidualAttentionBlock,
    CustomTransformer,
    ResidualAttentionBlock,
    TextTransformer,
    Transformer,
    text_global_pool,
)
from torch import nn

__all__ = ["encode_text", "trim_ineligibility", "pooled_positions", "trimmed_forward", "TRIMMABLE_POOL_TYPES"]

log = logging.getLogger(__name__)

#: pool types whose pooled index is the first occurrence of a value in the row (argmax: the
#: highest id = EOT of open_clip's tokenizer; eos: the first ``eos_id``).
TRIMMABLE_POOL_TYPES = ("argmax", "eos")
_SAFE_BLOCKS = (ResidualAttentionBlock, CustomResidualAttentionBlock)
_SAFE_TRANSFORMERS = (Transformer, CustomTransformer)

_logged: set[tuple[str, str]] = set()
#: model -> (id, _version of its attn_mask when checked, is it the standard causal mask): the
#: mask is compared once per model, so a training step on a GPU does not sync the host for it.
_mask_checked: "weakref.WeakKeyDictionary[nn.Module, tuple[int, int, bool]]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class _TextTower:
    """The parts of an eligible text tower, read from ``CLIP`` itself or ``CustomTextCLIP.text``."""

    token_embedding: nn.Module
    positional_embedding: torch.Tensor
    attn_mask: torch.Tensor
    transformer: nn.Module
    ln_final: nn.Module
    text_projection: Optional[nn.Module | torch.Tensor]
    pool_type: str
    eos_id: Optional[int]


def _is_causal(owner: nn.Module, mask: torch.Tensor, n: int) -> bool:
    hit = _mask_checked.get(owner)
    if hit is not None and hit[:2] == (id(mask), mask._version):
        return hit[2]
    ok = mask.ndim == 2 and tuple(mask.shape) == (n, n)
    if ok:
        want = torch.full((n, n), float("-inf")).triu_(1)
        ok = torch.equal(mask.detach().float().cpu(), want)
    _mask_checked[owner] = (id(mask), mask._version, ok)
    return ok


def _tower(model: nn.Module) -> _TextTower | str:
    """The trimmable text tower of ``model``, or the reason there is none."""
    cls = type(model)
    if isinstance(model, CLIP) and cls.encode_text is CLIP.encode_text:
        parts = dict(
            token_embedding=model.token_embedding, positional_embedding=model.positional_embedding,
            attn_mask=model.attn_mask, transformer=model.transformer, ln_final=model.ln_final,
            text_projection=model.text_projection, pool_type=model.text_pool_type,
            eos_id=getattr(model, "text_eos_id", None),
        )
    elif isinstance(model, CustomTextCLIP) and cls.encode_text is CustomTextCLIP.encode_text:
        text = model.text
        if type(text) is not TextTransformer:
            return f"text tower is {type(text).__name__}, not open_clip's TextTransformer (e.g. an HF text model)"
        if text.cls_emb is not None:
            return "text tower appends a CLS token, whose output attends to the padding"
        if getattr(text, "use_pad_mask", False):
            return "text tower masks padding tokens (bidirectional pad mask)"
        if text.output_tokens:
            return "text tower returns token outputs (output_tokens=True)"
        parts = dict(
            token_embedding=text.token_embedding, positional_embedding=text.positional_embedding,
            attn_mask=text.attn_mask, transformer=text.transformer, ln_final=text.ln_final,
            text_projection=text.text_projection, pool_type=text.pool_type, eos_id=getattr(text, "eos_id", None),
        )
    else:
        return (f"{cls.__name__} is not an open_clip CLIP/CustomTextCLIP with open_clip's own encode_text "
                "(custom or CoCa-style text model)")
    tower = _TextTower(**parts)
    if tower.pool_type not in TRIMMABLE_POOL_TYPES:
        return f"text pool type {tower.pool_type!r} reads positions that depend on the padding (trimmable: argmax, eos)"
    if tower.pool_type == "eos" and tower.eos_id is None:
        return "text pool type 'eos' without an eos_id"
    if tower.attn_mask is None:
        return "text tower has no causal attention mask (bidirectional, e.g. SigLIP)"
    if not _is_causal(model, tower.attn_mask, tower.positional_embedding.shape[0]):
        return "text attention mask is not the standard causal mask"
    if type(tower.transformer) not in _SAFE_TRANSFORMERS:
        return f"text transformer is {type(tower.transformer).__name__}, not open_clip's Transformer"
    odd = sorted({type(b).__name__ for b in tower.transformer.resblocks if type(b) not in _SAFE_BLOCKS})
    if odd:
        return f"text transformer has blocks {odd}, not known to be per-token apart from masked attention"
    return tower


def trim_ineligibility(model: nn.Module) -> str | None:
    """Why ``model``'s text tower cannot be run on trimmed tokens exactly; ``None`` if it can."""
    tower = _tower(model)
    return tower if isinstance(tower, str) else None


def _pooled(tower: _TextTower, text: torch.Tensor) -> torch.Tensor:
    """Per row, the position ``text_global_pool`` reads (same rule, on token ids only)."""
    if tower.pool_type == "argmax":
        return text.argmax(dim=-1)
    return (text == tower.eos_id).int().argmax(dim=-1)


def pooled_positions(model: nn.Module, text: torch.Tensor) -> torch.Tensor | None:
    """Per row of ``text``, the position the model pools; ``None`` if the model is not trimmable.

    Sorting rows by it before batching lets each batch trim to its own (short) length.
    """
    tower = _tower(model)
    return None if isinstance(tower, str) else _pooled(tower, text)


def _fallback(model: nn.Module, reason: str) -> None:
    key = (type(model).__name__, reason)
    if key not in _logged:
        _logged.add(key)
        log.info("text encoding of %s is not length-trimmed: %s; using open_clip's encode_text", key[0], reason)


def _open_clip_path(model: nn.Module, text: torch.Tensor, normalize: bool) -> torch.Tensor:
    # normalize=False is open_clip's default; not passing it keeps custom encode_text(text) working
    return model.encode_text(text, normalize=True) if normalize else model.encode_text(text)


def encode_text(model: nn.Module, text: torch.Tensor, normalize: bool = False, trim: bool = True) -> torch.Tensor:
    """``model.encode_text(text, normalize)``, run on ``text[:, :L]`` where that is exact.

    Args:
        model: an open_clip model (the bare model, not a DDP wrapper).
        text: ``(B, context_length)`` token ids.
        normalize: L2-normalise the features (as open_clip's flag).
        trim: the switch: ``False`` always calls ``model.encode_text`` (bit-identical to it).

    ``L`` = the batch's last pooled (EOT/EOS) position + 1. Computing it reads one integer back
    from the device (a host sync per call on a GPU). If the model is not eligible
    (:func:`trim_ineligibility`, logged once) or no token can be dropped, the call is open_clip's.
    """
    if not trim:
        return _open_clip_path(model, text, normalize)
    tower = _tower(model)
    if isinstance(tower, str):
        _fallback(model, tower)
        return _open_clip_path(model, text, normalize)
    # the class's own method (= open_clip's, checked by _tower): bypasses trimmed_forward's shadow
    untrimmed = type(model).encode_text
    if text.ndim != 2 or text.shape[0] == 0 or text.shape[1] != tower.positional_embedding.shape[0]:
        return untrimmed(model, text, normalize=normalize)  # open_clip's own result (or its error)
    length = int(_pooled(tower, text).max()) + 1
    if length >= text.shape[1]:
        return untrimmed(model, text, normalize=normalize)
    text = text[:, :length]
    # from here: open_clip's CLIP.encode_text / TextTransformer.forward, with [:length] slices
    cast_dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(text).to(cast_dtype)
    x = x + tower.positional_embedding[:length].to(cast_dtype)
    x = _run_transformer(tower.transformer, x, tower.attn_mask[:length, :length])
    x = tower.ln_final(x)
    x = text_global_pool(x, text, tower.pool_type, eos_token_id=tower.eos_id)
    if tower.text_projection is not None:
        if isinstance(tower.text_projection, nn.Linear):
            x = tower.text_projection(x)
        else:
            x = x @ tower.text_projection
    return F.normalize(x, dim=-1) if normalize else x


def _fast_path_ready(transformer: nn.Module) -> bool:
    """Inference through ``transformer`` may bypass open_clip's block code: no autograd, eval mode,
    and every block a plain ``ResidualAttentionBlock`` over ``nn.MultiheadAttention``."""
    return (not torch.is_grad_enabled() and not transformer.training and type(transformer) is Transformer
            and all(type(b) is ResidualAttentionBlock and not hasattr(b, "ln_1_kv")
                    and type(b.attn) is nn.MultiheadAttention for b in transformer.resblocks))


def _run_transformer(transformer: nn.Module, x: torch.Tensor, causal_mask: torch.Tensor) -> torch.Tensor:
    """``transformer(x, attn_mask=causal_mask)``; at inference, the same blocks with a boolean mask.

    open_clip casts the mask to the activations' dtype (``-inf`` floats), which keeps
    ``nn.MultiheadAttention`` off its fused inference path; the boolean mask (``True`` where the
    float one is ``-inf``) masks the same positions and lets it take that path (the speed-up and the
    agreement: ``bench/bench_probes.py --compare-fused``, docs/benchmarks.md). Training and autograd
    keep open_clip's own code.
    """
    if not _fast_path_ready(transformer):
        return transformer(x, attn_mask=causal_mask)
    blocked = torch.isneginf(causal_mask)
    if not transformer.batch_first:
        x = x.transpose(0, 1)
    for block in transformer.resblocks:  # ResidualAttentionBlock.forward without ln_1_kv, bool mask
        h = block.ln_1(x)
        x = x + block.ls_1(block.attn(h, h, h, need_weights=False, attn_mask=blocked)[0])
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x if transformer.batch_first else x.transpose(0, 1)


@contextmanager
def trimmed_forward(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the block, ``model(images, texts)`` encodes text with :func:`encode_text`.

    ``model`` may be wrapped in DDP (``.module``): the call still goes through the wrapper's
    ``forward``, so gradient synchronisation is untouched. open_clip's ``CLIP.forward`` calls
    ``self.encode_text(text, normalize=True)``; the inner model's ``encode_text`` is shadowed by
    an instance attribute for the duration of the block only (nothing persists into pickles,
    checkpoints or ``state_dict``); a nested block leaves the outer one's in place.
    """
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    reason = trim_ineligibility(inner) if enabled else None
    if reason is not None:
        _fallback(inner, reason)
    if not enabled or reason is not None or "encode_text" in vars(inner):
        yield model
        return
    # a plain function in the instance dict: CLIP.forward's self.encode_text(...) reaches it
    inner.encode_text = lambda text, normalize=False: encode_text(inner, text, normalize=normalize)
    try:
        yield model
    finally:
        del inner.encode_text
