"""Mitigation transforms: caption shuffling, random resized crop, object-aware crop."""
from __future__ import annotations

import copy
import itertools
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision.transforms import RandomResizedCrop as TVRandomResizedCrop

from data_prep.captions import TEMPLATES, make_caption
from train.mitigations import CaptionShuffle, ObjectAwareCrop, RandomResizedCrop
from train.transforms import SampleTransform

NAMES = ["dog", "apple", "car", "pizza", "umbrella"]
#: the free-form tests below check the matcher's rules with the default (COCO) vocabulary, whose
#: names these captions were written for; the open vocabulary on web text: tests/test_web_captions.py
DEFAULT = "default"
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]


def rendered_meta(names: list[str], template: str = "photo", boxes: list[list[int]] | None = None) -> dict:
    boxes = boxes or [[10 * i, 10 * i, 8, 8] for i in range(len(names))]
    objects = [
        {"name": n, "bbox": list(b), "area": b[2] * b[3], "mention_index": k}
        for k, (n, b) in enumerate(zip(names, boxes))
    ]
    caption = make_caption(list(names), template)
    return {"key": "000000001", "caption": caption, "width": 128, "height": 128, "status": "success",
            "template": template, "objects": objects}


def laion_meta() -> dict:
    return {"key": "000000042", "caption": "a dog and a cat", "width": 256, "height": 256,
            "status": "success", "url": "http://example.com/x.jpg"}


def mention_order(meta: dict) -> list[str]:
    objs = [o for o in meta["objects"] if o.get("mention_index") is not None]
    return [o["name"] for o in sorted(objs, key=lambda o: o["mention_index"])]


# ----------------------------------------------------------------------------- caption shuffle


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_shuffle_rendered_keeps_objects_and_template(template):
    meta = rendered_meta(NAMES[:4], template)
    before = copy.deepcopy(meta)
    t = CaptionShuffle(p=1.0)
    rng = random.Random(0)
    for _ in range(20):
        _, caption, out = t(None, meta["caption"], meta, rng)
        order = mention_order(out)
        assert sorted(order) == sorted(NAMES[:4])  # same multiset of objects
        assert sorted(o["mention_index"] for o in out["objects"]) == [0, 1, 2, 3]
        assert out["template"] == template
        assert caption == out["caption"] == make_caption(order, template)  # same template, new order
        # boxes travel with their objects
        assert {o["name"]: o["bbox"] for o in out["objects"]} == {o["name"]: o["bbox"] for o in meta["objects"]}
    assert meta == before, "the input meta must not be mutated"


@pytest.mark.parametrize("n", [2, 3, 4])
def test_shuffle_unchanged_share_is_one_over_n_factorial(n):
    names = NAMES[:n]
    meta = rendered_meta(names)
    t = CaptionShuffle(p=1.0)
    rng = random.Random(n)
    trials = 2400
    perms = Counter(tuple(mention_order(t(None, meta["caption"], meta, rng)[2])) for _ in range(trials))
    p0 = 1 / math.factorial(n)
    unchanged = perms[tuple(names)]
    sd = math.sqrt(trials * p0 * (1 - p0))
    assert abs(unchanged - trials * p0) < 4 * sd, (unchanged, trials * p0)
    assert t.stats() == {"unchanged": unchanged, "changed": trials - unchanged}
    # every permutation appears, uniformly (chi-square, df = n! - 1, far beyond the 0.1 % quantile)
    assert set(perms) == set(itertools.permutations(names))
    expected = trials * p0
    chi2 = sum((perms[p] - expected) ** 2 / expected for p in itertools.permutations(names))
    df = math.factorial(n) - 1
    assert chi2 < df + 6 * math.sqrt(2 * df), chi2


def test_shuffle_probability():
    meta = rendered_meta(NAMES[:3])
    t = CaptionShuffle(p=0.3)
    rng = random.Random(1)
    for _ in range(2000):
        t(None, meta["caption"], meta, rng)
    drawn = t.counts["changed"] + t.counts["unchanged"]
    assert abs(drawn / 2000 - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 2000)
    assert t.counts["skipped"] == 2000 - drawn
    t0 = CaptionShuffle(p=0.0)
    assert t0(None, meta["caption"], meta, rng) == (None, meta["caption"], meta)
    with pytest.raises(ValueError, match="p=1.5"):
        CaptionShuffle(p=1.5)


