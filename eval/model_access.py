"""One small adapter over any open_clip model: a training module, a checkpoint, or a pretrained tag.

Every probe sees a model only through :class:`ClipAdapter`: ``encode_image``, ``encode_text``
(both L2-normalised float32, on the model's ``device``; inputs are moved there and encoded in
chunks), ``preprocess`` (PIL image -> tensor) and ``tokenizer`` (list of str -> LongTensor).
Text goes through :func:`eval.prefix_sharing.encode_prefix_trie` at inference where exact (each
distinct caption prefix once), else :func:`eval.text_encoding.encode_text` (length-trimmed where
exact), each distinct token row once. Images go through :func:`eval.image_encoding.encode_image_fast`
at inference on a plain ViT (fused blocks, the last one on the class token only).

Model configs and checkpoint files are read by :mod:`eval.models` (``eval`` never imports
``train``: a CLIPModule checkpoint is plain data there).
"""
from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from eval.image_encoding import encode_image_fast, fast_image_ineligibility
from eval.models import load_checkpoint, model_from_checkpoint, register_model_configs
from eval.prefix_sharing import TriePlan, encode_prefix_trie, prefix_sharing_ineligibility, trie_chunks, trie_plan
from eval.text_encoding import encode_text, pooled_positions


def _token_row_key(row: torch.Tensor) -> bytes:
    return row.numpy().tobytes()


def _image_row_key(row: torch.Tensor) -> bytes:
    return hashlib.blake2b(row.contiguous().numpy().tobytes(), digest_size=16).digest()


