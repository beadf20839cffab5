"""Training corpus: determinism, img2dataset layout, the caption-order knob, bad input."""
import dataclasses
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from data_prep import synth
from data_prep.captions import make_caption
from data_prep.cli import build_parser
from data_prep.cli import main as cli_main
from data_prep.corpus_spec import CorpusSpec, cli_flag, field_default
from data_prep.synth import caption_mention_order, write_corpus


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_same_seed_gives_byte_identical_shards_for_any_worker_count(tmp_path):
    kw = dict(num_samples=120, seed=3, shard_size=50, progress=False)
    a = write_corpus(tmp_path / "a", **kw)
    write_corpus(tmp_path / "b", **kw)
    write_corpus(tmp_path / "c", workers=2, **kw)
    write_corpus(tmp_path / "d", **{**kw, "seed": 4})
    fa = _files(tmp_path / "a")
    assert sorted(fa) == ["00000.tar", "00001.tar", "00002.tar", "meta.json", "sizes.json"]
    assert fa == _files(tmp_path / "b") == _files(tmp_path / "c")
    assert fa["00000.tar"] != _files(tmp_path / "d")["00000.tar"]
    assert json.loads(fa["sizes.json"]) == {"00000.tar": 50, "00001.tar": 50, "00002.tar": 20}
    assert a["num_samples"] == 120 and json.loads(fa["meta.json"])["seed"] == 3
    with tarfile.open(tmp_path / "a" / "00000.tar") as tar:  # no clock or user in the headers
        assert {(m.mtime, m.uid, m.gid, m.uname) for m in tar} == {(0, 0, 0, "")}