# Free-form captions: the noun phrases naming objects (data_prep.mentions) are permuted in place.
FREE_FORM = [
    "Woman holding a cup of coffee while reading a book",
    "Vintage red truck with a surfboard on the roof",
    "a man sitting on a wooden bench in the park with his old dog",
    "A photo of a dog, a cat and a car.",
    "Two horses and a dog running in a meadow",
    "Modern grey sofa with two wooden chairs and a coffee table",
    "A kitchen with a refrigerator, an oven and a microwave.",
    "Leather Backpack With Laptop Sleeve, Umbrella And Water Bottle",
    "a dog chasing a cat and another dog near a car",
]


def _skeleton(caption: str) -> str:
    """The caption with every mention phrase cut out: what a shuffle must keep."""
    from data_prep.mentions import find_mentions

    out, pos = [], 0
    for m in find_mentions(caption):
        out.append(caption[pos:m.start].lower())
        pos = m.end
    return "|".join(out + [caption[pos:].lower()])


@pytest.mark.parametrize("caption", FREE_FORM)
def test_free_form_shuffle_permutes_mentions_and_keeps_other_words(caption):
    from data_prep.mentions import find_mentions, mentioned_names

    t = CaptionShuffle(p=1.0, vocabulary=DEFAULT)
    rng = random.Random(7)
    before = sorted(m.name for m in find_mentions(caption))
    phrases = sorted(caption[m.start:m.end].lower() for m in find_mentions(caption))
    outs = set()
    for _ in range(60):
        _, out, meta = t(None, caption, {**laion_meta(), "caption": caption}, rng)
        assert meta["caption"] == out
        assert sorted(m.name for m in find_mentions(out)) == before  # a permutation of the mentions
        assert sorted(out[m.start:m.end].lower() for m in find_mentions(out)) == phrases  # whole phrases move
        assert _skeleton(out) == _skeleton(caption)  # every other word stays in place
        outs.add(out)
    k = len(mentioned_names(caption))
    assert len(outs) == math.factorial(k) if k <= 3 else len(outs) > 6
    assert t.counts["changed"] + t.counts["unchanged"] == 60


def test_free_form_first_mention_is_uniform():
    from data_prep.mentions import mentioned_names
    from scipy.stats import chisquare

    caption = "A man holding a cup of coffee next to a dog and a red car"
    names = mentioned_names(caption)
    assert names == ["person", "cup", "dog", "car"]
    t = CaptionShuffle(p=1.0)
    rng = random.Random(12)
    trials = 4000
    first = Counter(mentioned_names(t(None, caption, {}, rng)[1])[0] for _ in range(trials))
    assert set(first) == set(names)
    assert chisquare([first[n] for n in names]).pvalue > 0.001, first
    # and the original first object keeps its place only 1/k of the time (not 60 % as list-splitting did)
    assert abs(first["person"] / trials - 0.25) < 4 * math.sqrt(0.25 * 0.75 / trials)


def test_free_form_shuffle_keeps_sentence_case():
    t = CaptionShuffle(p=1.0)
    outs = {t(None, "A man with a dog", {}, random.Random(s))[1] for s in range(20)}
    assert outs == {"A man with a dog", "A dog with a man"}
    outs = {t(None, "Vintage Truck With Surfboard And Dog", {}, random.Random(s))[1] for s in range(40)}
    assert outs == {f"{a} With {b} And {c}" for a, b, c in itertools.permutations(["Vintage Truck", "Surfboard", "Dog"])}


NOT_SHUFFLED = [
    ("A beautiful sunset over the ocean", "no_mention"),
    ("Population grew to 1,000", "no_mention"),
    ("", "empty"),
    ("a photo of a dog", "one_mention"),
    ("Vintage 1950s chrome toaster for sale", "one_mention"),
    ("a dog chasing another dog", "one_mention"),
    ("people waiting at a bus stop", "one_mention"),
]


