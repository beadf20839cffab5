"""Scene renderer: objects at given sizes and places on a background -> image + ground truth.

Ground truth per object: ``bbox`` [x, y, w, h] of the placed sprite and ``area`` = visible
pixels after occlusion (pixels whose top-most opaque owner (alpha >= 128) is that object).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence, Union

import numpy as np
from PIL import Image

from .glyphs import master_sprite, sprite

BACKGROUNDS = ("plain", "white", "noise", "gradient", "random")
ALPHA_OPAQUE = 128  # a sprite pixel counts as the object's where alpha >= this

#: slot centres as fractions of the image side, in slot (reading) order, for n objects.
#: n=3 is the paper's upper-left / middle / bottom-right diagonal.
SLOTS: dict[int, tuple[tuple[float, float], ...]] = {
    1: ((0.5, 0.5),),
    2: ((0.3, 0.3), (0.7, 0.7)),
    3: ((0.22, 0.22), (0.5, 0.5), (0.78, 0.78)),
    4: ((0.27, 0.27), (0.73, 0.27), (0.27, 0.73), (0.73, 0.73)),
    5: ((0.22, 0.22), (0.78, 0.22), (0.5, 0.5), (0.22, 0.78), (0.78, 0.78)),
}
SLOT_NAMES: dict[int, tuple[str, ...]] = {
    1: ("middle",),
    2: ("upper-left", "bottom-right"),
    3: ("upper-left", "middle", "bottom-right"),
    4: ("upper-left", "upper-right", "bottom-left", "bottom-right"),
    5: ("upper-left", "upper-right", "middle", "bottom-left", "bottom-right"),
}

Positions = Union[str, Sequence[tuple[int, int]]]


@lru_cache(maxsize=8192)
def _mask(name: str, size: int) -> np.ndarray:
    m = np.asarray(sprite(name, size).getchannel("A")) >= ALPHA_OPAQUE
    m.setflags(write=False)
    return m


@lru_cache(maxsize=None)
def _opaque_ratio(name: str) -> float:
    """Opaque pixels of the master sprite / (longer side)^2."""
    m = master_sprite(name)
    return float((np.asarray(m.getchannel("A")) >= ALPHA_OPAQUE).sum()) / max(m.size) ** 2


def size_for_area(name: str, area_fraction: float, image_size: int, max_side: float = 0.95) -> int:
    """Longer side (pixels) at which ``name`` covers about ``area_fraction`` of the image.

    Sizing by area rather than by longer side keeps thin objects (knife, skateboard) from being
    "large" in name only. The side is capped at ``max_side * image_size``.
    """
    side = (area_fraction * image_size**2 / _opaque_ratio(name)) ** 0.5
    return int(min(max(round(side), 1), round(max_side * image_size)))


def slot_centres(n: int, image_size: int) -> list[tuple[int, int]]:
    """Pixel centres of the ``n`` fixed slots (n = 1..5)."""
    if n not in SLOTS:
        raise ValueError(f"slot layouts exist for 1..5 objects, got {n}; use positions='random'")
    return [(round(fx * image_size), round(fy * image_size)) for fx, fy in SLOTS[n]]


def to_pixels(size: float, image_size: int) -> int:
    """Object size as pixels of its longer side: an int is pixels, a float in (0, 1] a fraction."""
    px = round(size * image_size) if isinstance(size, float) and size <= 1.0 else int(size)
    if not 1 <= px <= image_size:
        raise ValueError(f"object size {size!r} -> {px} px must lie in [1, image_size={image_size}]")
    return px


@lru_cache(maxsize=8)
def _unit_grid(s: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = (np.mgrid[0:s, 0:s] / max(s - 1, 1)).astype(np.float32)
    return yy, xx


def make_background(kind: str, image_size: int, rng: np.random.Generator) -> Image.Image:
    """RGB background: ``plain`` (random light colour), ``white``, ``noise``, ``gradient``, ``random``
    (one of the first three, ``plain``/``noise``/``gradient``) or a fixed colour ``"#rrggbb"``."""
    if kind.startswith("#") and len(kind) == 7:
        try:
            return Image.new("RGB", (image_size, image_size), tuple(int(kind[i:i + 2], 16) for i in (1, 3, 5)))
        except ValueError:
            pass  # falls through to the unknown-background error
    if kind == "random":
        kind = ("plain", "noise", "gradient")[int(rng.integers(3))]
    s = image_size
    if kind == "white":
        return Image.new("RGB", (s, s), (255, 255, 255))
    base = rng.integers(170, 256, size=3)
    if kind == "plain":
        return Image.new("RGB", (s, s), tuple(int(c) for c in base))
    base = base.astype(np.float32)
    if kind == "noise":
        arr = base + np.float32(12.0) * rng.standard_normal((s, s, 3), dtype=np.float32)
    elif kind == "gradient":
        other = rng.integers(150, 256, size=3).astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = _unit_grid(s)
        t = np.float32(np.cos(angle)) * xx + np.float32(np.sin(angle)) * yy
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-9)
        arr = base + (other - base) * t[..., None]
    else:
        raise ValueError(f"unknown background {kind!r}; valid: {', '.join(BACKGROUNDS)} or '#rrggbb'")
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def check_background(kind: str) -> None:
    """Raise ``ValueError`` (naming ``--background``) for an unknown background."""
    try:
        make_background(kind, 2, np.random.default_rng(0))
    except ValueError as e:
        raise ValueError(f"--background: {e}") from None


def _random_boxes(dims: list[tuple[int, int]], s: int, rng: np.random.Generator,
                  tries: int = 64) -> list[tuple[int, int]]:
    """Top-left corners for boxes of ``dims``, non-overlapping when possible (else least overlap).

    Each box draws ``tries`` candidate corners at once and keeps the first with the least total
    overlap with the boxes already placed.
    """
    placed = np.zeros((0, 4), dtype=np.int64)  # x0, y0, x1, y1
    out = []
    for w, h in dims:
        x = rng.integers(0, s - w + 1, size=tries)
        y = rng.integers(0, s - h + 1, size=tries)
        if len(placed):
            ow = np.minimum(x[:, None] + w, placed[None, :, 2]) - np.maximum(x[:, None], placed[None, :, 0])
            oh = np.minimum(y[:, None] + h, placed[None, :, 3]) - np.maximum(y[:, None], placed[None, :, 1])
            k = int(np.argmin((np.clip(ow, 0, None) * np.clip(oh, 0, None)).sum(1)))
        else:
            k = 0
        out.append((int(x[k]), int(y[k])))
        placed = np.vstack([placed, [[x[k], y[k], x[k] + w, y[k] + h]]])
    return out


def render_scene(
    objects: Sequence[str],
    sizes: Sequence[float],
    positions: Positions = "slots",
    image_size: int = 64,
    background: str = "plain",
    seed: int = 0,
    draw_order: Sequence[int] | None = None,
) -> tuple[Image.Image, list[dict]]:
    """Render a scene. Deterministic for ``seed``.

    Args:
        objects: object or SimCO shape names (vocab.OBJECTS / vocab.SHAPES), in slot order.
        sizes: longer side of each object, pixels (int) or fraction of ``image_size`` (float <= 1).
        positions: ``"slots"`` (fixed layout for n objects, see :data:`SLOTS`), ``"random"``
            (non-overlapping where possible) or explicit centre pixels per object.
        image_size: output side in pixels.
        background: one of :data:`BACKGROUNDS`.
        seed: seeds background colours/noise and random placement.
        draw_order: indices in painting order (later covers earlier); default largest first.
    Returns:
        RGB image and one dict per object, in the order of ``objects``:
        ``{name, bbox: [x, y, w, h], area, draw_index}``.
    """
    n = len(objects)
    if n == 0 or len(sizes) != n:
        raise ValueError(f"need one size per object, got {n} objects and {len(sizes)} sizes")
    rng = np.random.default_rng(seed)
    s = image_size
    px = [to_pixels(z, s) for z in sizes]
    sprites = [sprite(o, p) for o, p in zip(objects, px)]
    dims = [sp.size for sp in sprites]
    bg = make_background(background, s, rng)

    if isinstance(positions, str):
        if positions == "slots":
            centres = slot_centres(n, s)
            corners = [(cx - w // 2, cy - h // 2) for (cx, cy), (w, h) in zip(centres, dims)]
        elif positions == "random":
            corners = _random_boxes(dims, s, rng)
        else:
            raise ValueError(f"positions must be 'slots', 'random' or a list of centres, got {positions!r}")
    else:
        if len(positions) != n:
            raise ValueError(f"need one position per object, got {len(positions)} for {n} objects")
        corners = [(int(cx) - w // 2, int(cy) - h // 2) for (cx, cy), (w, h) in zip(positions, dims)]
    # keep every sprite fully inside the image
    corners = [(min(max(x, 0), s - w), min(max(y, 0), s - h)) for (x, y), (w, h) in zip(corners, dims)]

    order = list(draw_order) if draw_order is not None else sorted(range(n), key=lambda i: -px[i])
    if sorted(order) != list(range(n)):
        raise ValueError(f"draw_order must be a permutation of 0..{n - 1}, got {order}")
    canvas = bg.convert("RGBA")
    owner = np.full((s, s), -1, dtype=np.int16)
    for i in order:
        (x, y), (w, h) = corners[i], dims[i]
        canvas.alpha_composite(sprites[i], (x, y))
        owner[y:y + h, x:x + w][_mask(objects[i], px[i])] = i
    areas = np.bincount(owner[owner >= 0].ravel(), minlength=n)
    truth = [
        {"name": objects[i], "bbox": [corners[i][0], corners[i][1], dims[i][0], dims[i][1]],
         "area": int(areas[i]), "draw_index": order.index(i)}
        for i in range(n)
    ]
    return canvas.convert("RGB"), truth
