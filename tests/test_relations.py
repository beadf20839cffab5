"""Captions whose word order carries meaning (data_prep.relations, the corpus's relation/attribute
shares) and the in-world compositional probes (data_prep.relation_set, eval.compositional)."""
from __future__ import annotations

import json
import random
from collections import Counter

import pytest
import torch

from _table_adapter import TableAdapter
from data_prep import relations as R
from data_prep.corpus_spec import CorpusSpec
from data_prep.relation_set import write_relation_set
from data_prep.synth import make_sample
from eval import compositional as C


def test_relation_of_is_never_ambiguous():
    s = 64
    assert R.relation_of([0, 20, 10, 10], [40, 20, 10, 10], s) == "left"
    assert R.relation_of([40, 20, 10, 10], [0, 20, 10, 10], s) == "right"
    assert R.relation_of([20, 0, 10, 10], [20, 40, 10, 10], s) == "above"
    assert R.relation_of([20, 40, 10, 10], [20, 0, 10, 10], s) == "below"
    assert R.relation_of([0, 0, 10, 10], [30, 30, 10, 10], s) is None       # diagonal: no relation
    assert R.relation_of([0, 0, 10, 10], [4, 40, 10, 10], s) == "above"      # clearly vertical
    assert R.relation_of([0, 0, 10, 10], [3, 0, 10, 10], s) is None         # too close
    assert R.size_words(100, 40) == ("large", "small") and R.size_words(40, 100) == ("small", "large")
    assert R.size_words(100, 60) is None


def test_captions_and_rebuild():
    assert R.relation_caption("cat", "dog", "left") == "a photo of a cat to the left of a dog"
    assert R.relation_caption("apple", "dog", "below", "bare") == "apple below dog"
    assert R.attribute_caption("cat", "apple", ("small", "large")) == "a photo of a small cat and a large apple"
    meta = {"template": "there_is", "caption_kind": "relation", "relation": "above"}
    assert R.rebuild_caption(meta, ["dog", "cat"]) == "there is a dog above a cat"
    assert R.rebuild_caption({"template": "photo"}, ["dog", "cat", "car"]) == "a photo of a dog, a cat and a car"


def test_corpus_shares_and_truth():
    spec = CorpusSpec(num_samples=400, relation_share=0.5, attribute_share=0.3)
    kinds = Counter()
    for i in range(400):
        _, _, caption, meta = make_sample(i, spec, str(i))
        kind = meta.get("caption_kind", "list")
        kinds[kind] += 1
        named = sorted((o for o in meta["objects"] if o["mention_index"] is not None), key=lambda o: o["mention_index"])
        if kind == "relation":
            assert len(named) == 2 and R.relation_of(named[0]["bbox"], named[1]["bbox"], 64) == meta["relation"]
            assert caption == R.relation_caption(named[0]["name"], named[1]["name"], meta["relation"], meta["template"])
        elif kind == "attribute":
            assert tuple(meta["size_words"]) == R.size_words(named[0]["area"], named[1]["area"])
        assert meta["template"] not in ("and_chain", "there_is")  # held-out phrasings stay out of training
    # a pair without a clear relation (or sizes) falls back to the list caption: shares are upper bounds
    assert 0.25 * 400 < kinds["relation"] <= 0.5 * 400 + 30 and 0.1 * 400 < kinds["attribute"] <= 0.3 * 400 + 30
    # shares at 0 leave the corpus byte-identical (no extra random draw)
    base, zero = CorpusSpec(num_samples=5), CorpusSpec(num_samples=5, relation_share=0.0)
    assert [make_sample(i, base, "k") for i in range(5)] == [make_sample(i, zero, "k") for i in range(5)]
    assert CorpusSpec(num_samples=5, relation_share=0.7, attribute_share=0.5).problems() == [
        "--relation-share + --attribute-share must be <= 1, got 0.7 + 0.5"]


def test_caption_shuffle_moves_objects_not_the_relation_word():
    from train.mitigations import CaptionShuffle

    spec = CorpusSpec(num_samples=50, relation_share=1.0)
    meta = next(m for i in range(50) if (m := make_sample(i, spec, str(i))[3]).get("caption_kind") == "relation")
    shuffle = CaptionShuffle(p=1.0)
    seen = set()
    for seed in range(20):
        _, caption, new = shuffle.apply(None, meta["caption"], meta, random.Random(seed))
        assert R.RELATION_WORDS[meta["relation"]] in caption
        seen.add(caption)
    assert len(seen) == 2  # the true caption and the swapped (false) one


@pytest.fixture(scope="module")
def relation_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("relset")
    write_relation_set(root, overwrite=True, progress=False)
    return root


