"""Model configs and checkpoints: which open_clip models exist, and reading/writing their weights.

The one home of both, for ``eval`` (which reads any open_clip model) and ``train`` (which builds
and exports them):

- **configs**: open_clip's built-in architectures, the tiny ones shipped with this package
  (``eval/model_configs/*.json``: ``clip-tiny``, ``clip-micro``; package data, so found from an
  installed package too) and your own JSON files in ``configs/models/`` under the working
  directory (later ones win on equal names). :func:`register_model_configs` makes them known to
  ``open_clip.create_model``; every function here calls it first.
- **checkpoints** of ``train.module.CLIPModule``, read as plain data (``eval`` never imports
  ``train``): the CLIP's parameters are the ``state_dict`` keys prefixed ``model.``, the
  architecture is ``checkpoint["open_clip"]`` (name and JSON config) or, in older files,
  ``hyper_parameters["model_name"]``. :func:`model_from_checkpoint` rebuilds the CLIP,
  :func:`export_checkpoint` writes a plain open_clip state_dict.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import pickle
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from data_prep.fileio import atomic_write, check_writable, write_json_atomic

log = logging.getLogger(__name__)

#: the tiny model configs shipped with the package
MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
#: your own model configs, relative to the working directory (registered when present)
USER_MODEL_CONFIG_DIR = Path("configs") / "models"
#: prefix of the CLIP's parameters inside a CLIPModule ``state_dict`` (``self.model``)
MODULE_PREFIX = "model."

_registered: set[Path] = set()


# ---------------------------------------------------------------------- configs


def register_model_configs() -> None:
    """Make the shipped and the user's model configs known to open_clip (idempotent)."""
    for path in (MODEL_CONFIG_DIR, USER_MODEL_CONFIG_DIR):
        path = path.resolve()
        if path not in _registered and path.is_dir():
            open_clip.add_model_config(path)
            _registered.add(path)


def check_model_name(model_name: str, where: str = "") -> None:
    """Raise ``ValueError`` listing the valid names if ``model_name`` is not a known open_clip config.

    ``where`` prefixes the message (e.g. the checkpoint it was read from).
    """
    register_model_configs()
    if model_name.startswith(("hf-hub:", "local-dir:")):
        return
    valid = open_clip.list_models()
    if model_name.replace("/", "-") not in valid:  # open_clip reads "ViT-B/32" as "ViT-B-32"
        raise ValueError(
            f"{where}Unknown model_name {model_name!r}. Valid open_clip configs (built-in, {MODEL_CONFIG_DIR} "
            f"and ./{USER_MODEL_CONFIG_DIR}): " + ", ".join(valid)
        )


def model_config(model_name: str) -> dict | None:
    """The open_clip JSON config of ``model_name`` (stored in checkpoints so exports are self-describing)."""
    register_model_configs()
    return open_clip.get_model_config(model_name)


def build_model_and_transforms(model_name: str, pretrained: str | None = None, **model_kwargs):
    """Return ``(model, preprocess_train, preprocess_val)``; random init unless ``pretrained`` is given.

    ``pretrained`` is an open_clip tag or a file path; tags download weights, so only pass one on purpose.
    ``model_kwargs`` go to the model constructor (e.g. ``init_logit_bias`` for SigLIP).
    """
    check_model_name(model_name)
    with _random_init_expected(not pretrained):
        return open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, pretrained_text=False, pretrained_image=False, **model_kwargs
        )


class _NoRandomInitNotice(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded for model ... initialized randomly." notice."""

    PATTERN = re.compile(r"^No pretrained weights loaded for model .*initialized randomly")

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.PATTERN.search(record.getMessage())


@contextlib.contextmanager
def _random_init_expected(expected: bool = True) -> Iterator[None]:
    """Silence open_clip's random-init notice (logged on the root logger) where random init is the
    intent: training from scratch, or a model whose weights are loaded from a checkpoint next."""
    if not expected:
        yield
        return
    root, notice = logging.getLogger(), _NoRandomInitNotice()
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)


def _register_cfg(name: str, cfg: dict) -> str:
    """Make ``cfg`` creatable: ``name`` if the registry already holds exactly it, else a new name."""
    register_model_configs()
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


# ---------------------------------------------------------------------- checkpoints


