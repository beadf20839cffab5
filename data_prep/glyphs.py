"""Sprites: RGBA images of one object (OpenMoji glyph) or SimCO shape, cropped to their alpha box.

Each sprite is drawn once at :data:`BASE_PX` and cached; scenes only resize cached sprites,
and resized sprites are cached too (at 64 px there are few distinct sizes), which keeps
rendering well above 500 images/s per core.
"""
from __future__ import annotations

import math
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from .vocab import OBJECTS, SHAPES, font_path, get_object

BASE_PX = 128  # font size / shape size of the master sprite for sprites up to this size
LARGE_BASE_PX = 512  # master size for bigger sprites (e.g. 224 px images), so they are not upscaled

#: fixed colour per SimCO shape, so a shape name always means one coloured shape
SHAPE_COLOURS: dict[str, tuple[int, int, int]] = {
    "circle": (220, 40, 40), "square": (40, 90, 220), "triangle": (30, 160, 60),
    "star": (240, 190, 20), "heart": (230, 70, 160), "cross": (120, 60, 200),
    "diamond": (20, 170, 190), "hexagon": (240, 120, 20), "pentagon": (110, 70, 40),
    "ring": (60, 60, 60),
}


@lru_cache(maxsize=2)
def _font(px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path()), px)


def _crop_alpha(img: Image.Image) -> Image.Image:
    box = img.getchannel("A").getbbox()
    if box is None:
        raise RuntimeError("sprite rendered blank (no opaque pixel)")
    return img.crop(box)


def _glyph(name: str, px: int) -> Image.Image:
    spec = get_object(name)
    pad = px // 2
    canvas = Image.new("RGBA", (px * 2 + pad, px * 2 + pad), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((pad, pad), spec.text, font=_font(px), embedded_color=True)
    return _crop_alpha(canvas)


def _polygon(n: int, r: float, c: float, rot: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [(c + r * math.cos(rot + 2 * math.pi * k / n), c + r * math.sin(rot + 2 * math.pi * k / n))
            for k in range(n)]


def _shape(name: str, px: int) -> Image.Image:
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; valid names: {', '.join(SHAPES)}")
    s = px
    # draw 4x larger and downsample: Pillow primitives are not antialiased
    big = 4 * s
    img = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    col = SHAPE_COLOURS[name] + (255,)
    c, r = big / 2, big * 0.48
    if name == "circle":
        d.ellipse([c - r, c - r, c + r, c + r], fill=col)
    elif name == "ring":
        d.ellipse([c - r, c - r, c + r, c + r], fill=col)
        d.ellipse([c - r * 0.55, c - r * 0.55, c + r * 0.55, c + r * 0.55], fill=(0, 0, 0, 0))
    elif name == "square":
        q = r * 0.85
        d.rectangle([c - q, c - q, c + q, c + q], fill=col)
    elif name == "triangle":
        d.polygon(_polygon(3, r, c), fill=col)
    elif name == "pentagon":
        d.polygon(_polygon(5, r, c), fill=col)
    elif name == "hexagon":
        d.polygon(_polygon(6, r, c, 0.0), fill=col)
    elif name == "diamond":
        d.polygon([(c, c - r), (c + r * 0.7, c), (c, c + r), (c - r * 0.7, c)], fill=col)
    elif name == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else r * 0.42
            a = -math.pi / 2 + math.pi * k / 5
            pts.append((c + rr * math.cos(a), c + rr * math.sin(a)))
        d.polygon(pts, fill=col)
    elif name == "cross":
        w = r * 0.33
        d.rectangle([c - w, c - r, c + w, c + r], fill=col)
        d.rectangle([c - r, c - w, c + r, c + w], fill=col)
    elif name == "heart":
        lobe = r * 0.52
        d.ellipse([c - 2 * lobe, c - r * 0.75, c, c - r * 0.75 + 2 * lobe], fill=col)
        d.ellipse([c, c - r * 0.75, c + 2 * lobe, c - r * 0.75 + 2 * lobe], fill=col)
        d.polygon([(c - 1.93 * lobe, c - r * 0.75 + 1.35 * lobe), (c + 1.93 * lobe, c - r * 0.75 + 1.35 * lobe),
                   (c, c + r)], fill=col)
    else:  # pragma: no cover - SHAPES and this table must agree
        raise AssertionError(name)
    return _crop_alpha(img.resize((s, s), Image.LANCZOS))


@lru_cache(maxsize=None)
def master_sprite(name: str, px: int = BASE_PX) -> Image.Image:
    """RGBA sprite of an object or shape name drawn at ``px``, cropped to its alpha box."""
    if name in OBJECTS:
        return _glyph(name, px)
    if name in SHAPES:
        return _shape(name, px)
    get_object(name)  # raises ValueError listing the object names
    raise AssertionError("unreachable")


@lru_cache(maxsize=8192)
def sprite(name: str, size: int) -> Image.Image:
    """RGBA sprite whose longer side is ``size`` pixels (aspect ratio kept)."""
    if size < 1:
        raise ValueError(f"sprite size must be >= 1 pixel, got {size}")
    m = master_sprite(name, BASE_PX if size <= BASE_PX * 0.9 else LARGE_BASE_PX)
    scale = size / max(m.size)
    w, h = max(1, round(m.width * scale)), max(1, round(m.height * scale))
    return m.resize((w, h), Image.LANCZOS)


def contact_sheet(names: list[str], cell: int = 72, cols: int = 12) -> Image.Image:
    """Grid of sprites with their names, for checking that no glyph renders blank or wrong."""
    rows = (len(names) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell, rows * cell), "white")
    draw = ImageDraw.Draw(sheet)
    for i, name in enumerate(names):
        sp = sprite(name, cell - 16)
        x, y = (i % cols) * cell, (i // cols) * cell
        sheet.paste(sp, (x + 4, y + 2), sp)
        draw.text((x + 2, y + cell - 12), name[:11], fill="black")
    return sheet
