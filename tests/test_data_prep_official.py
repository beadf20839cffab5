"""Official ComCO folder reader on a fixture written here."""
import json

import pytest
from PIL import Image

from data_prep.cli import main as cli_main
from data_prep.official import convert_official, large_slot

LAYOUT = {
    "CoCo-OneObject": ["dog", "pizza", "bench"],
    "CoCo-TwoObject-LeftBig": ["dog_pizza"],
    "CoCo-ThreeObject-ULBig": ["dog_pizza_car", "car_dog_pizza"],
    "CoCo-ThreeObject-Middle-Big": ["pizza_car_dog"],
    "CoCo-ThreeObject-BRBig": ["car_pizza_dog"],
    "CoCo-FourObject-Middle-Big": ["dog_pizza_car_apple"],
}


@pytest.fixture
def official_dir(tmp_path):
    src = tmp_path / "ComCO"
    for folder, stems in LAYOUT.items():
        (src / folder).mkdir(parents=True)
        for i, stem in enumerate(stems):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(src / folder / f"{stem}.png")
    (src / "README.txt").write_text("not a folder")
    (src / "other").mkdir()
    return src


def test_convert_official_layout(official_dir, tmp_path):
    manifest = convert_official(official_dir, tmp_path / "out")
    recs = {r["image"]: r for r in map(json.loads, manifest.read_text().splitlines())}
    assert len(recs) == sum(map(len, LAYOUT.values()))
    r = recs["CoCo-ThreeObject-ULBig/car_dog_pizza.png"]
    assert r["objects"] == ["car", "dog", "pizza"] and r["large"] == 0 and r["n_objects"] == 3
    assert r["kind"] == "multi" and r["setting"] == "n3_large_slot0" and r["areas"] is None
    assert recs["CoCo-ThreeObject-Middle-Big/pizza_car_dog.png"]["large"] == 1
    assert recs["CoCo-ThreeObject-BRBig/car_pizza_dog.png"]["large"] == 2
    assert recs["CoCo-TwoObject-LeftBig/dog_pizza.png"]["large"] == 0
    assert recs["CoCo-FourObject-Middle-Big/dog_pizza_car_apple.png"]["objects"] == ["dog", "pizza", "car", "apple"]
    single = recs["CoCo-OneObject/bench.png"]
    assert single == {**single, "objects": ["bench"], "large": None, "kind": "single", "n_objects": 1}
    for rel in recs:  # images are next to the manifest, byte for byte
        assert (tmp_path / "out" / rel).read_bytes() == (official_dir / rel).read_bytes()


def test_override_and_cli(official_dir, tmp_path):
    cli_main(["official", "--src", str(official_dir), "--out", str(tmp_path / "o"),
              "--large-slot", "FourObject-Middle-Big=2"])
    recs = [json.loads(x) for x in (tmp_path / "o" / "manifest.jsonl").read_text().splitlines()]
    four = [r for r in recs if r["n_objects"] == 4]
    assert four[0]["large"] == 2


def test_large_slot_names_and_errors(tmp_path):
    assert [large_slot(t, 3) for t in ("ULBig", "Middle-Big", "BRBig")] == [0, 1, 2]
    assert large_slot("Slot3Big", 5) == 3
    with pytest.raises(ValueError, match="cannot tell the large slot"):
        large_slot("SideBig", 3)
    with pytest.raises(ValueError, match="no CoCo-"):
        convert_official(tmp_path, tmp_path / "x")
    bad = tmp_path / "src" / "CoCo-ThreeObject-ULBig"
    bad.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(bad / "dog_pizza.png")  # two names in a three-object folder
    with pytest.warns(UserWarning, match="skipping"):
        m = convert_official(tmp_path / "src", tmp_path / "y")
    assert m.read_text() == ""
