"""Size and order bias on real COCO photos (eval.coco_bias), on a 12-photo slice of COCO val2017."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from _table_adapter import TableAdapter, key_of_file, pixels_key
from eval import coco_bias as C
from eval.stats import mean_interval

DATA = Path(__file__).parent / "data" / "coco_mini"
IMAGES, INSTANCES, CAPTIONS = DATA / "val2017", DATA / "instances_val2017.json", DATA / "captions_val2017.json"


def _brute_force_images(ratio: float) -> dict[str, list[str]]:
    """file name -> own categories, largest first, straight from the JSON."""
    data = json.loads(INSTANCES.read_text())
    cats = {c["id"]: c["name"] for c in data["categories"]}
    out = {}
    for im in data["images"]:
        areas = {}
        for a in data["annotations"]:
            if a["image_id"] == im["id"] and not a["iscrowd"]:
                n = cats[a["category_id"]]
                areas[n] = max(areas.get(n, 0), a["area"])
        order = sorted(areas, key=lambda n: -areas[n])
        if len(order) >= 2 and areas[order[0]] >= ratio * areas[order[1]]:
            out[im["file_name"]] = order
    return out


def test_items_match_a_brute_force_reading_of_the_annotations():
    items = C.load_items(IMAGES, [INSTANCES], [CAPTIONS])
    expected = _brute_force_images(2.0)
    got = {p.name: [items.categories[i] for i in cats] for p, cats in items.images}
    assert got == expected and len(got) == 9
    assert sum(items.skipped_images.values()) + len(got) == 12
    # text side: every caption is an item or counted
    assert len(items.captions) + sum(items.skipped_captions.values()) == 60
    for caption, cats, _ in items.captions:
        assert len(cats) >= 2
        low = caption.lower()
        hits = [re.search(r"\b" + items.categories[c].split()[-1][:4], low) for c in cats]
        if all(hits):  # a name found under its own spelling (not a synonym) comes in caption order
            positions = [h.start() for h in hits]
            assert positions == sorted(positions), (caption, cats)


def _one_hot_adapter(items: C.CocoItems, image_rule: str, text_rule: str = "first", seed: int = 0) -> TableAdapter:
    """Prompt of category c = e_c; an image embeds as its chosen category's prompt (plus a little of
    the others); a caption as its first-named (or last-named) category's prompt."""
    dim = len(items.categories)
    by_key = {key_of_file(p): cats for p, cats in items.images}
    by_caption = {c: cats for c, cats, _ in items.captions}
    prompt_of = {p: i for i, p in enumerate(items.prompts)}
    g = torch.Generator().manual_seed(seed)

    def image_fn(im):
        cats = by_key.get(pixels_key(im))
        v = torch.zeros(dim)
        if cats is None:
            return v + 1
        pick = {"largest": cats[0], "smallest": cats[-1], "random": cats[int(torch.randint(len(cats), (1,), generator=g))]}[image_rule]
        v[list(cats)] = 0.1
        v[pick] = 1.0
        return v

    def text_fn(s):
        v = torch.zeros(dim)
        if s in prompt_of:
            v[prompt_of[s]] = 1.0
            return v
        cats = by_caption[s]
        v[list(cats)] = 0.1
        v[cats[0] if text_rule == "first" else cats[-1]] = 1.0
        return v

    return TableAdapter(image_fn, text_fn)


