"""Captions whose word order carries meaning, decided from the rendered truth: spatial relations
("a cat to the left of a dog") from box centres and size attributes ("a large cat and a small
dog") from areas.

- :func:`relation_of`: ``"left"``, ``"right"``, ``"above"`` or ``"below"`` (where the first box's
  centre lies relative to the second's), or ``None`` when the centres are not clearly apart on one
  axis: the main axis must separate them by at least ``margin`` of the image side and exceed the
  other axis's separation by as much again. Never ambiguous: a pair that would need judgement gets
  no relation.
- :func:`size_words`: ``("large", "small")`` / ``("small", "large")`` when one visible area is at
  least ``ratio`` times the other, else ``None``.
- :func:`relation_caption`, :func:`attribute_caption`: the caption in a template of
  :data:`data_prep.captions.TEMPLATES` (its object list replaced by the phrase).
- :func:`rebuild_caption`: any rendered sample's caption from its template, its caption kind and
  the objects in mention order. Relation and size words stay where they are when the objects move
  (``CaptionShuffle`` on "a cat to the left of a dog" writes "a dog to the left of a cat": false,
  as a noun shuffle of a real caption can be; that is the cost the compositional probes measure).

A rendered sample's json says which kind it is: ``caption_kind`` ``"list"`` (absent in corpora
written before relations existed), ``"relation"`` (with ``relation``: the word for the first-named
object relative to the second) or ``"attribute"`` (with ``size_words``: the two words in caption
order). Only the two named objects carry a ``mention_index``; the scene's others are ``null``.
"""
from __future__ import annotations

from collections.abc import Sequence

from .captions import TEMPLATES, article, make_caption

RELATION_WORDS: dict[str, str] = {"left": "to the left of", "right": "to the right of", "above": "above",
                                  "below": "below"}
OPPOSITE: dict[str, str] = {"left": "right", "right": "left", "above": "below", "below": "above"}
#: the relation on the other axis (horizontal <-> vertical): false of any rendered pair that holds the key
OTHER_AXIS: dict[str, str] = {"left": "above", "right": "below", "above": "left", "below": "right"}
CAPTION_KINDS = ("list", "relation", "attribute")
DEFAULT_MARGIN = 0.1
DEFAULT_RATIO = 2.0


def centre(bbox: Sequence[float]) -> tuple[float, float]:
    x, y, w, h = bbox
    return x + w / 2, y + h / 2


def relation_of(box_a: Sequence[float], box_b: Sequence[float], image_size: float,
                margin: float = DEFAULT_MARGIN) -> str | None:
    """Where ``box_a``'s centre lies relative to ``box_b``'s (``[x, y, w, h]``, y down), or ``None``."""
    (ax, ay), (bx, by) = centre(box_a), centre(box_b)
    dx, dy = ax - bx, ay - by
    gap = margin * image_size
    if abs(dx) >= gap and abs(dx) - abs(dy) >= gap:
        return "left" if dx < 0 else "right"
    if abs(dy) >= gap and abs(dy) - abs(dx) >= gap:
        return "above" if dy < 0 else "below"
    return None


def size_words(area_a: float, area_b: float, ratio: float = DEFAULT_RATIO) -> tuple[str, str] | None:
    """``("large", "small")`` if ``area_a >= ratio * area_b``, the reverse if ``area_b >= ratio * area_a``."""
    if area_a >= ratio * area_b:
        return "large", "small"
    if area_b >= ratio * area_a:
        return "small", "large"
    return None


def _in_template(phrase: str, bare: str, template: str) -> str:
    if template not in TEMPLATES:
        raise ValueError(f"unknown caption template {template!r}; valid: {', '.join(TEMPLATES)}")
    return TEMPLATES[template].format(list=phrase, bare=bare, chain=phrase, and_chain=bare)


def relation_caption(a: str, b: str, relation: str, template: str = "photo") -> str:
    """``"a photo of a cat to the left of a dog"`` (``relation`` = where ``a`` is relative to ``b``)."""
    if relation not in RELATION_WORDS:
        raise ValueError(f"unknown relation {relation!r}; valid: {', '.join(RELATION_WORDS)}")
    word = RELATION_WORDS[relation]
    return _in_template(f"{article(a)} {word} {article(b)}", f"{a} {word} {b}", template)


def attribute_caption(a: str, b: str, words: Sequence[str], template: str = "photo") -> str:
    """``"a photo of a large cat and a small dog"`` (``words`` in caption order)."""
    wa, wb = words
    return _in_template(f"{article(f'{wa} {a}')} and {article(f'{wb} {b}')}", f"{wa} {a} and {wb} {b}", template)


def rebuild_caption(meta: dict, names: Sequence[str]) -> str:
    """A rendered sample's caption for ``names`` (the named objects in their new mention order)."""
    kind = meta.get("caption_kind", "list")
    if kind == "relation" and len(names) == 2:
        return relation_caption(names[0], names[1], meta["relation"], meta["template"])
    if kind == "attribute" and len(names) == 2:
        return attribute_caption(names[0], names[1], meta["size_words"], meta["template"])
    return make_caption(list(names), meta["template"])