@dataclass
class _Union:
    """The distinct rows of several registered tensors and, per tensor (by identity), where each of
    its rows is among them."""

    rows: torch.Tensor
    members: list[tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    def of(cls, tensors: list[torch.Tensor], key: Callable[[torch.Tensor], bytes]) -> "_Union | None":
        if not tensors:
            return None
        slot: dict[bytes, int] = {}
        firsts: list[torch.Tensor] = []
        members = []
        for t in tensors:
            cpu = t.detach().cpu()
            index = []
            for row in cpu:
                k = key(row)
                if k not in slot:
                    slot[k] = len(firsts)
                    firsts.append(row)
                index.append(slot[k])
            members.append((t, torch.tensor(index, dtype=torch.long)))
        return cls(torch.stack(firsts), members)

    def holds(self, x: torch.Tensor) -> bool:
        return any(t is x for t, _ in self.members)

    def index(self, x: torch.Tensor) -> torch.Tensor:
        return next(i for t, i in self.members if t is x)


#: token batches whose tries a :class:`ClipAdapter` keeps (the callback's probes use a handful)
PLAN_CACHE = 16


@dataclass
class ClipAdapter:
    """Uniform access to an open_clip CLIP for the probes.

    Args:
        model: the open_clip model (``CLIP`` / ``CustomTextCLIP``); held by reference, so an
            adapter built from a training module always sees the live weights.
        preprocess: PIL image -> float tensor ``(3, H, W)`` (open_clip's eval transform).
        tokenizer: list of captions -> LongTensor ``(N, context_length)``.
        name: a label for reports (model name, checkpoint path, ...).
        batch_size: inputs are encoded in chunks of this many items to bound memory (trimmed text:
            chunks of at most as many tokens as this many full-context rows).
        trim_text: run the text tower only up to each chunk's last EOT token where that is exact
            (:mod:`eval.text_encoding`; ``False``: open_clip's ``encode_text`` on every chunk).
        share_prefixes: at inference on an eligible model, run the text tower once per distinct
            caption prefix (:mod:`eval.prefix_sharing`; the same embeddings to float rounding);
            needs ``trim_text``. ``False``: length-trimmed batches of whole rows. The tries of
            the last few token batches are kept (:data:`PLAN_CACHE`): the probes encode the same
            captions at every evaluation, only the weights change.
        fast_images: at inference on a plain ViT, :func:`eval.image_encoding.encode_image_fast`
            (fused blocks, the last block on the class token only; the same embeddings to float
            rounding). ``False``: open_clip's ``encode_image``.
    """

    model: nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    name: str = ""
    batch_size: int = 256
    trim_text: bool = True
    share_prefixes: bool = True
    fast_images: bool = True
    _plans: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False, compare=False)
    _shared: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _memo: dict | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        missing = [m for m in ("encode_image", "encode_text") if not callable(getattr(self.model, m, None))]
        if missing:
            raise TypeError(
                f"{type(self.model).__name__} has no {' / '.join(missing)}: not a CLIP model; "
                "pass an open_clip CLIP (open_clip.create_model(...))."
            )
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {self.batch_size}")

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters (inputs are moved there)."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model's parameters (image inputs are cast to it)."""
        return next(p.dtype for p in self.model.parameters() if p.is_floating_point())

    def share_inputs(self, texts: Sequence[torch.Tensor | None], images: Sequence[torch.Tensor | None]) -> None:
        """Register the token and image tensors that each evaluation encodes (the callback's prepared
        inputs). Inside :meth:`evaluation`, the first request for one of them encodes the distinct rows
        of all of them together (one prefix trie over every caption, each distinct image once) and
        every request for a registered tensor is answered from that; other inputs encode as usual.
        The union's prefix-trie plan is built here (it depends on the tokens only), not at the first
        evaluation."""
        self._shared = {"text": _Union.of([t for t in texts if isinstance(t, torch.Tensor)], _token_row_key),
                        "image": _Union.of([t for t in images if isinstance(t, torch.Tensor)], _image_row_key)}
        if self._shared["text"] is not None and self._uses_trie():
            self._trie_plans(self._shared["text"].rows)  # depends on the tokens only: planned once, here

    @contextlib.contextmanager
    def evaluation(self) -> Iterator["ClipAdapter"]:
        """One evaluation with fixed weights: registered inputs (:meth:`share_inputs`) encode once."""
        self._memo = {}
        try:
            yield self
        finally:
            self._memo = None

    def _shared_rows(self, kind: str, x: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor]):
        union = self._shared.get(kind)
        if self._memo is None or union is None or not union.holds(x):
            return None
        if kind not in self._memo:
            self._memo[kind] = encode(union.rows)
        return self._memo[kind][union.index(x).to(self._memo[kind].device)]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` preprocessed images -> ``(N, D)`` L2-normalised float32 embeddings
        (at inference on a plain ViT: :func:`eval.image_encoding.encode_image_fast`, the same to
        float rounding)."""
        shared = self._shared_rows("image", images, self._encode_image)
        return shared if shared is not None else self._encode_image(images)

    def _encode_image(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # as the encoding will run
            fast = self.fast_images and fast_image_ineligibility(self.model) is None
        return self._encode(partial(encode_image_fast, self.model) if fast else self.model.encode_image, images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(N, L)`` token ids -> ``(N, D)`` L2-normalised float32 embeddings.

        Each distinct row is encoded once and scattered back. With ``share_prefixes`` (at
        inference, eligible model) the rows, in lexicographic order, are chunked by the size of
        their prefix trie and each distinct prefix runs once. Otherwise, with ``trim_text`` on a
        trimmable model, the rows are sorted by EOT position and chunked by a token budget, so every
        chunk runs only as many positions as its longest caption needs (fewer, larger chunks of
        short captions: less per-call overhead on a busy CPU).
        """
        if tokens.shape[0] == 0:
            raise ValueError("nothing to encode: got an empty batch")
        shared = self._shared_rows("text", tokens, self._encode_text)
        return shared if shared is not None else self._encode_text(tokens)

    def _encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        if self._uses_trie():
            inverse, chunks = self._trie_plans(tokens)
            with torch.no_grad():
                emb = torch.cat([F.normalize(encode_prefix_trie(self.model, rows, plan=plan).float(), dim=-1)
                                 for rows, plan in chunks])
            return emb[inverse.to(emb.device)]
        unique, inverse = torch.unique(tokens, dim=0, return_inverse=True)  # rows sorted lexicographically
        sizes = None
        if self.trim_text:
            positions = pooled_positions(self.model, unique)
            if positions is not None:
                positions, order = torch.sort(positions, stable=True)
                unique, inverse = unique[order], torch.argsort(order)[inverse]
                sizes = _token_budget_chunks((positions + 1).tolist(), self.batch_size * unique.shape[1])
        emb = self._encode(partial(encode_text, self.model, trim=self.trim_text), unique, sizes)
        return emb[inverse.to(emb.device)]

    def _trie_plans(self, tokens: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, TriePlan]]]:
        """``(inverse, [(rows, plan), ...])``: the distinct rows of ``tokens`` (lexicographic order)
        chunked by the size of their trie (at most a full batch's tokens of nodes), each chunk's
        :class:`TriePlan`, and where each input row is among the distinct ones; cached by content."""
        device = self.device
        key = (tuple(tokens.shape), str(device), self.batch_size,
               hashlib.blake2b(tokens.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).digest())
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        unique, inverse = torch.unique(tokens.cpu(), dim=0, return_inverse=True)  # rows sorted lexicographically
        budget = self.batch_size * unique.shape[1]  # trie nodes per chunk: the tokens of a full batch
        ends = pooled_positions(self.model, unique)
        sizes = trie_chunks(unique, ends + 1, budget)
        chunks = [(rows.to(device), trie_plan(rows, e.tolist()).to(device))
                  for rows, e in zip(torch.split(unique, sizes), torch.split(ends, sizes))]
        self._plans[key] = (inverse, chunks)
        while len(self._plans) > PLAN_CACHE:
            self._plans.popitem(last=False)
        return inverse, chunks

    def _uses_trie(self) -> bool:
        """Whether text encodes over a prefix trie now (switches on, model eligible at inference)."""
        if not (self.trim_text and self.share_prefixes):
            return False
        with torch.no_grad():  # as the encoding will run
            return prefix_sharing_ineligibility(self.model) is None

    def _encode(
        self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, sizes: list[int] | None = None
    ) -> torch.Tensor:
        device = self.device
        dtype = self.dtype if x.is_floating_point() else x.dtype  # e.g. a bf16-true model; tokens stay long
        outs = []
        with torch.no_grad():
            for chunk in torch.split(x, sizes or self.batch_size):
                outs.append(F.normalize(fn(chunk.to(device, dtype)).float(), dim=-1))
        if not outs:
            raise ValueError("nothing to encode: got an empty batch")
        return torch.cat(outs)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_module(cls, pl_module: Any, batch_size: int = 256) -> "ClipAdapter":
        """Adapter over a live LightningModule (``.model``, ``.tokenizer``, ``.preprocess_val``).

        ``trim_text`` follows the module's own switch (``.trim_text`` or ``hparams.trim_text``;
        on when it has none), so training and its probes encode text the same way.
        """
        missing = [a for a in ("model", "tokenizer", "preprocess_val") if getattr(pl_module, a, None) is None]
        if missing:
            raise AttributeError(
                f"{type(pl_module).__name__} lacks {', '.join(missing)}: BiasEvalCallback needs a module "
                "with .model (open_clip CLIP), .tokenizer and .preprocess_val (see docs/INTERFACES.md)."
            )
        return cls(
            model=pl_module.model,
            preprocess=pl_module.preprocess_val,
            tokenizer=pl_module.tokenizer,
            name=str(getattr(pl_module, "model_name", type(pl_module).__name__)),
            batch_size=batch_size,
            trim_text=_module_switch(pl_module, "trim_text", True),
        )

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "cpu", model_name: str | None = None,
        batch_size: int = 256,
    ) -> "ClipAdapter":
        """Adapter over a Lightning checkpoint of ``train.module.CLIPModule``.

        Args:
            path: the ``.ckpt`` file (e.g. ``runs/<name>/checkpoints/last.ckpt``).
            device: where to put the model.
            model_name: override for the open_clip config name; by default read from
                ``hyper_parameters["model_name"]`` in the checkpoint.
            batch_size: encoding chunk size.
        """
        path = Path(path)
        return cls._from_loaded(load_checkpoint(path), path, device, model_name, batch_size)

    @classmethod
    def _from_loaded(
        cls, ckpt: Any, path: Path, device: str | torch.device, model_name: str | None, batch_size: int
    ) -> "ClipAdapter":
        model, preprocess, tokenizer, name = model_from_checkpoint(ckpt, path, model_name)
        model.to(device).eval()
        return cls(model, preprocess, tokenizer, name=f"{name}@{path}", batch_size=batch_size)

    @classmethod
    def from_open_clip(
        cls, name: str, pretrained: str | None = None, device: str | torch.device = "cpu",
        batch_size: int = 256,
    ) -> "ClipAdapter":
        """Adapter over ``open_clip.create_model_and_transforms(name, pretrained)``.

        ``pretrained`` is an open_clip tag (downloads: needs network) or a weights file; a
        CLIPModule Lightning checkpoint given as the file is read with :meth:`from_checkpoint`.
        """
        if pretrained and Path(pretrained).is_file() and Path(pretrained).suffix == ".ckpt":
            ckpt = load_checkpoint(pretrained)
            if isinstance(ckpt, Mapping) and "hyper_parameters" in ckpt:
                return cls._from_loaded(ckpt, Path(pretrained), device, name, batch_size)
        register_model_configs()
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
        except (RuntimeError, AssertionError) as e:  # open_clip asserts on a pos_embed of another width
            named = sorted(p.stem for p in Path(pretrained).parent.glob("*.json")) if pretrained and \
                Path(pretrained).is_file() else []
            hint = (f"; the export beside it names its model: {', '.join(named)} (--model {named[0]})"
                    if len(named) == 1 and named[0] != name else "")
            raise ValueError(
                f"open_clip could not build {name!r} with pretrained={pretrained!r} ({' '.join(str(e).split())[:300]}): "
                f"the weights may be of another architecture{hint}; for a checkpoint of train.module.CLIPModule "
                "use from_checkpoint / --checkpoint"
            ) from e
        model.eval()
        return cls(model, preprocess, open_clip.get_tokenizer(name), name=f"{name}:{pretrained}",
                   batch_size=batch_size)


def model_image_size(adapter: Any, default: int = 64) -> int:
    """Input side of the adapter's image tower (``model.visual.image_size``), else ``default``.

    Works on a :class:`ClipAdapter` and on a training module alike (both hold ``.model``).
    """
    size = getattr(getattr(getattr(adapter, "model", None), "visual", None), "image_size", None)
    if isinstance(size, (tuple, list)):
        size = size[0]
    return int(size) if isinstance(size, int) and size > 0 else default


def _token_budget_chunks(lengths: list[int], budget: int) -> list[int]:
    """Sizes of consecutive chunks of rows with ascending ``lengths``: rows x longest <= budget."""
    sizes, start = [], 0
    while start < len(lengths):
        end = start + 1
        while end < len(lengths) and (end + 1 - start) * lengths[end] <= budget:
            end += 1
        sizes.append(end - start)
        start = end
    return sizes


def _module_switch(pl_module: Any, name: str, default: bool) -> bool:
    """``pl_module.<name>``, else ``pl_module.hparams[<name>]``, else ``default``."""
    value = getattr(pl_module, name, None)
    if value is None:
        value = (getattr(pl_module, "hparams", None) or {}).get(name)
    return default if value is None else bool(value)
