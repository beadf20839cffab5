"""Caption-order analysis (Fig. 4b) on rendered shards and on a COCO-format fixture."""
import json

import numpy as np

from data_prep.caption_order import analyse_coco, analyse_shards, write_report
from data_prep.mentions import mentioned_names as mentioned_objects
from data_prep.cli import main as cli_main
from data_prep.synth import write_corpus


def test_mentioned_objects_plurals_synonyms_order():
    assert mentioned_objects("Two dogs and a man eat pizzas next to a Dog") == ["dog", "person", "pizza"]
    assert mentioned_objects("a bike, three sheep and some knives on a sofa") == ["bicycle", "sheep", "knife", "couch"]
    assert mentioned_objects("nothing here") == []


def test_shards_analysis_recovers_the_knob(tmp_path):
    write_corpus(tmp_path / "s", num_samples=600, seed=2, p_large_first=0.7, progress=False)
    tally = analyse_shards([tmp_path / "s"], progress=False)
    report = write_report(tally, tmp_path / "r")
    # independent count straight from the json ground truth
    metas = []
    import tarfile
    for t in sorted((tmp_path / "s").glob("*.tar")):
        with tarfile.open(t) as tar:
            metas += [json.load(tar.extractfile(m)) for m in tar if m.name.endswith(".json")]
    expect = np.mean([max(m["objects"], key=lambda o: o["area"])["mention_index"] == 0 for m in metas])
    assert report["summary"]["n_used"] == 600
    assert abs(report["summary"]["share_largest_first"] - expect) < 1e-9
    for k, row in report["counts"].items():
        n_k = sum(len(m["objects"]) == int(k) for m in metas)
        assert sum(row) == n_k
    assert (tmp_path / "r" / "caption_order.png").stat().st_size > 1000


def test_coco_format(tmp_path):
    cats = [{"id": 1, "name": "dog"}, {"id": 2, "name": "pizza"}, {"id": 3, "name": "car"},
            {"id": 4, "name": "hot dog"}]
    anns = [  # image 1: car largest; image 2: dog largest (two pizzas, largest counts)
        {"image_id": 1, "category_id": 1, "area": 100.0}, {"image_id": 1, "category_id": 3, "area": 900.0},
        {"image_id": 1, "category_id": 2, "area": 50.0},
        {"image_id": 2, "category_id": 1, "area": 500.0}, {"image_id": 2, "category_id": 2, "area": 300.0},
        {"image_id": 2, "category_id": 2, "area": 400.0}, {"image_id": 2, "category_id": 4, "area": 9000.0},
    ]
    caps = [
        {"image_id": 1, "caption": "A car parked near a dog."},                # k=2, largest at 0
        {"image_id": 1, "caption": "A dog, a pizza and a car."},               # k=3, largest at 2
        {"image_id": 2, "caption": "Pizzas next to a dog"},                    # k=2, largest at 1
        {"image_id": 2, "caption": "A hot dog and a pizza"},  # hot dog (9000) before pizza -> k=2, at 0
        {"image_id": 2, "caption": "just a pizza"},                            # skipped
    ]
    (tmp_path / "i.json").write_text(json.dumps({"categories": cats, "annotations": anns}))
    (tmp_path / "c.json").write_text(json.dumps({"annotations": caps}))
    tally = analyse_coco(tmp_path / "i.json", tmp_path / "c.json", progress=False)
    assert dict(tally.counts) == {2: [2, 1], 3: [0, 0, 1]}
    assert tally.n_skipped == 1 and tally.n_captions == 5
    cli_main(["caption-order", "--coco-instances", str(tmp_path / "i.json"), "--coco-captions",
              str(tmp_path / "c.json"), "--out", str(tmp_path / "out")])
    rep = json.loads((tmp_path / "out" / "caption_order.json").read_text())
    assert rep["counts"] == {"2": [2, 1], "3": [0, 0, 1]}
    assert abs(rep["summary"]["share_largest_first"] - 0.5) < 1e-12


