"""open_clip model construction for training: random init by default, configs from :mod:`eval.models`.

The model configs (built-in, the tiny ones shipped in ``eval/model_configs/``, your own in
``./configs/models/``) and checkpoint reading live in :mod:`eval.models`; the names here are kept
for ``train.module`` and older imports.
"""
from __future__ import annotations

from pathlib import Path

from eval.models import (  # noqa: F401  (re-exported)
    MODEL_CONFIG_DIR,
    build_model_and_transforms,
    check_model_name,
    model_config,
    register_model_configs,
)

#: the source checkout (``configs/*.yaml`` live there); only meaningful when running from it
REPO_ROOT = Path(__file__).resolve().parent.parent
