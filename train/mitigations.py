"""Training-time mitigations for the order and size biases, as ``SampleTransform``s.

- ``CaptionShuffle``: mention the objects in a random order (rendered data: rebuilt from the
  ground truth with the sample's template; free-form captions: permute the noun phrases that
  name objects, found by ``data_prep.mentions``).
- ``RandomResizedCrop``: the standard crop augmentation, image only, for any data.
- ``ObjectAwareCrop``: crop around one object so it becomes large; drop from the caption the
  objects that fall mostly outside the crop (needs boxes).

Each is used from YAML as ``data.sample_transforms: [{class_path: train.mitigations.X, ...}]``
(see ``configs/mitigation/``). Transforms never mutate their input ``meta``; they return a copy.
Crops record the region they took as ``meta["crop"] = [left, top, width, height]`` in the input
image's pixel coordinates.
"""
from __future__ import annotations

import math
import random
from typing import Sequence

from PIL import Image

# Rendered captions are rebuilt from the ground-truth objects with the sample's template id.
from data_prep.relations import rebuild_caption
# Object mentions in free-form captions have one home: data_prep.mentions.
from data_prep.mentions import (Mention, Vocabulary, caption_problem, default_vocabulary, find_mentions,
                                first_mentions, in_possessive, load_vocabulary, mentioned_names,
                                open_vocabulary)
from train.transforms import SampleTransform

__all__ = ["CaptionShuffle", "RandomResizedCrop", "ObjectAwareCrop", "shuffle_mentions"]


