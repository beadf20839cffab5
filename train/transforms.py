"""Training-time sample transforms: the hook through which mitigations change images and captions.

A transform sees the decoded PIL image, the caption and the sample's json metadata *before*
open_clip's preprocess and tokenizer run, so it can crop the image and rewrite the caption
consistently (e.g. drop objects that fall outside a crop).
"""
from __future__ import annotations

import random
from collections import Counter

from PIL import Image


class SampleTransform:
    """Base class. Subclasses implement ``apply`` and count what they did in ``self.counts``."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(
        self, image: Image.Image, caption: str, meta: dict, rng: random.Random
    ) -> tuple[Image.Image, str, dict]:
        return self.apply(image, caption, meta, rng)

    def apply(
        self, image: Image.Image, caption: str, meta: dict, rng: random.Random
    ) -> tuple[Image.Image, str, dict]:
        raise NotImplementedError

    def skip(self, rng: random.Random, p: float) -> bool:
        """True, counted as ``skipped``, for the share ``1 - p`` of samples left untouched."""
        if rng.random() >= p:
            self.counts["skipped"] += 1
            return True
        return False

    def check_metadata(self, meta: dict) -> None:
        """Raise ``ValueError`` naming what is missing if this transform cannot work on ``meta``.

        Called on the first sample so a mitigation that needs e.g. boxes fails at start,
        never as a silent no-op.
        """

    def stats(self) -> dict[str, int]:
        """Counters for logging, e.g. ``{"applied": 812, "skipped_no_list": 40}``."""
        return dict(self.counts)