def test_shards_read_back_with_webdataset_in_img2dataset_layout(tmp_path):
    write_corpus(tmp_path, num_samples=40, seed=0, shard_size=25, progress=False, min_objects=2, max_objects=5)
    urls = [str(p) for p in sorted(tmp_path.glob("*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(samples) == 40
    keys = [s["__key__"] for s in samples]
    assert len(set(keys)) == 40 and keys[0] == "0000000" and keys[25] == "0000100"
    for s in samples:
        assert {"jpg", "txt", "json"} <= set(s)
        meta, img = s["json"], s["jpg"]
        assert img.size == (64, 64) and meta["width"] == meta["height"] == 64
        assert meta["status"] == "success" and meta["key"] == s["__key__"] and meta["caption"] == s["txt"]
        objs = meta["objects"]
        assert 2 <= len(objs) <= 5
        assert sorted(o["mention_index"] for o in objs) == list(range(len(objs)))
        mentioned = [o["name"] for o in sorted(objs, key=lambda o: o["mention_index"])]
        assert s["txt"] == make_caption(mentioned, meta["template"])  # caption rebuildable from json
        first = min(objs, key=lambda o: o["mention_index"])
        assert meta["large_first"] == (first["area"] == max(o["area"] for o in objs))
        for o in objs:
            x, y, w, h = o["bbox"]
            assert 0 <= x and x + w <= 64 and 0 <= y and y + h <= 64 and 0 < o["area"] <= w * h
    assert len({s["json"]["template"] for s in samples}) >= 4  # several templates in use


@pytest.mark.parametrize("p", [0.9, 0.0, 0.5])
def test_caption_mention_order_decision_hits_p(p):
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(5000):
        n = int(rng.integers(2, 6))
        areas = [int(a) for a in rng.integers(1, 1000, n)]
        order, large_first = caption_mention_order(areas, p, rng)
        assert sorted(order) == list(range(n))
        is_largest_first = areas[order[0]] == max(areas)
        assert is_largest_first == large_first or areas.count(max(areas)) > 1
        if large_first:
            assert [areas[i] for i in order] == sorted(areas, reverse=True)
        hits += is_largest_first
    assert abs(hits / 5000 - p) <= 0.02


def test_caption_mention_order_random_branch_is_uniform_over_non_largest_first():
    rng = np.random.default_rng(2)
    firsts = [caption_mention_order([5, 50, 10, 1], 0.0, rng)[0][0] for _ in range(3000)]
    counts = np.bincount(firsts, minlength=4)
    assert counts[1] == 0
    assert all(abs(c / 3000 - 1 / 3) < 0.04 for c in counts[[0, 2, 3]])


def _largest_first_share(out: Path) -> float:
    metas = [s["json"] for s in wds.WebDataset(sorted(map(str, out.glob("*.tar"))), shardshuffle=False).decode()]
    firsts = [max(m["objects"], key=lambda o: o["area"])["mention_index"] == 0 for m in metas]
    return float(np.mean(firsts))


def test_knob_end_to_end_over_5000_samples(tmp_path):
    write_corpus(tmp_path / "p9", num_samples=5000, seed=11, p_large_first=0.9, progress=False)
    assert abs(_largest_first_share(tmp_path / "p9") - 0.9) <= 0.02
    write_corpus(tmp_path / "p0", num_samples=500, seed=11, p_large_first=0.0, progress=False, size_mode="mixed")
    assert _largest_first_share(tmp_path / "p0") <= 0.02


def interrupt_sample(monkeypatch, at: int) -> None:
    """Make rendering sample ``at`` raise KeyboardInterrupt (Ctrl-C in the middle of a corpus)."""
    real = synth.make_sample

    def failing(index, **kw):
        if index == at:
            raise KeyboardInterrupt
        return real(index, **kw)

    monkeypatch.setattr(synth, "make_sample", failing)


def test_interrupted_run_leaves_no_partial_shard(tmp_path, monkeypatch):
    interrupt_sample(monkeypatch, at=7)
    with pytest.raises(KeyboardInterrupt):
        write_corpus(tmp_path, num_samples=20, shard_size=5, progress=False)
    # complete shards only, beside the meta.json that records them (so `--overwrite` can remove them)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.tar", "meta.json"]


@pytest.mark.parametrize("kw, flag", [
    (dict(num_samples=0), "--num-samples"), (dict(p_large_first=1.5), "--p-large-first"),
    (dict(p_large_first=-0.1), "--p-large-first"), (dict(min_objects=3, max_objects=2), "--max-objects"),
    (dict(size_mode="huge"), "--size-mode"), (dict(shard_size=0), "--shard-size"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, kw, flag):
    args = dict(num_samples=10, progress=False) | kw
    with pytest.raises(ValueError, match=flag):
        write_corpus(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


def test_non_empty_output_needs_overwrite(tmp_path):
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(ValueError, match="--overwrite"):
        write_corpus(tmp_path, num_samples=5, progress=False)
    write_corpus(tmp_path, num_samples=5, progress=False, overwrite=True)
    assert (tmp_path / "00000.tar").exists()


def test_cli_synth_and_errors(tmp_path, capsys):
    cli_main(["synth", "--out", str(tmp_path / "s"), "--num-samples", "12", "--seed", "1", "--shard-size", "5",
              "--no-progress"])
    assert json.loads((tmp_path / "s" / "sizes.json").read_text()) == {"00000.tar": 5, "00001.tar": 5, "00002.tar": 2}
    for argv, msg in [(["--num-samples", "0"], "--num-samples must be positive"),
                      (["--num-samples", "5", "--p-large-first", "2"], "--p-large-first must lie in"),
                      (["--num-samples", "5"], "not empty; pass --overwrite")]:
        with pytest.raises(SystemExit) as e:
            cli_main(["synth", "--out", str(tmp_path / "s"), *argv])
        assert e.value.code == 2 and msg in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "data_prep", "synth", "--out", str(tmp_path), "--num-samples", "3",
                        "--no-progress"], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "00000.tar").exists()


def test_objects_subset_and_unknown_name(tmp_path):
    write_corpus(tmp_path / "a", num_samples=30, objects=["dog", "pizza", "car"], max_objects=3, progress=False)
    metas = [s["json"] for s in wds.WebDataset(str(tmp_path / "a" / "00000.tar"), shardshuffle=False).decode()]
    assert {o["name"] for m in metas for o in m["objects"]} == {"dog", "pizza", "car"}
    with pytest.raises(ValueError, match=r"--objects: unknown objects \['unicorn'\]; valid names: airplane"):
        write_corpus(tmp_path / "b", num_samples=3, objects=["dog", "unicorn"], progress=False)
    with pytest.raises(ValueError, match="--max-objects must be <= the number of objects"):
        write_corpus(tmp_path / "b", num_samples=3, objects=["dog", "car"], max_objects=4, progress=False)


def _templates_used(out: Path) -> set[str]:
    urls = [str(p) for p in sorted(out.glob("*.tar"))]
    return {json.loads(s["json"])["template"] for s in wds.WebDataset(urls, shardshuffle=False)}


def test_held_out_templates_never_appear_in_the_corpus_and_meta_says_so(tmp_path):
    from data_prep.captions import HELD_OUT_TEMPLATES, TEMPLATES

    assert set(HELD_OUT_TEMPLATES) == {"and_chain", "there_is"}
    meta = write_corpus(tmp_path / "default", num_samples=300, seed=1, progress=False)
    used = _templates_used(tmp_path / "default")
    assert used == set(TEMPLATES) - set(HELD_OUT_TEMPLATES)  # the other five are all drawn in 300 samples
    assert meta["held_out_templates"] == list(HELD_OUT_TEMPLATES) and set(meta["templates"]) == used
    write_corpus(tmp_path / "all", num_samples=300, seed=1, progress=False, held_out_templates=[])
    assert _templates_used(tmp_path / "all") == set(TEMPLATES)
    write_corpus(tmp_path / "one", num_samples=50, seed=1, progress=False,
                 held_out_templates=[t for t in TEMPLATES if t != "photo"])
    assert _templates_used(tmp_path / "one") == {"photo"}


def test_held_out_templates_keep_the_images_and_objects_of_every_sample(tmp_path):
    """The template draw consumes the same RNG step whatever is held out: scenes do not change."""
    a = synth.make_sample(7, synth.CorpusSpec(num_samples=10), key="k")
    b = synth.make_sample(7, synth.CorpusSpec(num_samples=10, held_out_templates=[]), key="k")
    assert a[1] == b[1] and a[3]["objects"] == b[3]["objects"]


@pytest.mark.parametrize("held_out, needle", [(["nope"], "unknown held-out caption template(s) ['nope']"),
                                              (None, "leaves none to train on")])
def test_bad_held_out_templates_are_refused_naming_the_flag(tmp_path, held_out, needle):
    from data_prep.captions import TEMPLATES

    held_out = list(TEMPLATES) if held_out is None else held_out
    with pytest.raises(ValueError, match="--held-out-templates") as e:
        write_corpus(tmp_path / "x", num_samples=10, progress=False, held_out_templates=held_out)
    assert needle in str(e.value) and not (tmp_path / "x").exists()


def test_synthetic_corpus_config_names_bad_held_out_templates():
    from train.data import SyntheticCorpus

    problems = SyntheticCorpus(held_out_templates=["nope"]).problems()
    assert len(problems) == 1 and problems[0].startswith("data.synthetic.held_out_templates: unknown")
    assert SyntheticCorpus().cache_path("c", "train") != SyntheticCorpus(held_out_templates=[]).cache_path("c", "train")


# ----------------------------------------------------------------------------- one declaration of the knobs

#: the synth sub-command's flags that are not corpus knobs (how to run, not what to render)
RUN_FLAGS = {"help", "out", "workers", "objects", "overwrite", "no_progress"}
KNOBS = [f.name for f in dataclasses.fields(CorpusSpec)]


def _synth_actions() -> dict:
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["synth"]
    return {a.dest: a for a in sub._actions}


def test_synth_flags_are_exactly_the_declared_knobs_and_the_run_flags():
    assert set(_synth_actions()) == set(KNOBS) | RUN_FLAGS
    assert set(KNOBS) == {"num_samples", "seed", "image_size", "min_objects", "max_objects", "size_mode",
                          "p_large_first", "relation_share", "attribute_share", "shard_size", "held_out_templates"}


@pytest.mark.parametrize("name", KNOBS)
def test_each_knob_is_one_flag_from_its_declaration(name):
    from train.data import SyntheticCorpus

    f = {f.name: f for f in dataclasses.fields(CorpusSpec)}[name]
    action = _synth_actions()[name]
    assert action.option_strings == [cli_flag(name)] == ["--" + name.replace("_", "-")]
    assert action.help.startswith(f.metadata["help"]) and f.metadata["help"]
    assert action.choices == f.metadata["choices"]
    default = field_default(f)
    if default is dataclasses.MISSING:  # num_samples: required on the command line, no default in data_prep
        assert action.required and name == "num_samples"
        assert SyntheticCorpus().num_samples == 40000  # the training config's own default (quickstart size)
    else:  # defaults stand once: parser == CorpusSpec == training's SyntheticCorpus
        assert not action.required
        assert action.default == default == getattr(SyntheticCorpus(), name)
        assert type(action.default) is type(getattr(SyntheticCorpus(), name))
    # the training config documents the same field with the same help text
    train_field = {f.name: f for f in dataclasses.fields(SyntheticCorpus)}[name]
    assert train_field.metadata["help"] == f.metadata["help"]
    assert name in SyntheticCorpus.__doc__


def test_knob_defaults_are_written_only_in_the_declaration():
    import inspect

    import data_prep.cli
    from train.data import SyntheticCorpus

    assert CorpusSpec(num_samples=1).p_large_first == 0.9 == _synth_actions()["p_large_first"].default
    for source in (inspect.getsource(data_prep.cli.build_parser), inspect.getsource(SyntheticCorpus)):
        assert not re.search(r"\b0\.9\b|one_large|and_chain", source)  # (1000: other sub-commands' shard sizes)


#: (field values, the message with ``{field}`` for each field's name): one rule each
BAD_KNOBS = [
    (dict(p_large_first=1.5), "{p_large_first} must lie in [0, 1], got 1.5"),
    (dict(p_large_first=-0.1), "{p_large_first} must lie in [0, 1], got -0.1"),
    (dict(num_samples=0), "{num_samples} must be positive, got 0"),
    (dict(seed=-1), "{seed} must be non-negative, got -1"),
    (dict(image_size=8), "{image_size} must be >= 16, got 8"),
    (dict(min_objects=0), "{min_objects} must be positive, got 0"),
    (dict(min_objects=3, max_objects=2), "{max_objects} (2) must be >= {min_objects} (3)"),
    (dict(max_objects=99), "{max_objects} must be <= the number of objects (62), got 99"),
    (dict(size_mode="huge"), "{size_mode} must be one of ('one_large', 'mixed'), got 'huge'"),
    (dict(shard_size=0), "{shard_size} must be positive, got 0"),
    (dict(held_out_templates=["nope"]), "{held_out_templates}: unknown held-out caption template(s) ['nope']"),
]


def _argv(values: dict) -> list[str]:
    argv = []
    for name, value in values.items():
        argv += [cli_flag(name), *(value if isinstance(value, list) else [str(value)])]
    return argv


@pytest.mark.parametrize("values, rule", BAD_KNOBS, ids=[next(iter(v)) + "=" + str(next(iter(v.values())))
                                                        for v, _ in BAD_KNOBS])
def test_a_bad_knob_gives_the_same_rule_in_both_namings(tmp_path, capsys, values, rule):
    from train.data import SyntheticCorpus, WebDataModule

    flag_msg = rule.format(**{k: cli_flag(k) for k in KNOBS})
    key_msg = rule.format(**{k: f"data.synthetic.{k}" for k in KNOBS})
    with pytest.raises(SystemExit) as e:
        cli_main(["synth", "--out", str(tmp_path / "out"), "--num-samples", "5", *_argv(values)])
    # a field with choices: argparse itself refuses the value (its usage lists them), naming the flag
    cli_msg = "argument --size-mode: invalid choice: 'huge'" if "size_mode" in values else flag_msg
    assert e.value.code == 2 and cli_msg in capsys.readouterr().err
    with pytest.raises(ValueError, match=re.escape(flag_msg)):
        write_corpus(tmp_path / "out", **{"num_samples": 5, "progress": False, **values})
    assert not (tmp_path / "out").exists()
    config = SyntheticCorpus(**values)
    assert any(key_msg in m for m in config.problems()) and config.problems() == CorpusSpec(
        **{"num_samples": 40000, **values}).problems(lambda f: f"data.synthetic.{f}")
    with pytest.raises(ValueError, match=re.escape(key_msg)) as err:
        WebDataModule(synthetic=config, cache_dir=str(tmp_path / "cache"))
    assert "--" not in str(err.value)


@pytest.mark.parametrize("name, value", [("seed", True), ("num_samples", 2.0), ("p_large_first", "0.5"),
                                         ("p_large_first", False), ("held_out_templates", "photo")])
def test_config_type_checks_refuse_bools_and_strings(name, value):
    from train.data import SyntheticCorpus

    problems = SyntheticCorpus(**{name: value}).problems()
    assert len(problems) == 1 and problems[0].startswith(f"data.synthetic.{name} must be "), problems


def test_cli_type_errors_name_the_flag(tmp_path, capsys):
    for argv, msg in [(["--seed", "x"], "--seed must be an integer, got 'x'"),
                      (["--p-large-first", "half"], "--p-large-first must be a number, got 'half'")]:
        with pytest.raises(SystemExit) as e:
            cli_main(["synth", "--out", str(tmp_path), "--num-samples", "5", *argv])
        assert e.value.code == 2 and msg in capsys.readouterr().err


def test_write_corpus_takes_a_spec_or_its_fields(tmp_path):
    from train.data import SyntheticCorpus

    write_corpus(tmp_path / "kw", 6, seed=2, shard_size=4, image_size=32, progress=False)
    write_corpus(tmp_path / "spec", spec=CorpusSpec(6, seed=2, shard_size=4, image_size=32), progress=False)
    config = SyntheticCorpus(num_samples=6, seed=2, shard_size=4, image_size=32, val_num_samples=3)
    write_corpus(tmp_path / "train", spec=config, progress=False)  # a training config: its knobs only
    write_corpus(tmp_path / "over", spec=CorpusSpec(6, seed=9, shard_size=4, image_size=32), seed=2, progress=False)
    assert _files(tmp_path / "kw") == _files(tmp_path / "spec") == _files(tmp_path / "train") \
        == _files(tmp_path / "over")


def test_jsonargparse_documents_every_field_of_the_training_config():
    from jsonargparse import ArgumentParser
    from train.data import SyntheticCorpus

    parser = ArgumentParser()
    parser.add_class_arguments(SyntheticCorpus, "synthetic")
    text = " ".join(parser.format_help().split())
    for f in dataclasses.fields(SyntheticCorpus):
        assert f"--synthetic.{f.name}" in text
        assert " ".join(f.metadata["help"].split())[:40] in text, f.name


def test_cache_names_of_the_quickstart_corpus_stay_put():
    """``cache_path`` hashes the fields by name and value: the names data/cache already holds stay valid."""
    from train.data import SyntheticCorpus

    quickstart = SyntheticCorpus(num_samples=40000, p_large_first=0.9, seed=0, image_size=64, min_objects=2,
                                 max_objects=4, size_mode="one_large", shard_size=1000, val_num_samples=1000)
    assert quickstart.cache_path("c", "train").name == SyntheticCorpus().cache_path("c", "train").name \
        == "synth-bc8f2e4aab"
    assert quickstart.cache_path("c", "val").name == "synth-527aeded82"
    assert SyntheticCorpus(p_large_first=1, held_out_templates=[]).cache_path("c", "train").name == "synth-de1342986e"
