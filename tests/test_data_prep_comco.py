"""ComCO/SimCO eval sets: manifest format and counterbalancing of objects over slots and roles."""
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from data_prep.comco import counterbalanced_items, write_eval_set
from data_prep.vocab import SHAPES, list_objects


def _manifest(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def objects_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("comco")
    return out, _manifest(write_eval_set(out, seed=0, progress=False))


def test_manifest_format_and_files(objects_set):
    out, recs = objects_set
    v = len(list_objects())
    singles = [r for r in recs if r["kind"] == "single"]
    assert sorted(r["objects"][0] for r in singles) == list_objects()
    assert all(r["large"] is None and r["n_objects"] == 1 for r in singles)
    multi = [r for r in recs if r["kind"] == "multi"]
    assert len(multi) == v * (2 + 3 + 4 + 5)
    # exactly the documented fields (docs/INTERFACES.md); bboxes are read by eval/attention.py
    keys = {"image", "objects", "large", "areas", "n_objects", "kind", "setting", "bboxes"}
    for r in recs[:: 37]:
        assert set(r) == keys
        assert len(r["bboxes"]) == r["n_objects"] and all(len(b) == 4 for b in r["bboxes"])
        img = Image.open(out / r["image"])
        assert img.size == (64, 64)
        assert len(r["objects"]) == len(r["areas"]) == r["n_objects"] == len(set(r["objects"]))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["items_per_setting"] == v and meta["num_images"] == len(recs)


def test_every_object_equally_often_in_every_slot_and_role(objects_set):
    _, recs = objects_set
    names = list_objects()
    for n in (2, 3, 4, 5):
        counts = Counter()
        for r in recs:
            if r["kind"] == "multi" and r["n_objects"] == n:
                for slot, name in enumerate(r["objects"]):
                    counts[(name, slot, "large" if slot == r["large"] else "small")] += 1
        for slot in range(n):
            large = {counts[(nm, slot, "large")] for nm in names}
            small = {counts[(nm, slot, "small")] for nm in names}
            assert large == {1}, (n, slot, large)  # each object large once in each slot
            assert small == {n - 1}, (n, slot, small)
        settings = Counter(r["setting"] for r in recs if r["n_objects"] == n and r["kind"] == "multi")
        assert settings == {f"n{n}_large_slot{j}": len(names) for j in range(n)}


def test_large_object_has_the_largest_visible_area(objects_set):
    _, recs = objects_set
    for r in recs:
        if r["kind"] == "multi":
            big = r["areas"][r["large"]]
            assert all(big > a for i, a in enumerate(r["areas"]) if i != r["large"]), r


def test_position_is_not_tied_to_category_index(objects_set):
    _, recs = objects_set
    # the paper's lists put lower category indices first; here slot 0 holds every object equally often,
    # and pairs vary: no fixed neighbour per object
    pairs = Counter(tuple(r["objects"][:2]) for r in recs if r["n_objects"] == 2)
    assert max(pairs.values()) <= 2


def test_counterbalanced_items_is_a_latin_design():
    rng = np.random.default_rng(0)
    items = counterbalanced_items(list("abcdefg"), 3, 14, rng)
    for block in (items[:7], items[7:]):  # each block of V items is a Latin design on its own
        for slot in range(3):
            assert Counter(it[slot] for it in block) == {c: 1 for c in "abcdefg"}
    assert all(len(set(it)) == 3 for it in items)


@pytest.mark.parametrize("n", [2, 3])
def test_blocks_hold_distinct_scenes_not_copies(tmp_path, n):
    """A second block is new scenes: a copy would count as independent items and narrow the intervals."""
    names = ["apple", "axe", "bed", "bus", "cake", "car", "cup", "dog"]
    items = counterbalanced_items(names, n, 4 * len(names), np.random.default_rng(0))
    assert len({tuple(it) for it in items}) == len(items)
    with pytest.raises(ValueError, match="cannot be drawn"):  # 3 names: only 6 ordered pairs exist
        counterbalanced_items(list("abc"), 2, 9, np.random.default_rng(0))
    m = write_eval_set(tmp_path / "s", n_objects=(n,), items_per_setting=2 * len(names), objects=names, progress=False)
    multi = [r for r in _manifest(m) if r["kind"] == "multi"]
    pixels = {(tmp_path / "s" / r["image"]).read_bytes() for r in multi}
    assert len(multi) == 2 * len(names) * n and len(pixels) == len(multi)  # no two images alike


def test_shapes_set_and_determinism(tmp_path):
    m1 = write_eval_set(tmp_path / "a", seed=1, kind="shapes", n_objects=(3,), progress=False)
    m2 = write_eval_set(tmp_path / "b", seed=1, kind="shapes", n_objects=(3,), progress=False)
    recs = _manifest(m1)
    assert m1.read_text() == m2.read_text()
    assert {r["objects"][0] for r in recs if r["kind"] == "single"} == set(SHAPES)
    assert len(recs) == len(SHAPES) * 4
    for r in recs:
        assert (tmp_path / "a" / r["image"]).read_bytes() == (tmp_path / "b" / r["image"]).read_bytes()


@pytest.mark.parametrize("kw, flag", [(dict(n_objects=(1,)), "--n-objects"), (dict(n_objects=(6,)), "--n-objects"),
                                      (dict(items_per_setting=0), "--items-per-setting"),
                                      (dict(kind="animals"), "--kind")])
def test_bad_arguments(tmp_path, kw, flag):
    with pytest.raises(ValueError, match=flag):
        write_eval_set(tmp_path / "x", progress=False, **kw)
    assert not (tmp_path / "x").exists()


def test_non_multiple_items_warns(tmp_path):
    with pytest.warns(UserWarning, match="not a multiple"):
        write_eval_set(tmp_path, kind="shapes", n_objects=(2,), items_per_setting=3, progress=False)


def test_cli_comco_and_vocab(tmp_path, capsys):
    from data_prep.cli import main as cli_main

    cli_main(["comco", "--out", str(tmp_path / "c"), "--kind", "shapes", "--n-objects", "2", "--no-progress"])
    recs = _manifest(tmp_path / "c" / "manifest.jsonl")
    assert len(recs) == len(SHAPES) * 3
    for argv, msg in [(["--n-objects", "9"], "--n-objects values must lie in 2..5"),
                      (["--background", "pink"], "--background"),
                      ([], "not empty; pass --overwrite")]:
        with pytest.raises(SystemExit) as e:
            cli_main(["comco", "--out", str(tmp_path / "c"), *argv])
        assert e.value.code == 2 and msg in capsys.readouterr().err
    cli_main(["vocab", "--grid", str(tmp_path / "grid.png")])
    out = capsys.readouterr().out
    assert "dog\tU+1F415\tmedium" in out and Image.open(tmp_path / "grid.png").size[0] > 0


def test_objects_subset(tmp_path):
    recs = _manifest(write_eval_set(tmp_path / "a", objects=["dog", "pizza", "car", "bus"], n_objects=(2, 4),
                                    progress=False))
    assert {o for r in recs for o in r["objects"]} == {"dog", "pizza", "car", "bus"}
    assert len(recs) == 4 + 4 * 2 + 4 * 4
    with pytest.raises(ValueError, match="--objects: unknown objects"):
        write_eval_set(tmp_path / "b", objects=["dog", "circle"], progress=False)
    with pytest.raises(ValueError, match="exceed the 2 names"):
        write_eval_set(tmp_path / "b", objects=["dog", "car"], n_objects=(3,), progress=False)