@pytest.mark.parametrize("caption, reason", NOT_SHUFFLED)
def test_free_form_with_fewer_than_two_objects_unchanged_and_counted(caption, reason):
    assert _shuffled_unchanged(caption, seed=0, times=10) == {reason: 10}


def _shuffled_unchanged(caption: str, seed: int, times: int) -> dict:
    """Apply CaptionShuffle(p=1) ``times`` to a free-form caption, assert it and its meta stay as
    they are, and return the transform's counters."""
    t = CaptionShuffle(p=1.0, vocabulary=DEFAULT)
    rng = random.Random(seed)
    meta = {**laion_meta(), "caption": caption}
    for _ in range(times):
        _, out, m = t(None, caption, meta, rng)
        assert out == caption and m == meta
    return t.stats()


POSSESSIVE_SHUFFLED = [  # possessive plurals / classifiers that are no mention: shuffled around them
    ("a cup of men's coffee and a laptop", {"a cup of men's coffee and a laptop", "a laptop of men's coffee and a cup"}),
    ("a bowl of kids' cereal beside a spoon", {"a bowl of kids' cereal beside a spoon",
                                               "a spoon of kids' cereal beside a bowl"}),
]
POSSESSIVE_KEPT = [  # a moved mention would carry or strand the "'s": left as is, counted
    "A woman's handbag on a chair",
    "a dog's bowl next to a cat",
    "a cup of the dog’s water and a laptop",
    "the children's bicycle and a car",
]


def _no_broken_possessive(caption: str, out: str) -> None:
    import re

    from data_prep.mentions import find_mentions

    assert sorted(m.name for m in find_mentions(out)) == sorted(m.name for m in find_mentions(caption))
    assert sorted(out[m.start:m.end].lower() for m in find_mentions(out)) == \
        sorted(caption[m.start:m.end].lower() for m in find_mentions(caption))
    assert _skeleton(out) == _skeleton(caption)
    # every apostrophe still closes a word and opens nothing: no "laptops", "men'", "spoon'", "Handbag's a"
    assert sorted(re.findall(r"\w+['’]s?(?=\s|$)", out)) == sorted(re.findall(r"\w+['’]s?(?=\s|$)", caption))
    assert out.count("'") + out.count("’") == caption.count("'") + caption.count("’")


@pytest.mark.parametrize("caption, expected", POSSESSIVE_SHUFFLED)
def test_free_form_shuffle_around_possessives(caption, expected):
    t = CaptionShuffle(p=1.0, vocabulary=DEFAULT)
    rng = random.Random(3)
    outs = set()
    for _ in range(200):
        out = t(None, caption, {}, rng)[1]
        _no_broken_possessive(caption, out)
        outs.add(out)
    assert outs == expected
    assert t.counts["possessive"] == 0


@pytest.mark.parametrize("caption", POSSESSIVE_KEPT)
def test_free_form_possessor_or_possessed_mention_unchanged_and_counted(caption):
    assert _shuffled_unchanged(caption, seed=5, times=200) == {"possessive": 200}


def test_possessive_skip_keeps_first_mention_uniform_for_the_rest():
    from data_prep.mentions import mentioned_names
    from scipy.stats import chisquare

    caption = "a cup of men's coffee next to a dog and a laptop"
    names = mentioned_names(caption)
    assert names == ["cup", "dog", "laptop"]
    t = CaptionShuffle(p=1.0, vocabulary=DEFAULT)
    rng = random.Random(4)
    outs = [t(None, caption, {}, rng)[1] for _ in range(3000)]
    for out in set(outs):
        _no_broken_possessive(caption, out)
    first = Counter(mentioned_names(o)[0] for o in outs)
    assert chisquare([first[n] for n in names]).pvalue > 0.001, first


def test_free_form_shuffle_updates_mention_index_of_boxed_objects():
    caption = "A dog next to a bicycle"
    meta = {"caption": caption, "objects": [
        {"name": "bicycle", "bbox": [0, 0, 5, 5], "area": 25, "mention_index": 1},
        {"name": "dog", "bbox": [5, 5, 2, 2], "area": 4, "mention_index": 0},
        {"name": "car", "bbox": [1, 1, 2, 2], "area": 4, "mention_index": None}]}
    before = copy.deepcopy(meta)
    t = CaptionShuffle(p=1.0)
    seen = set()
    for s in range(20):
        _, out, m = t(None, caption, meta, random.Random(s))
        idx = {o["name"]: o["mention_index"] for o in m["objects"]}
        assert idx == ({"dog": 1, "bicycle": 0, "car": None} if out.startswith("A bicycle") else
                       {"dog": 0, "bicycle": 1, "car": None})
        seen.add(out)
    assert seen == {"A dog next to a bicycle", "A bicycle next to a dog"}
    assert meta == before, "the input meta must not be mutated"