def load_checkpoint(path: str | Path) -> Any:
    """The checkpoint file's contents, on the CPU; a clear error if it is missing or not a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): a copy or save that did not finish; use another "
                         f"checkpoint (a run keeps one every run.checkpoint_every_n_steps in checkpoints/)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Lightning stores hyper-parameters as arbitrary objects (e.g. jsonargparse namespaces),
        # which the safe loader refuses: the file is the user's own checkpoint, so load it fully.
        log.info("%s holds non-tensor objects; loading with weights_only=False", path)
    except Exception as e:  # torch raises several types for a file that is not a checkpoint
        raise ValueError(f"{path} is not a PyTorch checkpoint, or a truncated one ({type(e).__name__}: {e})") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"{path} is not a PyTorch checkpoint, or a truncated one ({type(e).__name__}: {e})") from e


def clip_state_dict(ckpt: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The CLIP's parameters of a CLIPModule checkpoint, with the ``model.`` prefix stripped."""
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


def checkpoint_model_name(ckpt: Mapping, path: str | Path) -> str:
    """The open_clip model name a CLIPModule checkpoint was trained with."""
    name = (ckpt.get("open_clip") or {}).get("model_name") or _find_key(ckpt.get("hyper_parameters", {}),
                                                                         "model_name")
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"{path}: hyper_parameters has no 'model_name', so the architecture is unknown; "
            "pass it explicitly (from_checkpoint(path, model_name=...) / --model NAME)."
        )
    return name


def model_from_checkpoint(
    ckpt: Mapping, path: str | Path, model_name: str | None = None
) -> tuple[nn.Module, Callable, Callable, str]:
    """``(model, preprocess, tokenizer, name)`` of a loaded CLIPModule checkpoint, weights in place.

    The architecture is the one stored in the checkpoint (registered under a new name if it
    differs from a registered config of the same name); ``model_name`` overrides it.
    """
    state_dict = clip_state_dict(ckpt, path)
    name = model_name or checkpoint_model_name(ckpt, path)
    stored = ckpt.get("open_clip") or {}
    if model_name is None and isinstance(stored.get("model_cfg"), Mapping):
        # CLIPModule stores the architecture itself: no registry lookup needed
        name = _register_cfg(name, dict(stored["model_cfg"]))
    check_model_name(name, where=f"{path}: ")
    with _random_init_expected():  # the checkpoint's weights are loaded right below
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    _load_weights(model, state_dict, path, name)
    return model, preprocess, open_clip.get_tokenizer(name), name


def _load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], path: str | Path, name: str) -> None:
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{path}: weights do not fit open_clip model {name!r}: {e}") from e
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path}: weights do not fit open_clip model {name!r}: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]} — wrong --model name or not a CLIP checkpoint?"
        )


def plain_open_clip_recipe(model_name: str, out_path: str | Path) -> str:
    """The lines that load an :func:`export_checkpoint` output in plain open_clip."""
    config_json = Path(out_path).with_name(f"{model_name}.json")
    lines = ["import open_clip"]
    if config_json.exists():
        lines.append(f"open_clip.add_model_config({str(config_json)!r})")
    lines.append(f"model = open_clip.create_model({model_name!r}, pretrained={str(out_path)!r})")
    return "\n".join("  " + line for line in lines)


def export_checkpoint(ckpt_path: str | Path, out_path: str | Path) -> tuple[str, Path]:
    """Write the CLIP weights of ``ckpt_path`` to ``out_path`` (and the model config beside it).

    Beside it goes ``<model_name>.json``, the model's open_clip config in the form
    ``open_clip.add_model_config`` takes, so plain open_clip loads the weights without this package:
    ``open_clip.add_model_config(json_path); open_clip.create_model(model_name, pretrained=out_path)``.
    Returns ``(model_name, out_path)``.
    """
    check_writable(out_path, "OUT")  # before reading a large checkpoint
    ckpt = load_checkpoint(ckpt_path)
    state = clip_state_dict(ckpt, ckpt_path)
    name = checkpoint_model_name(ckpt, ckpt_path)
    cfg = (ckpt.get("open_clip") or {}).get("model_cfg")
    out_path = Path(out_path)
    with atomic_write(out_path, "wb") as f:
        torch.save(state, f)
    if cfg:
        write_json_atomic(out_path.with_name(f"{name}.json"), cfg)
    return name, out_path
