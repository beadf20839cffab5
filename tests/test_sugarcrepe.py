"""SugarCrepe (eval.sugarcrepe) on the official files' entries for 12 real COCO val2017 photos."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from _table_adapter import TableAdapter
from eval import sugarcrepe as S

DATA = Path(__file__).parent / "data" / "coco_mini"
ROOT, IMAGES = DATA / "sugarcrepe", DATA / "val2017"
COUNTS = {"add_att": 4, "add_obj": 17, "replace_att": 9, "replace_obj": 13, "replace_rel": 18, "swap_att": 4, "swap_obj": 4}


def _adapter(prefer: str) -> TableAdapter:
    """Every image embeds as e0; a positive caption as e0 + e1 (close), a negative as e1 (far), or
    the other way round; anything else is at random."""
    positives = {x["caption"] for f in ROOT.glob("*.json") for x in json.loads(f.read_text()).values()}

    def text_fn(s):
        close = (s in positives) == (prefer == "positive")
        return torch.tensor([1.0, 1.0, 0.0]) if close else torch.tensor([0.0, 1.0, 0.0])

    return TableAdapter(lambda im: torch.tensor([1.0, 0.0, 0.0]), text_fn)


def test_reads_every_pair_of_the_official_format():
    data = S.load(ROOT, IMAGES)
    assert {s: len(p) for s, p in data.pairs.items()} == COUNTS and data.missing_subsets == []
    assert sum(COUNTS.values()) == 69


def test_known_answers_and_denominators():
    for prefer, share in (("positive", 1.0), ("negative", 0.0)):
        adapter = _adapter(prefer)
        res = S.run(adapter, S.prepare(adapter, S.load(ROOT, IMAGES)), min_items=1)
        for s, n in COUNTS.items():
            acc = res["subsets"][s]["accuracy"]
            assert (acc["share"], acc["total"]) == (share, n)
            assert res["summary"][s]["denominator"] == f"N={n}"
        assert res["summary"]["mean"]["value"] == share and res["n_images"] == 12
    # SugarCrepe's rule is strict: a tie counts against the positive
    tie = TableAdapter(lambda im: torch.tensor([1.0, 0.0]), lambda s: torch.tensor([1.0, 1.0]))
    res = S.run(tie, S.prepare(tie, S.load(ROOT, IMAGES)), min_items=1)
    assert all(r["accuracy"]["count"] == 0 for r in res["subsets"].values())


def test_few_pairs_read_na_and_the_mean_names_its_subsets():
    adapter = _adapter("positive")
    res = S.run(adapter, S.prepare(adapter, S.load(ROOT, IMAGES)), min_items=10)
    assert res["summary"]["swap_obj"] == {"value": None, "denominator": "n/a (N = 4, fewer than 10)", "ci": None}
    assert res["summary"]["add_obj"]["value"] == 1.0
    assert res["summary"]["mean"]["denominator"] == "mean of 3 subsets (add_obj, replace_obj, replace_rel)"


def test_missing_images_and_subsets_are_counted(tmp_path):
    root, images = tmp_path / "sc", tmp_path / "img"
    shutil.copytree(ROOT, root)
    shutil.copytree(IMAGES, images)
    (root / "swap_obj.json").unlink()
    victim = json.loads((root / "add_att.json").read_text())
    name = next(iter(victim.values()))["filename"]
    (images / name).unlink()
    (images / sorted(p.name for p in images.iterdir())[0]).write_bytes(b"broken")
    data = S.load(root, images)
    assert data.missing_subsets == ["swap_obj"] and data.skipped["add_att"]["image missing"] >= 1
    assert name in data.missing_examples
    adapter = _adapter("positive")
    res = S.run(adapter, S.prepare(adapter, data), min_items=1)
    assert "swap_obj" not in res["subsets"] and res["missing_subsets"] == ["swap_obj"]
    lost = sum(sum(r["skipped"].values()) for r in res["subsets"].values())
    assert lost + sum(r["n_pairs"] for r in res["subsets"].values()) == 69 - COUNTS["swap_obj"]
    assert any("unreadable image" in r["skipped"] for r in res["subsets"].values())


def test_bad_folders_are_refused_before_work(tmp_path):
    assert "is not a directory" in S.inputs_problem(tmp_path / "nope", IMAGES)
    assert "has none of" in S.inputs_problem(tmp_path, IMAGES)
    assert "unknown SugarCrepe subsets" in S.inputs_problem(ROOT, IMAGES, ["swap_everything"])
    (tmp_path / "swap_obj.json").write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        S.load(tmp_path, IMAGES, ["swap_obj"])


def test_a_model_that_knows_nothing_sits_at_chance():
    """Shuffled-label control: captions and negatives embedded at random, pooled over the subsets."""
    def text_fn(s):
        return torch.randn(16, generator=torch.Generator().manual_seed(sum(map(ord, s)) * 31 + len(s)))

    adapter = TableAdapter(lambda im: torch.randn(16, generator=torch.Generator().manual_seed(im.size[0] * 7 + im.size[1])),
                           text_fn)
    res = S.run(adapter, S.prepare(adapter, S.load(ROOT, IMAGES)), min_items=1)
    wins = sum(r["accuracy"]["count"] for r in res["subsets"].values())
    lo, hi = S.proportion(wins, 69)["ci"]
    assert lo < 0.5 < hi
