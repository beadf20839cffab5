"""experiments/relation_diagnostics.py on a hand-built model with a known answer: an image embeds as
its largest object, a caption as its first-named object (the order bias, and no relation at all)."""
from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from _scripts import load_script
from _table_adapter import TableAdapter, pixels_key
from data_prep.read_shards import iter_samples
from data_prep.synth import write_corpus
from data_prep.vocab import list_objects


def _vector(name: str) -> torch.Tensor:
    return torch.randn(64, generator=torch.Generator().manual_seed(list_objects().index(name)))


@pytest.fixture(scope="module")
def diag():
    return load_script("experiments/relation_diagnostics.py")


@pytest.fixture(scope="module")
def shortcut_model(tmp_path_factory):
    """(adapter, corpus dir): images -> their largest object's vector; captions -> their first-named object's."""
    corpus = tmp_path_factory.mktemp("relcorpus")
    write_corpus(corpus, 160, relation_share=1.0, p_large_first=0.5, max_objects=2, progress=False)
    largest = {}
    for meta, img in iter_samples([corpus], need_image=True):
        with Image.open(io.BytesIO(img)) as im:
            largest[pixels_key(im)] = max(meta["objects"], key=lambda o: o["area"])["name"]
    names = set(list_objects())
    adapter = TableAdapter(lambda im: _vector(largest[pixels_key(im)]),
                           lambda text: _vector(next(w for w in text.split() if w in names)))
    return adapter, corpus


def test_the_largest_first_shortcut_answers_swap_obj_and_no_relation(diag, shortcut_model):
    adapter, corpus = shortcut_model
    res = diag.training_distribution(adapter, [str(corpus)], max_items=1000)
    assert res["swap_obj, large named first"]["value"] == 1.0
    assert res["swap_obj, small named first"]["value"] == 0.0
    assert res["replace_rel"]["value"] == 0.5  # the flipped caption embeds the same: every item ties
    assert res["replace_axis"]["value"] == 0.5  # so does the one on the other axis
    n = sum(int(res[k]["denominator"].split("=")[1]) for k in ("swap_obj, large named first", "swap_obj, small named first"))
    assert res["swap_obj"]["denominator"] == f"N={n}" and n > 60


def test_text_cosines_and_a_bad_input(diag, shortcut_model, tmp_path):
    from data_prep.relation_set import write_relation_set
    from eval import compositional

    adapter, corpus = shortcut_model
    write_relation_set(tmp_path / "set", progress=False)
    cos = diag.text_cosines(adapter, compositional.read_set(tmp_path / "set"))
    assert cos["replace_rel"]["mean_cosine"] == pytest.approx(1.0) and cos["replace_rel"]["n_items"] == 248
    assert cos["replace_axis"]["mean_cosine"] == pytest.approx(1.0)
    assert cos["swap_obj"]["mean_cosine"] < 0.5  # the first-named object changes
    list_only = tmp_path / "lists"
    write_corpus(list_only, 20, progress=False)
    with pytest.raises(SystemExit, match="no relation captions"):
        diag.training_distribution(adapter, [str(list_only)], max_items=1000)


def test_bad_paths_are_refused_before_any_work(diag, tmp_path, capsys):
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"")  # never opened: the shard check comes first
    for argv, message in ((["--checkpoint", str(tmp_path / "none.ckpt"), "--shards", str(tmp_path)], "no such file"),
                          (["--checkpoint", str(ckpt), "--shards", str(tmp_path / "none")], "no such file or folder"),
                          (["--checkpoint", str(ckpt), "--shards", str(tmp_path), "--relation-set", str(tmp_path)],
                           "no manifest.jsonl"),
                          (["--checkpoint", str(ckpt), "--shards", str(tmp_path), "--max-items", "3"], "at least")):
        with pytest.raises(SystemExit):
            diag.main(argv)
        assert message in capsys.readouterr().err


def test_the_default_relation_set_takes_the_corpus_vocabulary(diag, shortcut_model, tmp_path):
    _, corpus = shortcut_model
    assert diag.corpus_objects([str(corpus)]) is None and diag.corpus_objects([str(corpus / "00000.tar")]) is None
    write_corpus(tmp_path / "small", 10, objects=["dog", "bus"], max_objects=2, progress=False)
    assert diag.corpus_objects([str(tmp_path / "small" / "00000.tar")]) == ["bus", "dog"]
