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
from train.mitigations import CaptionShuffle, ObjectAwareCrop, RandomResizedCrop, split_list_caption
from train.transforms import SampleTransform

NAMES = ["dog", "apple", "car", "pizza", "umbrella"]
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


@pytest.mark.parametrize(
    "caption, expected",
    [
        ("a photo of a dog, a cat and a car.", ("a photo of ", ["a dog", "a cat", "a car"], [", ", " and "], ".")),
        ("There are two dogs & a red ball", ("There are ", ["two dogs", "a red ball"], [" & "], "")),
        ("bread, cheese, and wine", ("", ["bread", "cheese", "wine"], [", ", ", and "], "")),
        ("a cat next to a dog with a hat", ("", ["a cat", "a dog", "a hat"], [" next to ", " with "], "")),
        ("black and white photo of a man with a bike", ("black and white photo of ", ["a man", "a bike"], [" with "], "")),
    ],
)
def test_split_list_caption(caption, expected):
    parts = split_list_caption(caption)
    assert parts == expected
    lead, items, seps, tail = parts
    assert lead + items[0] + "".join(s + i for s, i in zip(seps, items[1:])) + tail == caption


NOT_LISTS = [
    "A beautiful sunset over the ocean",
    "a photo of a dog",
    "Vintage 1950s chrome toaster for sale",
    "a man sitting on a wooden bench in the park with his old dog",  # clauses, not items
    "Population grew to 1,000",
    "",
]


@pytest.mark.parametrize("caption", NOT_LISTS)
def test_free_form_non_lists_unchanged(caption):
    assert split_list_caption(caption) is None
    t = CaptionShuffle(p=1.0)
    rng = random.Random(0)
    meta = {**laion_meta(), "caption": caption}
    for _ in range(10):
        assert t(None, caption, meta, rng)[1] == caption
    assert t.stats() == {"not_list": 10}


def test_free_form_lists_permuted():
    caption = "a photo of a dog, a cat and a car."
    t = CaptionShuffle(p=1.0)
    rng = random.Random(3)
    seen = Counter()
    for _ in range(600):
        _, out, meta = t(None, caption, {**laion_meta(), "caption": caption}, rng)
        assert meta["caption"] == out
        lead, items, seps, tail = split_list_caption(out)
        assert (lead, seps, tail) == ("a photo of ", [", ", " and "], ".")
        assert sorted(items) == ["a car", "a cat", "a dog"]
        seen[tuple(items)] += 1
    assert len(seen) == 6
    assert abs(seen[("a dog", "a cat", "a car")] - 100) < 4 * math.sqrt(600 * 5 / 36)
    assert t.counts["changed"] + t.counts["unchanged"] == 600
    assert t.counts["unchanged"] == seen[("a dog", "a cat", "a car")]


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
    no_template = rendered_meta(NAMES[:2])
    del no_template["template"]
    with pytest.raises(ValueError, match="template"):
        t.check_metadata(no_template)
    t.check_metadata(rendered_meta(NAMES[:2]))  # fine


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
        ["caption_shuffle.yaml", "crop.yaml", "object_crop.yaml",
         "p_large_first_0.0.yaml", "p_large_first_0.5.yaml", "p_large_first_0.9.yaml"]
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
    (t,) = dm.sample_transforms
    expected = {"caption_shuffle.yaml": (CaptionShuffle, {"p": 1.0}),
                "crop.yaml": (RandomResizedCrop, {"p": 1.0, "scale": (0.35, 1.0)}),
                "object_crop.yaml": (ObjectAwareCrop, {"p": 0.5, "min_visible": 0.5, "context": (1.5, 3.0)})}[name]
    assert type(t) is expected[0]
    for k, v in expected[1].items():
        assert getattr(t, k) == pytest.approx(v)
