"""Boxes sidecar (detector output as jsonl) merged into sample metas."""
import io
import json

import pytest

from _coco_fixture import make_coco
from data_prep.boxes import BoxesSidecar, load_sidecar, merge_boxes, sidecar_line
from data_prep.coco import convert
from data_prep.read_shards import iter_samples
from data_prep.shards import write_tar_atomic


def laion_like(tmp_path):
    """COCO fixture converted, then stripped of boxes (as LAION shards are) + a sidecar from the truth."""
    make_coco(tmp_path / "coco")
    convert(tmp_path / "coco" / "images", [tmp_path / "coco" / "captions.json"],
            [tmp_path / "coco" / "instances.json"], tmp_path / "boxed", progress=False)
    samples = list(iter_samples([tmp_path / "boxed"], need_image=True))
    (tmp_path / "laion").mkdir()
    write_tar_atomic(tmp_path / "laion" / "00000.tar", [
        (m["key"], img, m["caption"], {k: v for k, v in m.items() if k != "objects"}) for m, img in samples])
    lines = [sidecar_line(m["key"], [{**o, "score": 0.9} for o in m["objects"]]) for m, _ in samples]
    (tmp_path / "boxes.jsonl").write_text("\n".join(lines) + "\n")
    return samples


def test_merge_recovers_the_true_objects(tmp_path):
    samples = laion_like(tmp_path)
    side = BoxesSidecar(tmp_path / "boxes.jsonl", min_score=0.5)
    stripped = list(iter_samples([tmp_path / "laion"]))
    assert all("objects" not in m for m, _ in stripped)
    for (truth, _), (m, _) in zip(samples, stripped):
        merged = side(m)
        assert merged is not m and "objects" not in m
        assert [(o["name"], o["bbox"], o["mention_index"]) for o in merged["objects"]] == \
               [(o["name"], [float(v) for v in o["bbox"]], o["mention_index"]) for o in truth["objects"]]
        assert all(o["area"] == o["bbox"][2] * o["bbox"][3] and o["score"] == 0.9 for o in merged["objects"])
    assert side.counts == {"merged": len(samples)}
    assert side({"key": "nope", "caption": "a dog"}) == {"key": "nope", "caption": "a dog", "objects": []}
    assert side.counts["missing"] == 1


def test_scores_scaling_synonyms_and_ground_truth_kept():
    rec = {"key": "k", "width": 200, "height": 100, "objects": [
        {"name": "Puppy", "bbox": [20, 10, 40, 20], "score": 0.8},
        {"name": "car", "bbox": [0, 0, 100, 50], "score": 0.2},
        {"name": "frisbee", "bbox": [100, 50, 10, 10], "score": 0.6}]}
    meta = {"key": "k", "caption": "A frisbee and a dog", "width": 100, "height": 50}
    out = merge_boxes(meta, rec, min_score=0.5)
    assert out["objects"] == [
        {"name": "dog", "bbox": [10.0, 5.0, 20.0, 10.0], "area": 200.0, "score": 0.8, "mention_index": 1},
        {"name": "frisbee", "bbox": [50.0, 25.0, 5.0, 5.0], "area": 25.0, "score": 0.6, "mention_index": 0}]
    truth = {**meta, "objects": [{"name": "dog", "bbox": [1, 1, 1, 1], "area": 1, "mention_index": 0}]}
    assert merge_boxes(truth, rec) is truth
    assert merge_boxes(truth, rec, replace=True)["objects"][0]["score"] == 0.8


def test_malformed_sidecar_names_the_line(tmp_path):
    f = tmp_path / "b.jsonl"
    f.write_text(sidecar_line("a", [{"name": "dog", "bbox": [0, 0, 1, 1]}]) + "\n{not json\n")
    with pytest.raises(ValueError, match="b.jsonl:2"):
        load_sidecar(f)
    f.write_text('{"key": "a", "objects": [{"name": "dog", "bbox": [0, 0, 1]}]}\n')
    with pytest.raises(ValueError, match="b.jsonl:1.*bbox"):
        load_sidecar(f)
    f.write_text('{"key": "a", "objects": [{"name": "dog", "bbox": [0, 0, 1, 1], "score": 3}]}\n')
    with pytest.raises(ValueError, match="score"):
        load_sidecar(f)
    f.write_text(sidecar_line("a", [{"name": "dog", "bbox": [0, 0, 1, 1]}]) + "\n"
                 + sidecar_line("a", [{"name": "cat", "bbox": [0, 0, 2, 2]}]) + "\n")
    assert [o["name"] for o in load_sidecar(f)["a"]["objects"]] == ["dog", "cat"]
    with pytest.raises(ValueError, match="min_score"):
        BoxesSidecar(f, min_score=2)