def test_free_form_vocabulary_option(tmp_path):
    f = tmp_path / "v.tsv"
    f.write_text("guitar\tukulele\nlamp\n", encoding="utf-8")
    t = CaptionShuffle(vocabulary=str(f))
    outs = {t(None, "a ukulele near a lamp and a dog", {}, random.Random(s))[1] for s in range(20)}
    assert outs == {"a ukulele near a lamp and a dog", "a lamp near a ukulele and a dog"}
    with pytest.raises(ValueError, match="vocabulary"):
        CaptionShuffle(vocabulary=str(tmp_path / "missing.tsv"))


def test_shuffle_is_deterministic_given_rng():
    meta = rendered_meta(NAMES)
    a = [CaptionShuffle()(None, "", meta, random.Random(s))[1] for s in range(20)]
    b = [CaptionShuffle()(None, "", meta, random.Random(s))[1] for s in range(20)]
    assert a == b and len(set(a)) > 1


# ----------------------------------------------------------------------------- crops


def scene(boxes: list[list[int]], size: int = 128) -> Image.Image:
    """Black image with one solid colour rectangle per box (object i has COLOURS[i])."""
    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    for (x, y, w, h), c in zip(boxes, COLOURS):
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=c)
    return img


def colour_box(img: Image.Image, colour: tuple[int, int, int], tol: int = 60) -> tuple[int, list[int] | None]:
    """Pixel count and bounding box ``[x, y, w, h]`` of pixels within ``tol`` of ``colour``."""
    t = torch.from_numpy(np.asarray(img, dtype=np.int32))
    mask = (t - torch.tensor(colour, dtype=torch.int32)).abs().max(dim=-1).values <= tol
    if not mask.any():
        return 0, None
    ys, xs = torch.nonzero(mask, as_tuple=True)
    x0, y0 = xs.min().item(), ys.min().item()
    return int(mask.sum()), [x0, y0, xs.max().item() - x0 + 1, ys.max().item() - y0 + 1]


def test_random_resized_crop_matches_torchvision_distribution():
    ours = RandomResizedCrop(scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3))
    rng = random.Random(0)
    torch.manual_seed(0)
    tv_img = torch.zeros(3, 96, 128)
    n = 3000
    mine = [ours.get_params(128, 96, rng) for _ in range(n)]
    theirs = [TVRandomResizedCrop.get_params(tv_img, [0.35, 1.0], [3 / 4, 4 / 3]) for _ in range(n)]
    # torchvision returns (top, left, h, w); ours (left, top, w, h)
    for stat in (
        lambda l, t, w, h: w * h / (128 * 96),
        lambda l, t, w, h: w / h,
        lambda l, t, w, h: l + w / 2,
        lambda l, t, w, h: t + h / 2,
    ):
        a = torch.tensor([stat(*p) for p in mine], dtype=torch.float64)
        b = torch.tensor([stat(t, l, w, h) for l, t, h, w in theirs], dtype=torch.float64)
        se = math.sqrt(a.var() / n + b.var() / n)
        assert abs(a.mean() - b.mean()) < 4 * se
    for l, t, w, h in mine:
        assert 0 <= l and l + w <= 128 and 0 <= t and t + h <= 96
        assert 0.35 - 0.03 <= w * h / (128 * 96) <= 1.0


