"""open_clip model construction: tiny JSON configs from ``configs/models/``, always random init by default."""
from __future__ import annotations

from pathlib import Path

import open_clip

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_CONFIG_DIR = REPO_ROOT / "configs" / "models"

_registered = False


def register_model_configs() -> None:
    """Register ``<repo>/configs/models/*.json`` with open_clip (idempotent)."""
    global _registered
    if not _registered and MODEL_CONFIG_DIR.is_dir():
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


def check_model_name(model_name: str) -> None:
    """Raise ``ValueError`` listing the valid names if ``model_name`` is not a known open_clip config."""
    register_model_configs()
    if model_name.startswith(("hf-hub:", "local-dir:")):
        return
    valid = open_clip.list_models()
    if model_name not in valid:
        raise ValueError(
            f"Unknown model_name {model_name!r}. Valid open_clip configs (incl. {MODEL_CONFIG_DIR}): "
            + ", ".join(valid)
        )


def build_model_and_transforms(model_name: str, pretrained: str | None = None, **model_kwargs):
    """Return ``(model, preprocess_train, preprocess_val)``; random init unless ``pretrained`` is given.

    ``pretrained`` is an open_clip tag or a file path; tags download weights, so only pass one on purpose.
    ``model_kwargs`` go to the model constructor (e.g. ``init_logit_bias`` for SigLIP).
    """
    check_model_name(model_name)
    return open_clip.create_model_and_transforms(
        model_name, pretrained=pretrained, pretrained_text=False, pretrained_image=False, **model_kwargs
    )


def model_config(model_name: str) -> dict | None:
    """The open_clip JSON config of ``model_name`` (stored in checkpoints so exports are self-describing)."""
    register_model_configs()
    return open_clip.get_model_config(model_name)