def test_merged_metas_feed_caption_shuffle_and_crop(tmp_path):
    import random

    from PIL import Image

    from train.mitigations import CaptionShuffle, ObjectAwareCrop, RandomResizedCrop

    laion_like(tmp_path)
    side = BoxesSidecar(tmp_path / "boxes.jsonl")
    shuffle, crop = CaptionShuffle(), RandomResizedCrop(scale=(0.5, 0.5))
    ocrop = ObjectAwareCrop(p=1.0, context=(1.0, 1.2))
    rng = random.Random(0)
    for m, img in iter_samples([tmp_path / "laion"], need_image=True):
        meta = side(m)
        image = Image.open(io.BytesIO(img)).convert("RGB")
        _, cap, new = shuffle(image, meta["caption"], meta, rng)
        names = [o["name"] for o in sorted((o for o in new["objects"] if o["mention_index"] is not None),
                                           key=lambda o: o["mention_index"])]
        from data_prep.mentions import mentioned_names
        assert [n for n in mentioned_names(cap) if n in names] == list(dict.fromkeys(names))
        _, _, cropped = crop(image, cap, new, rng)
        assert all(o["bbox"][2] <= image.size[0] for o in cropped["objects"])
        _, cap2, boxed = ocrop(image, cap, new, rng)
        assert cap2 == cap
        if "crop" in boxed:  # every named object is inside the crop
            assert {o["name"] for o in boxed["objects"] if o["mention_index"] is not None} == \
                   {o["name"] for o in new["objects"] if o["mention_index"] is not None}
    assert ocrop.counts["applied"] > 0
    json.dumps(new)  # the merged meta stays JSON-serialisable


def test_data_module_merges_the_sidecar_so_object_crop_trains_on_laion_like_shards(tmp_path):
    """data.boxes_sidecar: boxes reach ObjectAwareCrop on shards without boxes, counted per worker."""
    import torch

    from train.data import WebDataModule
    from train.mitigations import ObjectAwareCrop

    samples = laion_like(tmp_path)
    shard = str(tmp_path / "laion" / "00000.tar")
    kw = dict(train_shards=shard, batch_size=1, num_workers=0, shuffle_buffer=0, samples_per_epoch=len(samples))

    def batches(dm):
        dm.set_model_transforms(lambda im: torch.zeros(1), lambda im: torch.zeros(1), lambda c: torch.zeros(len(c), 1))
        return list(dm.train_dataloader())

    without = WebDataModule(sample_transforms=[ObjectAwareCrop(p=1.0)], **kw)
    with pytest.raises(ValueError, match="needs per-object boxes"):
        batches(without)
    crop = ObjectAwareCrop(p=1.0)
    dm = WebDataModule(sample_transforms=[crop], boxes_sidecar=str(tmp_path / "boxes.jsonl"), **kw)
    counts = batches(dm)[-1][2]["counts"]
    # resampled shards: the pipeline may read a sample ahead of the last batch
    assert counts["boxes/merged"] >= len(samples) and "boxes/missing" not in counts
    # every sample reached the crop with its boxes (this fixture's objects already fill the image: no_room)
    assert crop.counts["applied"] + crop.counts["no_room"] + crop.counts["no_named_boxes"] >= len(samples)
    assert crop.counts["no_boxes"] == 0


def test_data_module_refuses_a_missing_sidecar(tmp_path):
    from train.data import WebDataModule

    laion_like(tmp_path)
    with pytest.raises(ValueError, match=r"data.boxes_sidecar .*nope.jsonl.* is not a file.*boxes_min_score"):
        WebDataModule(train_shards=str(tmp_path / "laion" / "00000.tar"), samples_per_epoch=8,
                      boxes_sidecar=str(tmp_path / "nope.jsonl"), boxes_min_score=2.0)