def test_random_resized_crop_moves_boxes_with_pixels():
    boxes = [[20, 30, 40, 30], [80, 70, 30, 40]]
    img = scene(boxes)
    meta = rendered_meta(NAMES[:2], boxes=boxes)
    t = RandomResizedCrop(scale=(0.3, 0.8))
    for seed in range(15):
        out, caption, m = t(img, meta["caption"], meta, random.Random(seed))
        assert out.size == img.size
        assert caption == meta["caption"] and mention_order(m) == NAMES[:2]  # caption unchanged
        left, top, cw, ch = m["crop"]
        assert 0.3 - 0.03 <= cw * ch / 128**2 <= 0.8 + 0.03
        for o, c in zip(m["objects"], COLOURS):
            count, pix_box = colour_box(out, c)
            if o["bbox"][2] * o["bbox"][3] < 9:  # (almost) cropped out
                assert count < 20
                continue
            assert pix_box is not None
            assert all(abs(a - b) <= 2.0 for a, b in zip(pix_box, o["bbox"])), (seed, pix_box, o["bbox"])
    assert t.stats() == {"applied": 15}


def test_random_resized_crop_without_boxes_and_p():
    img = Image.new("RGB", (50, 40), (10, 20, 30))
    t = RandomResizedCrop(p=0.0)
    assert t(img, "a cat", laion_meta(), random.Random(0))[0] is img
    t = RandomResizedCrop()
    out, caption, meta = t(img, "a cat", laion_meta(), random.Random(0))
    assert out.size == (50, 40) and caption == "a cat" and "objects" not in meta
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCrop(scale=(0.0, 1.0))


def visible_fraction(box: list[float], crop: list[float]) -> float:
    x, y, w, h = box
    l, t, cw, ch = crop
    iw = max(0.0, min(x + w, l + cw) - max(x, l))
    ih = max(0.0, min(y + h, t + ch) - max(y, t))
    return iw * ih / (w * h)


@pytest.mark.parametrize("template", ["photo", "next_to", "and_chain"])
def test_object_crop_caption_matches_visible_objects(template):
    rng = random.Random(11)
    t = ObjectAwareCrop(p=1.0, min_visible=0.5)
    n_dropped_some = 0
    for _ in range(25):
        # four non-overlapping objects, one per quadrant, random sizes and offsets
        boxes, names = [], rng.sample(NAMES, 4)
        for qx, qy in [(0, 0), (64, 0), (0, 64), (64, 64)]:
            w, h = rng.randint(16, 44), rng.randint(16, 44)
            boxes.append([qx + rng.randint(2, 62 - w), qy + rng.randint(2, 62 - h), w, h])
        order = rng.sample(range(4), 4)  # mention order differs from drawing order
        meta = rendered_meta(names, template, boxes)
        for k, i in enumerate(order):
            meta["objects"][i]["mention_index"] = k
        meta["caption"] = make_caption([names[i] for i in order], template)
        img = scene(boxes)
        out, caption, m = t(img, meta["caption"], meta, random.Random(rng.random()))
        assert out.size == img.size
        vis = [visible_fraction(b, m["crop"]) for b in boxes]
        expected = [names[i] for i in order if vis[i] >= 0.5]
        assert caption == m["caption"] == make_caption(expected, template)
        assert mention_order(m) == expected
        assert sorted(m["dropped"]) == sorted(names[i] for i in range(4) if vis[i] < 0.5)
        n_dropped_some += bool(m["dropped"])
        sx = 128 / m["crop"][2]
        # the pixels agree with the boxes: each object's colour covers ~ its visible part
        for i in range(4):
            count, _ = colour_box(out, COLOURS[i])
            full = boxes[i][2] * boxes[i][3] * sx * sx
            assert abs(count / full - vis[i]) < 0.15, (i, count / full, vis[i])
        for o in m["objects"]:
            i = names.index(o["name"])
            count, pix_box = colour_box(out, COLOURS[i])
            # bicubic blurs an edge over ~one input pixel, i.e. ~sx output pixels
            assert all(abs(a - b) <= max(2.0, sx) for a, b in zip(pix_box, o["bbox"])), (pix_box, o["bbox"], sx)
        # the chosen object became large: some kept box fills >= 1/context_max of the side
        assert max(max(o["bbox"][2], o["bbox"][3]) for o in m["objects"]) >= 128 / t.context[1] - 1
    assert n_dropped_some > 5
    assert t.counts["applied"] == 25


