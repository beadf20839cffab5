"""Caption-order analysis (Fig. 4b) on rendered shards and on a COCO-format fixture."""
import json

import numpy as np

from data_prep.caption_order import analyse_coco, analyse_shards, mentioned_objects, write_report
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
        {"image_id": 2, "caption": "A hot dog and a pizza"},  # words: "hot dog" reads as dog -> k=2, at 0
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