def test_shards_without_ground_truth_use_a_detector(tmp_path):
    import io
    import tarfile
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG")
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        for name, data in [("0.jpg", buf.getvalue()), ("0.txt", b"a dog and a car"),
                           ("0.json", json.dumps({"caption": "a dog and a car", "status": "success"}).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert analyse_shards([tmp_path], progress=False).n_skipped == 1
    tally = analyse_shards([tmp_path], detector=lambda img: [("car", 40.0), ("dog", 10.0)], progress=False)
    assert dict(tally.counts) == {2: [0, 1]}


def test_report_interval_and_chance(tmp_path):
    from data_prep.caption_order import Tally, format_summary, wilson_interval
    from eval.stats import wilson_interval as eval_wilson

    for c, n in [(0, 5), (3, 10), (10, 10), (37, 120)]:
        assert wilson_interval(c, n) == eval_wilson(c, n)  # same interval as the probes' error bars
    tally = Tally()
    for pos, k in [(0, 2), (0, 2), (1, 2), (0, 3), (2, 3), (0, 4)]:
        tally.add_position((k, pos))
    tally.add_position(None)
    rep = write_report(tally, tmp_path / "r")
    s = rep["summary"]
    assert (s["n_largest_first"], s["n_used"], s["n_skipped"], s["n_captions"]) == (4, 6, 1, 7)
    assert s["ci95"] == list(wilson_interval(4, 6))
    assert abs(s["chance_largest_first"] - (3 / 2 + 2 / 3 + 1 / 4) / 6) < 1e-12
    assert rep["per_k"]["2"]["n"] == 3 and rep["per_k"]["3"]["chance"] == 1 / 3
    assert "4 / 6" in format_summary(rep)
    assert (tmp_path / "r" / "caption_order.png").stat().st_size > 1000


def _coco_shards(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _coco_fixture import make_coco

    from data_prep.coco import convert
    truth = make_coco(tmp_path / "coco")
    convert(tmp_path / "coco" / "images", [tmp_path / "coco" / "captions.json"],
            [tmp_path / "coco" / "instances.json"], tmp_path / "boxed", progress=False)
    return truth


def _expected(metas):
    """Independent count: position of the largest named object among the named ones."""
    from collections import Counter
    counts = Counter()
    for m in metas:
        named = {}
        for o in m["objects"]:
            if o["mention_index"] is not None:
                named[o["mention_index"]] = max(named.get(o["mention_index"], 0), o["area"])
        if len(named) >= 2:
            order = sorted(named)
            counts[(len(order), order.index(max(order, key=named.get)))] += 1
    return counts


def test_coco_converted_shards_and_sidecar_agree(tmp_path):
    from data_prep.boxes import sidecar_line
    from data_prep.read_shards import iter_samples
    from data_prep.shards import write_tar_atomic

    _coco_shards(tmp_path)
    samples = list(iter_samples([tmp_path / "boxed"], need_image=True))
    expect = _expected(m for m, _ in samples)
    tally = analyse_shards([tmp_path / "boxed"], progress=False)
    got = {(k, p): c for k, row in tally.counts.items() for p, c in enumerate(row) if c}
    assert got == dict(expect) and sum(expect.values()) >= 5
    # the same images as LAION-like shards without boxes + a sidecar with the true boxes
    (tmp_path / "laion").mkdir()
    write_tar_atomic(tmp_path / "laion" / "00000.tar", [
        (m["key"], img, m["caption"], {k: v for k, v in m.items() if k != "objects"}) for m, img in samples])
    side = tmp_path / "boxes.jsonl"
    side.write_text("\n".join(sidecar_line(m["key"], [{**o, "score": 0.8} for o in m["objects"]])
                              for m, _ in samples))
    assert analyse_shards([tmp_path / "laion"], progress=False).n_skipped == len(samples)
    tally2 = analyse_shards([tmp_path / "laion"], sidecar=side, progress=False)
    assert dict(tally2.counts) == dict(tally.counts)
    cli_main(["caption-order", "--shards", str(tmp_path / "laion"), "--sidecar", str(side),
              "--out", str(tmp_path / "out")])
    rep = json.loads((tmp_path / "out" / "caption_order.json").read_text())
    assert rep["summary"]["n_used"] == sum(expect.values())
    cli_main(["caption-order", "--shards", str(tmp_path / "laion"), "--sidecar", str(side), "--min-score", "0.9",
              "--out", str(tmp_path / "out2")])
    assert json.loads((tmp_path / "out2" / "caption_order.json").read_text())["summary"]["n_used"] == 0
