"""Per-sample work done inside DataLoader workers: decode, skip-and-count, transforms, preprocess, tokenize."""
from __future__ import annotations

import io
import json
import random
import warnings
from collections import Counter
from typing import Callable, Iterable, Iterator

import torch
from PIL import Image
from torch.utils.data import get_worker_info

from train.transforms import SampleTransform

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


class CountingHandler:
    """webdataset error handler: warn (up to ``max_warnings`` times), count, and continue."""

    def __init__(self, max_warnings: int = 5) -> None:
        self.counts: Counter[str] = Counter()
        self.max_warnings = max_warnings

    def __call__(self, exn: BaseException) -> bool:
        self.counts["read_errors"] += 1
        if self.counts["read_errors"] <= self.max_warnings:
            warnings.warn(f"skipping unreadable shard data: {exn!r}", stacklevel=2)
        return True


def _worker_id() -> int:
    info = get_worker_info()
    return info.id if info is not None else 0


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


class SampleProcessor:
    """Turns raw webdataset samples into ``(image_tensor, caption)`` and batches into
    ``(images, tokens, stats)``; ``stats`` carries this worker's cumulative skip/transform counters."""

    def __init__(
        self,
        preprocess: Callable,
        tokenizer: Callable,
        transforms: list[SampleTransform],
        handler: CountingHandler,
        seed: int = 0,
        max_warnings: int = 5,
    ) -> None:
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.transforms = transforms
        self.handler = handler
        self.seed = seed
        self.max_warnings = max_warnings
        self.counts: Counter[str] = Counter()
        self._checked = False
        self._rng: random.Random | None = None

    def _skip(self, kind: str, key: str, detail: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= self.max_warnings:
            warnings.warn(f"skipping sample {key!r} ({kind}): {detail}", stacklevel=3)

    def decode(self, sample: dict) -> tuple[Image.Image, str, dict] | None:
        """``(RGB image, caption, meta)`` or None (counted) if the image or caption is unusable."""
        key = sample.get("__key__", "?")
        img_key = next((k for k in IMAGE_KEYS if k in sample), None)
        if img_key is None:
            self._skip("no_image", key, f"no {'/'.join(IMAGE_KEYS)} member")
            return None
        try:
            image = Image.open(io.BytesIO(sample[img_key]))
            image = image.convert("RGB")
        except Exception as exn:  # corrupt bytes must never stop a run
            self._skip("decode_errors", key, repr(exn))
            return None
        meta: dict = {}
        if "json" in sample:
            try:
                meta = json.loads(sample["json"])
            except Exception as exn:
                self._skip("bad_json", key, repr(exn))
                meta = {}
        caption = sample["txt"].decode("utf-8", errors="replace").strip() if "txt" in sample else meta.get("caption", "")
        if not caption:
            self._skip("no_caption", key, "empty or missing caption")
            return None
        return image, caption, meta

    def samples(self, src: Iterable[dict]) -> Iterator[tuple[torch.Tensor, str]]:
        """webdataset ``compose`` stage: raw samples → preprocessed ``(image, caption)``."""
        if self._rng is None:
            self._rng = random.Random(hash((self.seed, _rank(), _worker_id())))
        for sample in src:
            decoded = self.decode(sample)
            if decoded is None:
                continue
            image, caption, meta = decoded
            if not self._checked:
                for t in self.transforms:
                    t.check_metadata(meta)
                self._checked = True
            for t in self.transforms:
                image, caption, meta = t(image, caption, meta, self._rng)
            yield self.preprocess(image), caption
            self.counts["ok"] += 1

    def stats(self) -> dict:
        counts = dict(self.counts) | dict(self.handler.counts)
        for t in self.transforms:
            for k, v in t.stats().items():
                counts[f"{type(t).__name__}/{k}"] = v
        return {"source": f"rank{_rank()}-worker{_worker_id()}", "counts": counts}

    def collate(self, items: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, torch.Tensor, dict]:
        images = torch.stack([im for im, _ in items])
        tokens = self.tokenizer([c for _, c in items])
        return images, tokens, self.stats()