def test_object_crop_rejects_data_without_boxes():
    t = ObjectAwareCrop(p=0.0)  # even when not drawn: missing boxes are an error, not a no-op
    with pytest.raises(ValueError, match="needs per-object boxes.*RandomResizedCrop"):
        t.check_metadata(laion_meta())
    with pytest.raises(ValueError, match="needs per-object boxes"):
        t(Image.new("RGB", (8, 8)), "a dog and a cat", laion_meta(), random.Random(0))
    with pytest.raises(ValueError, match="bbox"):
        t.check_metadata({**laion_meta(), "objects": [{"name": "dog"}]})
    no_template = rendered_meta(NAMES[:2])
    del no_template["template"]
    t.check_metadata(no_template)  # boxed free-form data (COCO, sidecar) is fine
    t.check_metadata(rendered_meta(NAMES[:2]))  # fine
    t.check_metadata({**laion_meta(), "objects": []})  # no boxes for this sample: passes, counted


def test_object_crop_free_form_keeps_named_objects_and_caption():
    # COCO-like sample: caption names the dog and the car; the pizza is boxed but not named
    boxes = [[10, 10, 20, 20], [40, 30, 20, 20], [100, 100, 20, 20]]
    caption = "A dog next to a car"
    meta = {**laion_meta(), "caption": caption, "objects": [
        {"name": n, "bbox": b, "area": 400, "mention_index": k} for n, b, k in zip(["dog", "car", "pizza"], boxes,
                                                                                 [0, 1, None])]}
    img = scene(boxes)
    t = ObjectAwareCrop(p=1.0, context=(1.1, 1.5))
    rng = random.Random(0)
    for _ in range(50):
        out, new_caption, m = t(img, caption, meta, rng)
        assert new_caption == caption and out.size == img.size
        left, top, cw, ch = m["crop"]
        assert left <= 10 and top <= 10 and left + cw >= 60 and top + ch >= 50  # named objects inside
        assert [o["name"] for o in m["objects"]][:2] == ["dog", "car"]
        assert m["dropped"] == ["pizza"]
    assert t.counts["applied"] == 50
    # nothing named, no boxes, or named objects filling the image: unchanged and counted
    t = ObjectAwareCrop(p=1.0)
    unnamed = {**meta, "objects": [{**o, "mention_index": None} for o in meta["objects"]]}
    assert t(img, caption, unnamed, rng)[1:] == (caption, unnamed)
    assert t(img, caption, {**laion_meta(), "objects": []}, rng)[2] == {**laion_meta(), "objects": []}
    full = {**meta, "objects": [{"name": "dog", "bbox": [0, 0, 128, 128], "area": 1, "mention_index": 0}]}
    assert t(img, caption, full, rng)[0] is img
    assert t.stats() == {"no_named_boxes": 1, "no_boxes": 1, "no_room": 1}


def test_object_crop_probability_and_counts():
    meta = rendered_meta(NAMES[:3], boxes=[[0, 0, 40, 40], [70, 10, 30, 30], [20, 80, 30, 30]])
    img = scene([o["bbox"] for o in meta["objects"]])
    t = ObjectAwareCrop(p=0.5)
    rng = random.Random(5)
    for _ in range(400):
        t(img, meta["caption"], meta, rng)
    assert t.counts["applied"] + t.counts["skipped"] == 400
    assert abs(t.counts["applied"] - 200) < 4 * 10


def test_transforms_are_sample_transforms():
    for cls in (CaptionShuffle, RandomResizedCrop, ObjectAwareCrop):
        assert isinstance(cls(), SampleTransform)


# ----------------------------------------------------------------------------- real rendered data


def read_rendered(tmp_path, n: int = 24) -> list[tuple[Image.Image, str, dict]]:
    """``n`` samples of a corpus written by data_prep.synth, decoded from the tar."""
    import io
    import json
    import tarfile

    from data_prep.synth import write_corpus

    write_corpus(tmp_path / "corpus", num_samples=n, seed=3, image_size=64, progress=False)
    files: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tmp_path / "corpus" / "00000.tar") as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            files.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return [
        (Image.open(io.BytesIO(f["jpg"])).convert("RGB"), f["txt"].decode(), json.loads(f["json"]))
        for f in files.values()
    ]