def _check_p(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p={p!r} must be a probability in [0, 1]")
    return float(p)


def _is_rendered(meta: dict) -> bool:
    """True if ``meta`` carries the ground truth needed to rebuild the caption."""
    return bool(meta.get("objects")) and "template" in meta


def _mentioned(objects: list[dict]) -> list[int]:
    """Indices of the objects named in the caption, in mention order."""
    idx = [i for i, o in enumerate(objects) if o.get("mention_index") is not None]
    return sorted(idx, key=lambda i: objects[i]["mention_index"])


# ----------------------------------------------------------------------------- free-form captions


def _is_title_case(caption: str) -> bool:
    words = [w for w in caption.split() if w[:1].isalpha()]
    return len(words) > 1 and sum(w[0].isupper() for w in words) > len(words) / 2


def _recase(piece: str, at_start: bool, was_at_start: bool, caption_capitalised: bool, title: bool) -> str:
    """Keep sentence case when a phrase moves to or away from the caption's start."""
    if title or not piece:
        return piece
    if at_start and caption_capitalised:
        return piece[0].upper() + piece[1:]
    first = piece.split()[0]
    if was_at_start and not at_start and first[:1].isupper() and first[1:] == first[1:].lower():
        return piece[0].lower() + piece[1:]
    return piece


def shuffle_mentions(caption: str, mentions: Sequence[Mention], rng: random.Random) -> tuple[str, list[str]]:
    """Permute the noun phrases of the first mention of each distinct object uniformly at random,
    keeping every other character in place (later repeats of a name stay where they are).

    Returns the new caption and its distinct names in order of first mention.
    ``"a red car and two dogs"`` → ``"two dogs and a red car"``.
    """
    firsts = first_mentions(mentions)
    order = list(range(len(firsts)))
    rng.shuffle(order)
    capitalised = caption[:1].isupper()
    title = _is_title_case(caption)
    out, pos = [], 0
    for slot, src in enumerate(order):
        m, piece_m = firsts[slot], firsts[src]
        piece = caption[piece_m.start:piece_m.end]
        if src != slot:
            piece = _recase(piece, m.start == 0, piece_m.start == 0, capitalised, title)
        out.append(caption[pos:m.start])
        out.append(piece)
        pos = m.end
    out.append(caption[pos:])
    moved = {id(m): firsts[src].name for m, src in zip(firsts, order)}
    names: list[str] = []
    for m in mentions:  # repeats stay in place, so they may now precede their name's moved first phrase
        name = moved.get(id(m), m.name)
        if name not in names:
            names.append(name)
    return "".join(out), names


def reindex_objects(objects: Sequence[dict], caption: str, names: list[str], vocab: Vocabulary) -> list[dict]:
    """``objects`` (boxes of a COCO conversion or a detector sidecar) with ``mention_index`` following
    the new ``caption``. ``mention_index`` counts the distinct objects the caption names in the
    vocabulary the conversion matched with (COCO's categories: "a man" is "person"); with the open
    vocabulary, which names more ("man", "street"), the new caption is matched again with the
    default vocabulary so the index keeps that meaning. ``names``: the new caption's distinct names
    in ``vocab`` (from :func:`shuffle_mentions`)."""
    if vocab is open_vocabulary():
        index_vocab = default_vocabulary()
        names = mentioned_names(caption, index_vocab)
    else:
        index_vocab = vocab
    out = []
    for o in objects:
        o = dict(o)
        name = index_vocab.canonical(o.get("name", ""))
        if o.get("mention_index") is not None and name in names:
            o["mention_index"] = names.index(name)
        out.append(o)
    return out


class CaptionShuffle(SampleTransform):
    """Mention the objects of a caption in a uniformly random order.

    Rendered data (``meta`` has ``objects`` and ``template``): the caption is rebuilt from the
    ground-truth objects in a random order with the same template and ``mention_index`` is
    updated. Any other caption (LAION, COCO): the object mentions found by
    :func:`data_prep.mentions.find_mentions` — whole noun phrases such as "a red car" or "two
    dogs" — are permuted in place, every other word stays (see :func:`shuffle_mentions`); the
    first-mentioned object is uniform over the caption's distinct objects. ``mention_index`` of
    ``meta["objects"]`` (COCO conversion, detector sidecar) follows the new order.
    Captions a mention search cannot read (:func:`data_prep.mentions.caption_problem`: empty,
    too long, HTML, no letters, not Latin script, all caps) are left as they are, counted by reason.

    Counts (logged as ``data/CaptionShuffle/<reason>``): ``changed``, ``unchanged`` (the random
    order equalled the old one), ``no_mention`` and ``one_mention`` (free-form captions naming
    fewer than two distinct objects, left as they are), ``possessive`` (free-form captions where a
    moved mention is a possessor or possessed phrase, "a woman's handbag", "the children's bicycle",
    left as they are so no "'s" is moved or stranded), ``skipped`` (not drawn with probability ``p``).
    """

    def __init__(self, p: float = 1.0, vocabulary: str = "open") -> None:
        """
        Args:
            p: probability of shuffling a sample.
            vocabulary: object names for free-form captions: ``open`` (every concrete, depictable
                noun: web alt-text), ``default`` (COCO categories with synonyms + the rendered
                objects), ``coco``, ``rendered``, or a TSV file (``name<TAB>synonym, synonym``; see
                ``data_prep.mentions``).
        """
        super().__init__()
        self.p = _check_p(p)
        self.vocabulary = vocabulary
        self._vocab: Vocabulary = load_vocabulary(vocabulary)  # a bad path fails at config time

    def apply(
        self, image: Image.Image, caption: str, meta: dict, rng: random.Random
    ) -> tuple[Image.Image, str, dict]:
        if self.skip(rng, self.p):
            return image, caption, meta
        if _is_rendered(meta):
            caption, meta = self._shuffle_rendered(meta, rng)
        else:
            caption, meta = self._shuffle_free(caption, meta, rng)
        return image, caption, meta

    def _shuffle_rendered(self, meta: dict, rng: random.Random) -> tuple[str, dict]:
        objects = [dict(o) for o in meta["objects"]]
        order = _mentioned(objects)
        new = order[:]
        rng.shuffle(new)
        names = [objects[i]["name"] for i in new]
        self.counts["changed" if names != [objects[i]["name"] for i in order] else "unchanged"] += 1
        for k, i in enumerate(new):
            objects[i]["mention_index"] = k
        caption = rebuild_caption(meta, names)  # a relation or size word stays in place: the caption may turn false
        return caption, {**meta, "objects": objects, "caption": caption}

    def _shuffle_free(self, caption: str, meta: dict, rng: random.Random) -> tuple[str, dict]:
        if (problem := caption_problem(caption)) is not None:  # left as it is, counted
            self.counts[problem] += 1
            return caption, meta
        mentions = find_mentions(caption, self._vocab)
        n = len({m.name for m in mentions})
        if n < 2:
            self.counts["no_mention" if n == 0 else "one_mention"] += 1
            return caption, meta
        if any(in_possessive(caption, m) for m in first_mentions(mentions)):
            # "A woman's handbag on a chair": moving "A woman" or "handbag" alone moves or strands
            # the "'s"; moving "A woman's handbag" as one unit would never put "handbag" first.
            self.counts["possessive"] += 1
            return caption, meta
        new, names = shuffle_mentions(caption, mentions, rng)
        if new == caption:
            self.counts["unchanged"] += 1
            return caption, meta
        self.counts["changed"] += 1
        meta = {**meta, "caption": new} if "caption" in meta else dict(meta)
        if meta.get("objects"):
            meta["objects"] = reindex_objects(meta["objects"], new, names, self._vocab)
        return new, meta


# ----------------------------------------------------------------------------- crops


def _crop_objects(
    objects: list[dict], crop: tuple[float, float, float, float], out_size: tuple[int, int]
) -> list[tuple[dict, float]]:
    """Each object with its box clipped to ``crop`` and mapped to the output image, plus the
    fraction of its box inside the crop. Areas are scaled by that fraction (approximate)."""
    left, top, cw, ch = crop
    sx, sy = out_size[0] / cw, out_size[1] / ch
    out = []
    for o in objects:
        x, y, w, h = o["bbox"]
        x0, y0 = max(x, left), max(y, top)
        x1, y1 = min(x + w, left + cw), min(y + h, top + ch)
        iw, ih = max(0.0, x1 - x0), max(0.0, y1 - y0)
        visible = (iw * ih) / (w * h) if w > 0 and h > 0 else 0.0
        new = dict(o)
        new["bbox"] = [round((x0 - left) * sx, 2), round((y0 - top) * sy, 2), round(iw * sx, 2), round(ih * sy, 2)]
        if "area" in o:
            new["area"] = int(round(o["area"] * visible * sx * sy))
        out.append((new, visible))
    return out


def _resize_crop(image: Image.Image, crop: tuple[float, float, float, float]) -> Image.Image:
    left, top, cw, ch = crop
    return image.resize(image.size, Image.BICUBIC, box=(left, top, left + cw, top + ch))


class RandomResizedCrop(SampleTransform):
    """torchvision's RandomResizedCrop (same sampling rule) driven by the sample's ``rng``.

    Output size = input size. Boxes in ``meta["objects"]`` (if any) are clipped and mapped to the
    crop; the caption is unchanged, so for boxed data it may name an object that was cropped
    out — that is the standard augmentation (use ``ObjectAwareCrop`` to keep them consistent).
    Counts ``applied`` / ``skipped``.
    """

    def __init__(
        self,
        scale: tuple[float, float] = (0.35, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        p: float = 1.0,
    ) -> None:
        """
        Args:
            scale: range of the crop's area as a fraction of the image area.
            ratio: range of the crop's aspect ratio (width / height), sampled log-uniformly.
            p: probability of cropping a sample.
        """
        super().__init__()
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"scale={tuple(scale)!r} must satisfy 0 < min <= max <= 1")
        if not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio={tuple(ratio)!r} must satisfy 0 < min <= max")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.p = _check_p(p)

    def get_params(self, width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
        """``(left, top, w, h)``: torchvision.transforms.RandomResizedCrop.get_params with ``rng``."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return rng.randint(0, width - w), rng.randint(0, height - h), w, h
        # Fallback: central crop with the aspect ratio clamped to the range (as torchvision).
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            w, h = int(round(height * self.ratio[1])), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def apply(
        self, image: Image.Image, caption: str, meta: dict, rng: random.Random
    ) -> tuple[Image.Image, str, dict]:
        if self.skip(rng, self.p):
            return image, caption, meta
        crop = tuple(float(v) for v in self.get_params(*image.size, rng))
        out = _resize_crop(image, crop)
        meta = {**meta, "crop": list(crop)}
        if meta.get("objects"):
            meta["objects"] = [o for o, _ in _crop_objects(meta["objects"], crop, image.size)]
        self.counts["applied"] += 1
        return out, caption, meta


class ObjectAwareCrop(SampleTransform):
    """Crop around a randomly chosen object so it becomes large; keep the caption truthful.

    A crop scales every object alike, so among the objects that stay, the size order (and hence a
    largest-first mention order) is unchanged; what changes is their absolute size, and the
    largest object is often cut out. Combine with ``CaptionShuffle`` to also decouple order.

    The crop has the image's aspect ratio (square for the square rendered corpus) and side
    ``max object side × U(context)``, placed at random such that the chosen object lies inside.
    Objects with less than ``min_visible`` of their box inside the crop are removed from
    ``meta["objects"]`` (their names go to ``meta["dropped"]``) and the caption is rebuilt with the
    sample's template over the remaining mentioned objects in their old mention order. Boxes are
    clipped and mapped to the output; areas are scaled approximately.

    Boxed free-form data (COCO-converted shards, LAION + boxes sidecar: ``objects`` with boxes and
    ``mention_index`` but no ``template``): a free-form caption cannot be rebuilt, so the crop is
    placed around *all* the objects the caption names (their union box, side × U(context)) and the
    caption stays as it is; unnamed objects that fall out are dropped from ``meta["objects"]``. A
    caption naming one object gets that object large; one naming several gets the group large.

    Data without an ``objects`` list raises ``ValueError``; a sample whose list is empty (a
    sidecar without its key, a detector that found nothing) passes unchanged, counted
    ``no_boxes``. Counts ``applied`` / ``skipped``, the total ``objects_dropped``, and for
    free-form captions ``no_named_boxes`` (caption names none of the boxed objects) and
    ``no_room`` (the named objects already fill the image).
    """

    def __init__(
        self, p: float = 0.5, min_visible: float = 0.5, context: tuple[float, float] = (1.5, 3.0)
    ) -> None:
        """
        Args:
            p: probability of cropping a sample.
            min_visible: an object stays in the caption if at least this fraction of its box is
                inside the crop.
            context: range of crop side / largest side of the chosen object's box (>= 1): 1 makes
                the object fill the crop, 3 leaves it a third of the crop's side. The default
                (1.5, 3) gives a small object about the size of the rendered corpus's large ones;
                narrower context drops more neighbours (on the quickstart corpus, (1.2, 2) leaves
                61 % of cropped captions with a single object, (1.5, 3) 34 %).
        """
        super().__init__()
        self.p = _check_p(p)
        if not 0.0 < min_visible <= 1.0:
            raise ValueError(f"min_visible={min_visible!r} must be in (0, 1]")
        if not 1.0 <= context[0] <= context[1]:
            raise ValueError(f"context={tuple(context)!r} must satisfy 1 <= min <= max")
        self.min_visible = float(min_visible)
        self.context = (float(context[0]), float(context[1]))

    def check_metadata(self, meta: dict) -> None:
        objects = meta.get("objects")
        if objects is None:
            raise ValueError(
                "ObjectAwareCrop needs per-object boxes in the sample json (meta['objects'] = "
                "[{name, bbox, mention_index}, ...]) but this sample "
                f"(key={meta.get('key')!r}) has none — e.g. LAION shards. Use "
                "train.mitigations.RandomResizedCrop (configs/mitigation/crop.yaml) for data "
                "without boxes, a corpus rendered by data_prep.synth, shards converted by "
                "`python -m data_prep coco`, or a boxes sidecar (data_prep.boxes)."
            )
        for o in objects:
            if "name" not in o or len(o.get("bbox") or ()) != 4:
                raise ValueError(
                    f"ObjectAwareCrop: object {o!r} in sample {meta.get('key')!r} needs 'name' and "
                    "'bbox' = [x, y, w, h] in pixels."
                )

    def apply(
        self, image: Image.Image, caption: str, meta: dict, rng: random.Random
    ) -> tuple[Image.Image, str, dict]:
        self.check_metadata(meta)  # every sample: missing boxes are an error, never a no-op
        if self.skip(rng, self.p):
            return image, caption, meta
        if not meta["objects"]:
            self.counts["no_boxes"] += 1
            return image, caption, meta
        if "template" not in meta:
            return self._apply_free_form(image, caption, meta, rng)
        objects = meta["objects"]
        order = _mentioned(objects)
        candidates = [i for i in order if objects[i]["bbox"][2] > 0 and objects[i]["bbox"][3] > 0]
        if not candidates:
            self.counts["skipped"] += 1
            return image, caption, meta
        chosen = rng.choice(candidates)
        crop = self._crop_box(objects[chosen]["bbox"], image.size, rng)
        cropped = _crop_objects(objects, crop, image.size)
        keep = [i for i, (_, vis) in enumerate(cropped) if vis >= self.min_visible or i == chosen]
        kept_set = set(keep)
        new_objects = [cropped[i][0] for i in keep]
        mentioned_kept = [i for i in order if i in kept_set]
        for k, i in enumerate(mentioned_kept):
            cropped[i][0]["mention_index"] = k
        dropped = [objects[i]["name"] for i in range(len(objects)) if i not in kept_set]
        names = [objects[i]["name"] for i in mentioned_kept]
        if len(names) != 2:  # a relation or size pair lost one object: the list caption of what is left
            meta = {k: v for k, v in meta.items() if k not in ("relation", "size_words")}
            meta["caption_kind"] = "list"
        caption = rebuild_caption(meta, names)
        meta = {**meta, "objects": new_objects, "caption": caption, "crop": list(crop), "dropped": dropped}
        self.counts["applied"] += 1
        self.counts["objects_dropped"] += len(dropped)
        return _resize_crop(image, crop), caption, meta

    def _apply_free_form(
        self, image: Image.Image, caption: str, meta: dict, rng: random.Random
    ) -> tuple[Image.Image, str, dict]:
        objects = meta["objects"]
        named = [i for i, o in enumerate(objects)
                 if o.get("mention_index") is not None and o["bbox"][2] > 0 and o["bbox"][3] > 0]
        if not named:
            self.counts["no_named_boxes"] += 1
            return image, caption, meta
        x0 = min(objects[i]["bbox"][0] for i in named)
        y0 = min(objects[i]["bbox"][1] for i in named)
        x1 = max(objects[i]["bbox"][0] + objects[i]["bbox"][2] for i in named)
        y1 = max(objects[i]["bbox"][1] + objects[i]["bbox"][3] for i in named)
        crop = self._crop_box([x0, y0, x1 - x0, y1 - y0], image.size, rng)
        if crop[2] >= image.size[0] - 0.5 and crop[3] >= image.size[1] - 0.5:
            self.counts["no_room"] += 1
            return image, caption, meta
        named_set = set(named)
        cropped = _crop_objects(objects, crop, image.size)
        keep = [i for i, (_, vis) in enumerate(cropped) if vis >= self.min_visible or i in named_set]
        dropped = [objects[i]["name"] for i in range(len(objects)) if i not in set(keep)]
        meta = {**meta, "objects": [cropped[i][0] for i in keep], "crop": list(crop), "dropped": dropped}
        self.counts["applied"] += 1
        self.counts["objects_dropped"] += len(dropped)
        return _resize_crop(image, crop), caption, meta

    def _crop_box(
        self, bbox: list[float], size: tuple[int, int], rng: random.Random
    ) -> tuple[float, float, float, float]:
        """``(left, top, w, h)`` with the image's aspect ratio, containing ``bbox`` if it fits."""
        width, height = size
        x, y, bw, bh = (float(v) for v in bbox)
        aspect = height / width
        cw = min(float(width), max(bw, bh / aspect) * rng.uniform(*self.context))
        ch = cw * aspect
        left = rng.uniform(*_slide(x, bw, cw, width))
        top = rng.uniform(*_slide(y, bh, ch, height))
        return left, top, cw, ch


def _slide(x: float, w: float, cw: float, size: float) -> tuple[float, float]:
    """Range of crop starts (1-D) keeping ``[x, x+w]`` inside ``[start, start+cw]`` within ``[0, size]``."""
    lo, hi = max(0.0, x + w - cw), min(size - cw, x)
    if lo > hi:  # object larger than the crop or crop cannot contain it: centre on the object
        c = min(max(x + w / 2 - cw / 2, 0.0), size - cw)
        return c, c
    return lo, hi