def test_relation_set_is_counterbalanced(relation_set):
    items = C.read_set(relation_set)
    assert len(items) == 4 * 62
    assert Counter(it["relation"] for it in items) == {"left": 62, "right": 62, "above": 62, "below": 62}
    assert Counter(it["large"] for it in items) == {0: 124, 1: 124}
    for role in (0, 1):
        assert set(Counter(it["objects"][role] for it in items).values()) == {4}  # every object A 4x, B 4x
    assert Counter((it["relation"], it["large"]) for it in items) == {(r, k): 31 for r in R.RELATION_WORDS for k in (0, 1)}


def _word_vector(word: str, position: int = -1) -> torch.Tensor:
    seed = (sum(ord(c) * 31 ** k for k, c in enumerate(word)) * 101 + position) % (2 ** 62)
    return torch.randn(256, generator=torch.Generator().manual_seed(seed))


def _text_model(ordered: bool, words: dict[str, str] | None = None):
    """A bag of words (a sum of word vectors), or a sum of (word, position) vectors; ``words`` maps
    some words to others first (a model that cannot tell them apart)."""
    words = words or {}

    def fn(text: str) -> torch.Tensor:
        return sum(_word_vector(words.get(w, w), i if ordered else -1) for i, w in enumerate(text.split()))
    return fn


def _adapter(relation_set, ordered: bool, words: dict[str, str] | None = None) -> TableAdapter:
    """Images embed as their true captions (all the positive forms summed); text as a bag of words
    or with word positions."""
    from _table_adapter import key_of_file, pixels_key

    text = _text_model(ordered, words)
    truth = {}
    for it in C.read_set(relation_set):
        pos = [p for p, _ in C.caption_pairs(it).values()]
        truth[key_of_file(it["path"])] = sum(torch.nn.functional.normalize(text(p), dim=0) for p in set(pos))
    return TableAdapter(lambda im: truth[pixels_key(im)], text)


def test_bag_of_words_is_exactly_chance_on_the_swaps(relation_set):
    adapter = _adapter(relation_set, ordered=False)
    res = C.run(adapter, C.prepare(adapter, relation_set))
    assert res["swap_obj"]["accuracy"] == 0.5 and res["swap_att"]["accuracy"] == 0.5
    assert res["swap_obj"]["ties"] == res["swap_obj"]["n_items"] == 248
    assert res["replace_rel"]["ties"] == 0  # a changed word is visible to a bag of words
    assert res["replace_axis"]["accuracy"] == 1.0
    assert res["summary"]["swap_obj"]["denominator"] == "N=248"


def test_a_model_that_knows_only_the_axis_passes_the_control_alone(relation_set):
    """left/right one word, above/below another: the side-by-side vs stacked distinction, no direction."""
    adapter = _adapter(relation_set, ordered=True, words={"left": "sideways", "right": "sideways",
                                                          "above": "stacked", "below": "stacked"})
    res = C.run(adapter, C.prepare(adapter, relation_set))
    assert res["replace_axis"]["accuracy"] == 1.0 and res["replace_axis"]["ties"] == 0
    assert res["replace_rel"]["accuracy"] == 0.5 and res["replace_rel"]["ties"] == 248  # direction unknown
    assert res["swap_att"]["accuracy"] == 1.0  # size words and order still known: the control isolates the relation


def test_an_order_aware_model_answers_and_a_shuffled_image_does_not(relation_set):
    adapter = _adapter(relation_set, ordered=True)
    prepared = C.prepare(adapter, relation_set)
    res = C.run(adapter, prepared)
    assert all(res[p]["accuracy"] == 1.0 for p in C.PROBES)
    prepared["images"] = prepared["images"][torch.randperm(len(prepared["images"]), generator=torch.Generator().manual_seed(0))]
    res = C.run(adapter, prepared)
    for p in ("swap_obj", "swap_att"):
        lo, hi = res["summary"][p]["ci"]
        assert lo < 0.5 < hi  # a wrong image: chance within the interval


def test_compositional_cli_and_callback_arguments(tmp_path, relation_set):
    from eval.callback import BiasEvalCallback
    from eval.cli import main

    with pytest.raises(SystemExit, match="no manifest.jsonl"):
        main(["compositional", "--data", str(tmp_path), "--model", "nope", "--out", str(tmp_path / "o.json")])
    with pytest.raises(ValueError, match="compositional must be true or false"):
        BiasEvalCallback(compositional="yes")
    out = tmp_path / "c.json"
    assert main(["compositional", "--data", str(relation_set), "--model", "clip-micro", "--out", str(out),
                 "--no-progress"]) == 0
    res = json.loads(out.read_text())["results"]["compositional"]
    assert {p: res[p]["n_items"] for p in C.PROBES} == {"swap_obj": 248, "replace_rel": 248, "swap_att": 248,
                                                        "replace_axis": 248}
