"""COCO-format → shards: one sample per (image, caption), true boxes, mention_index from the caption."""
import io
import json
import random

import pytest
from PIL import Image

from _coco_fixture import SCENES, make_coco
from data_prep.cli import main as cli_main
from data_prep.coco import convert
from data_prep.read_shards import iter_samples


def _read(out):
    return [(m, img) for m, img in iter_samples([out], need_image=True)]


def test_convert_rendered_coco(tmp_path):
    truth = make_coco(tmp_path / "coco")
    meta = convert(tmp_path / "coco" / "images", [tmp_path / "coco" / "captions.json"],
                   [tmp_path / "coco" / "instances.json"], tmp_path / "out", shard_size=3, progress=False)
    n_caps = sum(len(c) for _, _, c in SCENES)
    assert meta["num_samples"] == n_caps and meta["num_shards"] == 3
    assert json.loads((tmp_path / "out" / "sizes.json").read_text()) == {"00000.tar": 3, "00001.tar": 3,
                                                                          "00002.tar": 2}
    samples = _read(tmp_path / "out")
    assert len(samples) == n_caps and len({m["key"] for m, _ in samples}) == n_caps
    by_caption = {m["caption"]: m for m, _ in samples}
    for m, img in samples:
        # boxes are the renderer's truth, in the stored image's pixels
        assert [{k: o[k] for k in ("name", "bbox", "area")} for o in m["objects"]] == truth[m["image_id"]]
        assert Image.open(io.BytesIO(img)).size == (m["width"], m["height"]) == (96, 96)
    idx = lambda cap: {o["name"]: o["mention_index"] for o in by_caption[cap]["objects"]}  # noqa: E731
    assert idx("A dog next to a small car.") == {"dog": 0, "car": 1}
    assert idx("A car and a big dog") == {"dog": 1, "car": 0}
    assert idx("Just a sunny day") == {"dog": None, "car": None}
    assert idx("A man riding a bike with an umbrella") == {"person": 0, "bicycle": 1, "umbrella": 2}
    assert idx("A bicycle, a woman and an umbrella on the street") == {"person": 1, "bicycle": 0, "umbrella": 2}
    assert idx("Two pizzas and a mug") == {"pizza": 0, "cup": 1}
    assert idx("A woman on the sofa watching TV") == {"person": 0, "couch": 1, "tv": 2}
    assert meta["counts"]["captions_naming_2plus_boxed"] == n_caps - 1


def test_resize_scales_boxes_and_missing_images_are_counted(tmp_path):
    truth = make_coco(tmp_path / "coco", fmt="jpg")
    (tmp_path / "coco" / "images" / "000000000103.jpg").unlink()
    with pytest.warns(UserWarning, match="not found"):
        meta = convert(tmp_path / "coco" / "images", [tmp_path / "coco" / "captions.json"],
                       [tmp_path / "coco" / "instances.json"], tmp_path / "out", max_size=48, progress=False)
    assert meta["counts"]["missing_images"] == 1
    samples = _read(tmp_path / "out")
    assert {m["image_id"] for m, _ in samples} == {100, 101, 102}
    m = samples[0][0]
    assert (m["width"], m["height"], m["original_width"]) == (48, 48, 96)
    assert m["objects"][0]["bbox"] == [v / 2 for v in truth[100][0]["bbox"]]
    assert m["objects"][0]["area"] == pytest.approx(truth[100][0]["area"] / 4)


def test_caption_shuffle_and_boxes_on_converted_shards(tmp_path):
    from train.mitigations import CaptionShuffle, ObjectAwareCrop, RandomResizedCrop

    make_coco(tmp_path / "coco")
    convert(tmp_path / "coco" / "images", [tmp_path / "coco" / "captions.json"],
            [tmp_path / "coco" / "instances.json"], tmp_path / "out", progress=False)
    shuffle, crop, ocrop = CaptionShuffle(), RandomResizedCrop(), ObjectAwareCrop(p=1.0, context=(1.0, 1.2))
    rng = random.Random(0)
    for m, img in _read(tmp_path / "out"):
        image = Image.open(io.BytesIO(img)).convert("RGB")
        _, cap, new = shuffle(image, m["caption"], m, rng)
        named = sorted(o["mention_index"] for o in new["objects"] if o["mention_index"] is not None)
        assert named == sorted(o["mention_index"] for o in m["objects"] if o["mention_index"] is not None)
        out, _, cropped = crop(image, cap, new, rng)
        assert len(cropped["objects"]) == len(m["objects"])
        out, cap2, boxed = ocrop(image, cap, new, rng)
        assert cap2 == cap and out.size == image.size
        named = [o for o in new["objects"] if o["mention_index"] is not None]
        if "crop" in boxed:
            left, top, cw, ch = boxed["crop"]
            for o in named:  # every object the caption names stays whole in the crop
                x, y, w, h = o["bbox"]
                assert left <= x + 1e-6 and top <= y + 1e-6 and x + w <= left + cw + 1e-6 and y + h <= top + ch + 1e-6
    assert shuffle.counts["changed"] > 0 and shuffle.counts["no_mention"] == 1
    assert ocrop.counts["applied"] > 0 and ocrop.counts["no_named_boxes"] == 1


def test_cli(tmp_path, capsys):
    make_coco(tmp_path / "coco")
    args = ["coco", "--images", str(tmp_path / "coco" / "images"), "--captions", str(tmp_path / "coco" / "captions.json"),
            "--instances", str(tmp_path / "coco" / "instances.json"), "--out", str(tmp_path / "out"), "--no-progress"]
    cli_main(args)
    assert "wrote 8 samples" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # non-empty --out without --overwrite
        cli_main(args)
    cli_main(args + ["--overwrite"])
    with pytest.raises(SystemExit):
        cli_main(["coco", "--images", str(tmp_path / "nope"), "--captions", str(tmp_path / "coco" / "captions.json"),
                  "--instances", str(tmp_path / "coco" / "instances.json"), "--out", str(tmp_path / "o2")])
