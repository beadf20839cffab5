"""Where a sample's pixels end up in the model input: the preprocess crop, boxes on the patch grid.

open_clip's training preprocess is ``RandomResizedCrop(size, scale=(0.9, 1))`` (+ tensor/normalise):
for a 64 px rendered image the crop moves a box by up to ~9 px, half a 16 px patch, so boxes are
mapped through the crop actually drawn. :func:`preprocess_geometry` replays the geometric steps of
a torchvision ``Compose`` (``RandomResizedCrop``, ``Resize``, ``CenterCrop``) with torch's current
generator *state*, which the data module reseeds per image before running the preprocess, so the
region it returns is the one the image went through (``train.data_samples`` calls it with the
generator restored afterwards: the images are unchanged). Any other geometric step (pad, flip,
affine, open_clip's ``ResizeKeepRatio``) gives None: boxes of such samples are refused, not guessed.

Boxes are ``[x, y, w, h]`` in the pixels of the image *after* the sample transforms (the mitigation
crops already map them there).
"""
from __future__ import annotations

import math
from types import FunctionType
from typing import Any, Callable

import torch
from torchvision import transforms as T

#: transforms that do not move pixels (by class name: open_clip's own are not torchvision classes)
_NON_GEOMETRIC = {"MaybeConvertMode", "MaybeToTensor", "ToTensor", "PILToTensor", "Normalize", "ConvertImageDtype",
                  "ColorJitter", "Grayscale", "RandomGrayscale", "ToDtype", "ToImage", "_convert_to_rgb"}


def preprocess_geometry(preprocess: Callable, size: tuple[int, int]) -> dict[str, list[float]] | None:
    """``{"crop": [left, top, width, height], "size": [out_w, out_h]}``: the region of a ``size``
    (w, h) source image that ``preprocess`` maps onto its whole output. ``RandomResizedCrop`` params
    are drawn from torch's default generator exactly as its ``forward`` would draw them (so seed or
    restore the generator around this call). None if a step is not understood.
    """
    steps = getattr(preprocess, "transforms", [preprocess])
    ox, oy, sx, sy = 0.0, 0.0, 1.0, 1.0  # current = (source - o) * s
    w, h = float(size[0]), float(size[1])
    for t in steps:
        name = t.__name__ if isinstance(t, FunctionType) else type(t).__name__
        if isinstance(t, T.RandomResizedCrop):
            dummy = torch.empty(1, 1, 1).expand(1, int(h), int(w))  # get_params reads only the shape
            i, j, ch, cw = T.RandomResizedCrop.get_params(dummy, list(t.scale), list(t.ratio))
            ox, oy, w, h = ox + j / sx, oy + i / sy, float(cw), float(ch)
            ow, oh = _size_pair(t.size)
            sx, sy, w, h = sx * ow / w, sy * oh / h, float(ow), float(oh)
        elif isinstance(t, T.Resize):
            if t.max_size is not None:
                return None
            ow, oh = _resized(t.size, int(w), int(h))
            sx, sy, w, h = sx * ow / w, sy * oh / h, float(ow), float(oh)
        elif isinstance(t, T.CenterCrop):
            cw, ch = _size_pair(t.size)
            if cw > w or ch > h:
                return None  # padded: not a crop
            top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
            ox, oy, w, h = ox + left / sx, oy + top / sy, float(cw), float(ch)
        elif name not in _NON_GEOMETRIC:
            return None
    return {"crop": [ox, oy, w / sx, h / sy], "size": [w, h]}


def _size_pair(size: Any) -> tuple[int, int]:
    """torchvision's ``size`` (int or (h, w)) as (w, h)."""
    if isinstance(size, int):
        return size, size
    if len(size) == 1:
        return int(size[0]), int(size[0])
    return int(size[1]), int(size[0])


def _resized(size: Any, w: int, h: int) -> tuple[int, int]:
    """Output (w, h) of ``Resize(size)`` on a (w, h) image (torchvision's rule)."""
    if isinstance(size, int) or len(size) == 1:
        short = size if isinstance(size, int) else int(size[0])
        if w <= h:
            return short, int(short * h / w)
        return int(short * w / h), short
    return int(size[1]), int(size[0])


def map_box(bbox: Any, geometry: dict | None, min_visible: float = 0.5) -> tuple[float, float, float, float] | None:
    """``(x0, y0, x1, y1)`` of a source-pixel box ``[x, y, w, h]`` in model-input pixels, clipped to
    the input; None (refused) if the box is malformed or empty, the geometry unknown, or less than
    ``min_visible`` of the box's area lies inside the preprocess crop."""
    if geometry is None or not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None
    try:
        x, y, bw, bh = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, bw, bh)) or bw <= 0 or bh <= 0:
        return None
    left, top, cw, ch = geometry["crop"]
    out_w, out_h = geometry["size"]
    sx, sy = out_w / cw, out_h / ch
    x0, y0 = (x - left) * sx, (y - top) * sy
    x1, y1 = (x + bw - left) * sx, (y + bh - top) * sy
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, out_w), min(y1, out_h)
    if cx1 <= cx0 or cy1 <= cy0:
        return None
    if (cx1 - cx0) * (cy1 - cy0) < min_visible * (x1 - x0) * (y1 - y0):
        return None
    return cx0, cy0, cx1, cy1


def box_patches(box: tuple[float, float, float, float], image_size: tuple[int, int],
                grid: tuple[int, int]) -> list[int]:
    """Row-major indices of the patches whose centre lies inside ``box`` (model-input pixels,
    ``(x0, y0, x1, y1)``); at least one: the patch holding the box centre.

    ``image_size`` and ``grid`` are (h, w) as open_clip's ``VisionTransformer`` stores them.
    """
    gh, gw = grid
    ph, pw = image_size[0] / gh, image_size[1] / gw
    x0, y0, x1, y1 = box
    rows = [r for r in range(gh) if y0 <= (r + 0.5) * ph < y1]
    cols = [c for c in range(gw) if x0 <= (c + 0.5) * pw < x1]
    if rows and cols:
        return [r * gw + c for r in rows for c in cols]
    r = min(gh - 1, max(0, int(((y0 + y1) / 2) // ph)))
    c = min(gw - 1, max(0, int(((x0 + x1) / 2) // pw)))
    return [r * gw + c]
