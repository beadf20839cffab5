"""A small training world: ``data.synthetic.objects`` restricts the rendered corpus's vocabulary, and
the callback's relation set (``eval.eval_sets.relation_eval_set``) follows it."""
from __future__ import annotations

import json
import re
from collections import Counter
from types import SimpleNamespace

import pytest

from data_prep.read_shards import iter_samples
from data_prep.relation_set import blocks_for, write_relation_set
from eval import compositional as C
from eval.callback import training_vocabulary
from eval.eval_sets import relation_eval_set
from train.data import SyntheticCorpus, WebDataModule

EIGHT = ["airplane", "apple", "bear", "bicycle", "bus", "cake", "dog", "umbrella"]


def test_the_corpus_holds_only_the_named_objects(tmp_path):
    synthetic = SyntheticCorpus(num_samples=60, objects=["dog", "bus", "cake"], max_objects=3, image_size=32)
    dm = WebDataModule(synthetic=synthetic, cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    path = synthetic.cache_path(tmp_path / "cache", "train")
    names = Counter(o["name"] for meta, _ in iter_samples([path]) for o in meta["objects"])
    assert set(names) == {"dog", "bus", "cake"} and sum(names.values()) >= 2 * 60
    assert json.loads((path / "meta.json").read_text())["vocabulary"] == ["bus", "cake", "dog"]
    assert training_vocabulary(SimpleNamespace(datamodule=dm)) == ["dog", "bus", "cake"]


def test_cache_names_follow_the_set_of_names_and_stay_put_without_one():
    def name(**kw):
        return SyntheticCorpus(**kw).cache_path("c", "train").name

    assert name(objects=None) == name() == "synth-bc8f2e4aab"  # tests/test_data_prep_synth.py's quickstart name
    assert name(objects=["dog", "bus"], max_objects=2) == name(objects=["bus", "dog"], max_objects=2)
    assert name(objects=["dog", "bus"], max_objects=2) != name(objects=["dog", "cake"], max_objects=2)


@pytest.mark.parametrize("objects, message", [
    (["dog", "unicorn"], "data.synthetic.objects: unknown objects ['unicorn']; valid names: airplane"),
    (["dog", "dog", "bus", "cake", "car"], "data.synthetic.objects has duplicates"),
    ("dog", "data.synthetic.objects must be a list of strings, got 'dog'"),
    (["dog", "bus", "cake"], "data.synthetic.max_objects must be <= the number of objects (3), got 4"),
])
def test_a_bad_vocabulary_is_refused_naming_the_key(objects, message, tmp_path):
    problems = SyntheticCorpus(objects=objects).problems()
    assert len(problems) == 1 and problems[0].startswith(message), problems
    with pytest.raises(ValueError, match="data.synthetic"):
        WebDataModule(synthetic=SyntheticCorpus(objects=objects), cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()  # refused before anything is written


def test_the_relation_set_on_eight_objects_is_counterbalanced_and_as_large(tmp_path):
    assert blocks_for(None) == 1 and blocks_for(EIGHT) == 8 and blocks_for(EIGHT[:4]) == 16
    write_relation_set(tmp_path, objects=EIGHT[::-1], blocks=blocks_for(EIGHT), progress=False)
    items = C.read_set(tmp_path)
    assert len(items) == 8 * 4 * 8 == 256  # no fewer than the whole vocabulary's 248
    assert {o for it in items for o in it["objects"]} == set(EIGHT)
    assert Counter(it["relation"] for it in items) == {r: 64 for r in ("left", "right", "above", "below")}
    assert Counter(it["large"] for it in items) == {0: 128, 1: 128}
    for role in (0, 1):
        assert set(Counter(it["objects"][role] for it in items).values()) == {32}
    assert all(it["objects"][0] != it["objects"][1] for it in items)
    with pytest.raises(ValueError, match="unknown objects"):
        write_relation_set(tmp_path / "bad", objects=["dog", "unicorn"], progress=False)
    with pytest.raises(ValueError, match="at least 2 distinct objects"):
        write_relation_set(tmp_path / "bad", objects=["dog", "dog"], progress=False)


def test_the_cached_relation_set_is_one_per_vocabulary(tmp_path):
    small = relation_eval_set(tmp_path, 0, 32, objects=EIGHT[:4])
    assert relation_eval_set(tmp_path, 0, 32, objects=EIGHT[:4][::-1]) == small
    meta = json.loads((small / "meta.json").read_text())
    assert meta["vocabulary"] == sorted(EIGHT[:4]) and meta["num_images"] == 4 * 4 * 16
    whole = relation_eval_set(tmp_path, 0, 32)
    assert whole.name == "relations-seed0-px32" and small.name.startswith("relations-seed0-px32-v")


def test_no_vocabulary_without_a_rendered_restricted_corpus():
    assert training_vocabulary(SimpleNamespace()) is None
    assert training_vocabulary(SimpleNamespace(datamodule=SimpleNamespace(synthetic=None))) is None
    assert training_vocabulary(SimpleNamespace(datamodule=SimpleNamespace(synthetic=SyntheticCorpus()))) is None


def test_eval_compositional_takes_the_runs_vocabulary_or_objects(tmp_path, capsys):
    from eval.cli import main, run_vocabulary

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("data:\n  synthetic:\n    objects: [dog, bus]\n")
    assert run_vocabulary(run / "checkpoints" / "last.ckpt") == ["dog", "bus"]
    (run / "config.yaml").write_text("data:\n  train_shards: x.tar\n  synthetic: null\n")
    assert run_vocabulary(run / "checkpoints" / "last.ckpt") is None
    assert run_vocabulary(tmp_path / "elsewhere.ckpt") is None and run_vocabulary(None) is None

    out = tmp_path / "c.json"
    for bad, message in ((["dog", "unicorn"], "--objects: unknown objects ['unicorn']"),
                         (["dog"], "--objects: a relation set needs at least 2 distinct objects")):
        with pytest.raises(SystemExit, match=re.escape(message)):
            main(["compositional", "--model", "clip-micro", "--objects", *bad, "--out", str(out)])
    assert main(["compositional", "--model", "clip-micro", "--objects", "dog", "bus", "cake", "car",
                 "--cache-dir", str(tmp_path / "cache"), "--image-size", "32", "--out", str(out),
                 "--no-progress"]) == 0
    assert "relation set on 4 objects (--objects's: bus, cake, car, dog)" in capsys.readouterr().out
    res = json.loads(out.read_text())["results"]["compositional"]
    assert res["swap_obj"]["n_items"] == res["replace_axis"]["n_items"] == 4 * 4 * 16