def test_known_answers_and_controls():
    items = C.load_items(IMAGES, [INSTANCES], [CAPTIONS])
    run = lambda a: C.run(a, C.prepare(a, items), min_items=1)  # noqa: E731
    res = run(_one_hot_adapter(items, "largest"))
    s = res["summary"]
    assert s["size_bias"]["value"] == 1.0 and s["size_bias_own"]["value"] == 1.0
    assert s["order_bias"]["value"] == 1.0 and s["order_bias_own"]["value"] == 1.0
    assert s["size_bias"]["denominator"] == "N=9"
    assert res["image"]["unconditional"]["largest"]["count"] == 9
    # the smallest object always wins: X = -1/(k-1) per image
    res = run(_one_hot_adapter(items, "smallest", text_rule="last"))
    ks = [len(c) for _, c in items.images]
    assert res["summary"]["size_bias_own"]["value"] == pytest.approx(sum(-1 / (k - 1) for k in ks) / len(ks))
    assert res["summary"]["order_bias_own"]["value"] < 0
    # shuffled-label control: the winner drawn at random among the own categories -> 0 within the interval
    many = C.CocoItems(items.categories, items.prompts, images=items.images * 40)
    res = C.run(*(lambda a: (a, C.prepare(a, many)))(_one_hot_adapter(many, "random")), min_items=1)
    entry = res["summary"]["size_bias_own"]
    assert entry["ci"][0] < 0 < entry["ci"][1] and abs(entry["value"]) < 0.15
    chance = sum(1 / k for k in ks) / len(ks)
    assert res["image"]["chance_own_largest"] == pytest.approx(chance)


def test_lead_scores_against_a_hand_computed_case():
    sims = torch.tensor([[0.9, 0.1, 0.0, 0.0],   # own [0, 1]: lead wins            X = 1
                         [0.1, 0.9, 0.0, 0.5],   # own [0, 1, 3]: other own wins    X = -1/2
                         [0.1, 0.2, 0.9, 0.3]])  # own [3, 1]: gallery top is 2 (none), own winner 3: X 0 / 1
    s = C.lead_scores(sims, [[0, 1], [0, 1, 3], [3, 1]])
    assert s["gallery"] == [1.0, -0.5, 0.0] and s["own"] == [1.0, -0.5, 1.0]
    assert s["unconditional"]["none"]["count"] == 1 and s["chance_own_lead"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
    lo, hi = mean_interval([1.0, -0.5, 0.0])
    assert lo < 1 / 6 < hi


def test_too_few_items_read_na():
    items = C.load_items(IMAGES, [INSTANCES], [CAPTIONS])
    a = _one_hot_adapter(items, "largest")
    res = C.run(a, C.prepare(a, items))  # default minimum: 20 items, the slice has 9 images
    assert res["summary"]["size_bias"]["value"] is None
    assert res["summary"]["size_bias"]["denominator"] == "n/a (N = 9, fewer than 20)"


def test_bad_inputs_counted_or_refused(tmp_path):
    images = tmp_path / "images"
    shutil.copytree(IMAGES, images)
    victim = C.load_items(IMAGES, [INSTANCES], [CAPTIONS]).images[0][0].name
    (images / victim).unlink()  # a missing image: counted, the others still probed
    items = C.load_items(images, [INSTANCES], [CAPTIONS])
    assert items.skipped_images["image missing"] == 1 and len(items.images) == 8
    # a category without a prompt: left out of the gallery, its items skipped and named
    prompts = {n: f"a photo of a {n}." for n in items.categories if n != "person"}
    items = C.load_items(IMAGES, [INSTANCES], [CAPTIONS], prompts=prompts)
    assert items.no_prompt == ["person"] and items.skipped_images.get("category without prompt", 0) > 0
    # an image folder that holds none of the annotated images: refused before any work
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="none of the first"):
        C.load_items(empty, [INSTANCES], [CAPTIONS])
    # captions of other images than the instances: refused
    caps = json.loads(CAPTIONS.read_text())
    for c in caps["annotations"]:
        c["image_id"] += 10 ** 7
    for im in caps["images"]:
        im["id"] += 10 ** 7
    other = tmp_path / "captions_other.json"
    other.write_text(json.dumps(caps))
    with pytest.raises(ValueError, match="share no image id"):
        C.load_items(IMAGES, [INSTANCES], [other])
    assert C.inputs_problems(tmp_path / "nope", [INSTANCES], [tmp_path / "c.json"]) == [
        f"--images {tmp_path / 'nope'} is not a directory", f"--captions {tmp_path / 'c.json'} does not exist"]
