"""Shared fixtures: tiny img2dataset-layout shards written with webdataset.TarWriter (no data_prep)."""
from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

COLORS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 220, 30),
          "purple": (140, 40, 170), "orange": (240, 140, 20), "black": (10, 10, 10), "white": (245, 245, 245)}
SHAPES = ("square", "bar", "dot")


def _image(color: tuple[int, int, int], shape: str, rng: random.Random, size: int):
    from PIL import Image, ImageDraw

    bg = tuple(rng.randint(90, 160) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    x, y = rng.randint(0, size // 3), rng.randint(0, size // 3)
    if shape == "square":
        d.rectangle([x, y, x + size // 2, y + size // 2], fill=color)
    elif shape == "bar":
        d.rectangle([x, 0, x + size // 4, size - 1], fill=color)
    else:
        d.ellipse([x, y, x + size // 2, y + size // 2], fill=color)
    return img


def write_shards(
    out_dir: Path, n_shards: int = 2, per_shard: int = 64, size: int = 64, seed: int = 0,
    bad: dict[str, int] | None = None, caption_prefix: str = "",
) -> list[str]:
    """Write ``n_shards`` tars of learnable samples ("a red square" ↔ red square) plus sizes.json.

    ``bad`` adds corrupt samples to the first shard: ``{"corrupt_jpg": k, "no_caption": k}``;
    ``caption_prefix`` starts every caption (to tell shard sets apart in a mixture).
    """
    import webdataset as wds

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths, sizes = [], {}
    for s in range(n_shards):
        path = out_dir / f"{s:05d}.tar"
        count = 0
        with wds.TarWriter(str(path)) as sink:
            for i in range(per_shard):
                color = rng.choice(list(COLORS))
                shape = rng.choice(SHAPES)
                buf = io.BytesIO()
                _image(COLORS[color], shape, rng, size).save(buf, format="JPEG", quality=90)
                caption = f"{caption_prefix}a {color} {shape}"
                key = f"{s:05d}{i:04d}"
                sink.write({"__key__": key, "jpg": buf.getvalue(), "txt": caption,
                            "json": json.dumps({"key": key, "caption": caption, "status": "success"})})
                count += 1
            if s == 0 and bad:
                for j in range(bad.get("corrupt_jpg", 0)):
                    sink.write({"__key__": f"bad{j:04d}", "jpg": b"not a jpeg", "txt": "a broken image"})
                    count += 1
                for j in range(bad.get("no_caption", 0)):
                    buf = io.BytesIO()
                    _image(COLORS["red"], "dot", rng, size).save(buf, format="JPEG")
                    sink.write({"__key__": f"nocap{j:04d}", "jpg": buf.getvalue(), "txt": ""})
                    count += 1
        paths.append(str(path))
        sizes[path.name] = count
    (out_dir / "sizes.json").write_text(json.dumps(sizes))
    return paths


@pytest.fixture(autouse=True)
def _no_wandb_run_leaks():
    """Finish any W&B run a test left open, so a failed test cannot hand its run to the next one."""
    yield
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


@pytest.fixture(autouse=True, scope="session")
def _eval_set_cache(tmp_path_factory):
    """Rendered default eval sets (BiasEvalCallback, `eval comco` without --data) go to one cache
    per test session, never ~/.cache (the location is read when a set is needed)."""
    from eval.eval_sets import CACHE_ENV

    with pytest.MonkeyPatch.context() as mp:
        if not os.environ.get(CACHE_ENV):
            mp.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("eval-set-cache")))
        yield


@pytest.fixture
def tiny_shards(tmp_path: Path) -> list[str]:
    """Two shards × 64 learnable 64-px samples under ``tmp_path/shards``."""
    return write_shards(tmp_path / "shards")


from train.transforms import SampleTransform  # noqa: E402


class UpperCaption(SampleTransform):
    """Test transform: upper-cases every caption and counts how often it ran."""

    def apply(self, image, caption, meta, rng):
        self.counts["applied"] += 1
        return image, caption.upper(), meta