def test_transforms_on_a_rendered_corpus(tmp_path):
    samples = read_rendered(tmp_path)
    shuffle, crop = CaptionShuffle(p=1.0), ObjectAwareCrop(p=1.0)
    rng = random.Random(0)
    for img, caption, meta in samples:
        # the contract the rebuild relies on: template + mention order reproduce the caption
        assert make_caption(mention_order(meta), meta["template"]) == caption
        _, new, m = shuffle(img, caption, meta, rng)
        assert sorted(mention_order(m)) == sorted(mention_order(meta))
        assert new == make_caption(mention_order(m), meta["template"])
        out, new, m = crop(img, caption, meta, rng)
        assert out.size == img.size
        kept = [n for n in mention_order(meta)
                if visible_fraction(next(o["bbox"] for o in meta["objects"] if o["name"] == n), m["crop"]) >= 0.5]
        assert new == make_caption(kept, meta["template"]) and mention_order(m) == kept
    assert shuffle.counts["changed"] > len(samples) // 2


# ----------------------------------------------------------------------------- configs


MITIGATION_DIR = Path(__file__).resolve().parents[1] / "configs" / "mitigation"
MITIGATION_CONFIGS = sorted(p.name for p in MITIGATION_DIR.glob("*.yaml"))


def test_all_overlays_present():
    assert MITIGATION_CONFIGS == sorted(
        ["caption_shuffle.yaml", "crop.yaml", "object_crop.yaml", "order_invariant.yaml", "region_loss.yaml",
         "p_large_first_0.0.yaml", "p_large_first_0.5.yaml", "p_large_first_0.9.yaml", "hard_negatives.yaml",
         "hard_negatives_order_invariant.yaml"]
    )


@pytest.mark.parametrize("name", MITIGATION_CONFIGS)
def test_overlay_loads_through_the_real_cli(name, tmp_path, monkeypatch):
    from train.cli import ClipCLI, resolve_config_args
    from train.data import WebDataModule
    from train.module import CLIPModule

    monkeypatch.setattr("sys.argv", ["python -m train"])  # LightningCLI warns about pytest's own argv
    text = (MITIGATION_DIR / name).read_text()
    assert text.startswith(f"# python -m train fit --config quickstart.yaml --config mitigation/{name}\n")
    args = ["--config", "quickstart.yaml", "--config", f"mitigation/{name}",
            "--run.root", str(tmp_path), "--trainer.logger", "false"]
    cli = ClipCLI(CLIPModule, WebDataModule, args=resolve_config_args(args), run=False,
                  parser_kwargs={"parser_mode": "yaml"})
    dm = cli.datamodule
    assert cli.config.run.name == name.removesuffix(".yaml")
    assert dm.synthetic.num_samples == 40000  # the overlay merges into the base, not replaces it
    if name.startswith("p_large_first_"):
        assert dm.synthetic.p_large_first == float(name.removeprefix("p_large_first_").removesuffix(".yaml"))
        assert dm.sample_transforms == []
        return
    if name in ("order_invariant.yaml", "region_loss.yaml", "hard_negatives.yaml",
                "hard_negatives_order_invariant.yaml"):  # objectives, not data transforms
        from train.aux_losses import HardNegatives, OrderInvariantText, RegionLoss

        assert dm.sample_transforms == []
        kinds = {"order_invariant.yaml": [OrderInvariantText], "region_loss.yaml": [RegionLoss],
                 "hard_negatives.yaml": [HardNegatives],
                 "hard_negatives_order_invariant.yaml": [OrderInvariantText, HardNegatives]}[name]
        assert [type(loss) for loss in cli.model.aux_losses] == kinds
        assert all(loss.weight == 0.5 for loss in cli.model.aux_losses)
        return
    (t,) = dm.sample_transforms
    expected = {"caption_shuffle.yaml": (CaptionShuffle, {"p": 1.0}),
                "crop.yaml": (RandomResizedCrop, {"p": 1.0, "scale": (0.35, 1.0)}),
                "object_crop.yaml": (ObjectAwareCrop, {"p": 0.5, "min_visible": 0.5, "context": (1.5, 3.0)})}[name]
    assert type(t) is expected[0]
    for k, v in expected[1].items():
        assert getattr(t, k) == pytest.approx(v)
