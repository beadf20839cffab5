"""A hand-built "model" for probe tests: embeddings chosen by the test, so every answer is known.

``preprocess`` maps a PIL image to its embedding (looked up by the image's pixels, or computed by a
function), ``encode_image`` only normalises; ``tokenizer`` numbers the strings it sees and
``encode_text`` returns ``text_fn(string)``.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image


def pixels_key(im: Image.Image) -> str:
    return hashlib.md5(im.convert("RGB").tobytes()).hexdigest()


def key_of_file(path: str | Path) -> str:
    with Image.open(path) as im:
        return pixels_key(im)


class TableAdapter:
    def __init__(self, image_fn: Callable[[Image.Image], torch.Tensor], text_fn: Callable[[str], torch.Tensor]):
        self.image_fn, self.text_fn = image_fn, text_fn
        self.strings: list[str] = []
        self.name = "table"

    def preprocess(self, im: Image.Image) -> torch.Tensor:
        return self.image_fn(im).float()

    def tokenizer(self, texts: list[str]) -> torch.Tensor:
        start = len(self.strings)
        self.strings += list(texts)
        return torch.arange(start, start + len(texts))[:, None]

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(torch.stack([self.text_fn(self.strings[int(i)]).float() for i in tokens[:, 0]]), dim=-1)
