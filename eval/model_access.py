"""One small adapter over any open_clip model: a training module, a checkpoint, or a pretrained tag.

Every probe sees a model only through :class:`ClipAdapter`: ``encode_image``, ``encode_text``
(both L2-normalised float32, on the model's ``device``; inputs are moved there and encoded in
chunks), ``preprocess`` (PIL image -> tensor) and ``tokenizer`` (list of str -> LongTensor).
Text goes through :func:`eval.text_encoding.encode_text` (length-trimmed where exact), each
distinct token row once.

``eval`` never imports ``train``: a CLIPModule checkpoint is read as plain data
(``hyper_parameters["model_name"]`` and the ``state_dict`` keys prefixed ``model.``), with the
tiny architectures of ``configs/models/*.json`` registered here from a path relative to the repo.
"""
from __future__ import annotations

import hashlib
import json
import logging
import pickle
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from eval.text_encoding import encode_text, pooled_positions

log = logging.getLogger(__name__)

#: ``configs/models`` of this repository (tiny open_clip model configs as JSON).
REPO_MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "models"
#: Prefix of the CLIP's parameters inside a CLIPModule ``state_dict`` (``self.model``).
MODULE_PREFIX = "model."

_registered: set[Path] = set()


def register_repo_model_configs(path: Path = REPO_MODEL_CONFIGS) -> None:
    """Make ``configs/models/*.json`` known to ``open_clip.create_model`` (idempotent)."""
    path = Path(path).resolve()
    if path in _registered or not path.is_dir():
        return
    open_clip.add_model_config(path)
    _registered.add(path)


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
    """

    model: nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    name: str = ""
    batch_size: int = 256
    trim_text: bool = True

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

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` preprocessed images -> ``(N, D)`` L2-normalised float32 embeddings."""
        return self._encode(self.model.encode_image, images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(N, L)`` token ids -> ``(N, D)`` L2-normalised float32 embeddings.

        Each distinct row is encoded once and scattered back. With ``trim_text`` on a trimmable
        model the distinct rows are sorted by EOT position and chunked by a token budget, so every
        chunk runs only as many positions as its longest caption needs (fewer, larger chunks of
        short captions: less per-call overhead on a busy CPU).
        """
        if tokens.shape[0] == 0:
            raise ValueError("nothing to encode: got an empty batch")
        unique, inverse = torch.unique(tokens, dim=0, return_inverse=True)
        sizes = None
        if self.trim_text:
            positions = pooled_positions(self.model, unique)
            if positions is not None:
                positions, order = torch.sort(positions, stable=True)
                unique, inverse = unique[order], torch.argsort(order)[inverse]
                sizes = _token_budget_chunks((positions + 1).tolist(), self.batch_size * unique.shape[1])
        emb = self._encode(partial(encode_text, self.model, trim=self.trim_text), unique, sizes)
        return emb[inverse.to(emb.device)]

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
        return cls._from_loaded(_load_file(path), path, device, model_name, batch_size)

    @classmethod
    def _from_loaded(
        cls, ckpt: Any, path: Path, device: str | torch.device, model_name: str | None, batch_size: int
    ) -> "ClipAdapter":
        state_dict = _clip_state_dict(ckpt, path)
        name = model_name or _model_name(ckpt, path)
        stored = ckpt.get("open_clip") or {}
        if model_name is None and isinstance(stored.get("model_cfg"), Mapping):
            # CLIPModule stores the architecture itself: no registry lookup needed
            name = _register_cfg(name, dict(stored["model_cfg"]))
        model, preprocess, tokenizer = _create(name, path)
        _load_weights(model, state_dict, path, name)
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
            ckpt = _load_file(Path(pretrained))
            if isinstance(ckpt, Mapping) and "hyper_parameters" in ckpt:
                return cls._from_loaded(ckpt, Path(pretrained), device, name, batch_size)
        register_repo_model_configs()
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
        except RuntimeError as e:
            raise ValueError(
                f"open_clip could not build {name!r} with pretrained={pretrained!r} ({str(e)[:300]}); "
                "for a checkpoint of train.module.CLIPModule use from_checkpoint / --checkpoint"
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


# ---------------------------------------------------------------------- checkpoint helpers


def _load_file(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Lightning stores hyper-parameters as arbitrary objects (e.g. jsonargparse namespaces),
        # which the safe loader refuses: the file is the user's own checkpoint, so load it fully.
        log.info("%s holds non-tensor objects; loading with weights_only=False", path)
    except Exception as e:  # torch raises several types for a file that is not a checkpoint
        raise ValueError(f"{path} is not a PyTorch checkpoint ({type(e).__name__}: {e})") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"{path} is not a PyTorch checkpoint ({type(e).__name__}: {e})") from e


def _clip_state_dict(ckpt: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise ValueError(
            f"{path} is not a Lightning checkpoint (no 'state_dict'); for a plain open_clip weights "
            "file use ClipAdapter.from_open_clip(name, pretrained=path) / --model NAME --pretrained FILE."
        )
    sd = {k[len(MODULE_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(MODULE_PREFIX)}
    if not sd:
        some = ", ".join(list(ckpt["state_dict"])[:5])
        raise ValueError(
            f"{path} has no parameters prefixed {MODULE_PREFIX!r} (found e.g. {some}): "
            "not a checkpoint of train.module.CLIPModule."
        )
    return sd


def _find_key(obj: Any, key: str) -> Any:
    """Depth-first lookup of ``key`` in nested mappings / namespaces (LightningCLI nests init args)."""
    if isinstance(obj, Mapping):
        if key in obj:
            return obj[key]
        children = obj.values()
    elif hasattr(obj, "__dict__"):
        if key in vars(obj):
            return vars(obj)[key]
        children = vars(obj).values()
    else:
        return None
    for child in children:
        found = _find_key(child, key)
        if found is not None:
            return found
    return None


def _register_cfg(name: str, cfg: dict) -> str:
    """Make ``cfg`` creatable: ``name`` if the registry already holds exactly it, else a new name."""
    register_repo_model_configs()
    if open_clip.get_model_config(name) == cfg:
        return name
    digest = hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:8]
    key = f"{name}-ckpt{digest}"
    if open_clip.get_model_config(key) is None:
        with tempfile.TemporaryDirectory() as tmp:  # open_clip reads the file at registration
            (Path(tmp) / f"{key}.json").write_text(json.dumps(cfg))
            open_clip.add_model_config(Path(tmp) / f"{key}.json")
    if open_clip.get_model_config(name) is not None:
        log.warning("checkpoint config of %r differs from the registered one; using the checkpoint's", name)
    return key


def _model_name(ckpt: Mapping, path: Path) -> str:
    name = (ckpt.get("open_clip") or {}).get("model_name") or _find_key(ckpt.get("hyper_parameters", {}),
                                                                         "model_name")
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"{path}: hyper_parameters has no 'model_name', so the architecture is unknown; "
            "pass it explicitly (from_checkpoint(path, model_name=...) / --model NAME)."
        )
    return name


def _create(name: str, path: Path) -> tuple[nn.Module, Callable, Callable]:
    register_repo_model_configs()
    if name.replace("/", "-") not in open_clip.list_models():
        raise ValueError(
            f"{path}: model {name!r} is neither a built-in open_clip config nor in {REPO_MODEL_CONFIGS}; "
            f"known: {', '.join(open_clip.list_models()[:10])}, ..."
        )
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    return model, preprocess, open_clip.get_tokenizer(name)


def _load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], path: Path, name: str) -> None:
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{path}: weights do not fit open_clip model {name!r}: {e}") from e
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path}: weights do not fit open_clip model {name!r}: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]} — wrong --model name or not a CLIP checkpoint?"
        )
