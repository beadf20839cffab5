"""The word-order probe (eval.word_order): perturbations, exact chance for a bag of words, a known answer."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from _table_adapter import TableAdapter
from eval import word_order as W
from eval.benchmarks import _run_word_order

CAPTIONS = Path(__file__).parent / "data" / "coco_mini" / "captions_val2017.json"
REAL = [c["caption"] for c in json.loads(CAPTIONS.read_text())["annotations"]]


def test_perturbations_permute_words_and_differ():
    for caption in REAL:
        true, perts = W.perturbations(caption)
        for kind, text in perts.items():
            if text is None:
                continue
            assert text != true and Counter(text.split()) == Counter(true.split()), (kind, caption)
            assert text == text.lower()


def test_nouns_adjectives_moves_only_nouns_and_adjectives():
    true, perts = W.perturbations("A large brown dog chasing a small cat on the green grass.")
    moved = [(a, b) for a, b in zip(true.split(), perts["nouns_adjectives"].split()) if a != b]
    content = {"large", "brown", "dog", "small", "cat", "green", "grass"}
    assert moved and all(a in content and b in content for a, b in moved)
    kept = [(a, b) for a, b in zip(true.split(), perts["allbut_nouns_adjectives"].split()) if a in content]
    assert all(a == b for a, b in kept)
    # trigrams move as blocks
    tri = perts["trigrams"].split()
    words = true.split()[:-1]
    blocks = [words[i:i + 3] for i in range(0, len(words), 3)]
    assert sorted(map(tuple, (tri[:-1][i:i + 3] for i in range(0, 12, 3)))) == sorted(map(tuple, blocks))


def test_seeded_and_skips_what_cannot_be_perturbed():
    assert W.perturbations(REAL[0], seed=3) == W.perturbations(REAL[0], seed=3)
    items = W.build_items([(0, "dog and pizza"), (1, REAL[0])])
    assert items.image_keys == [1] and items.skipped == {"no allbut_nouns_adjectives perturbation differs": 1}
    with pytest.raises(ValueError, match="unknown"):
        W.build_items([(0, REAL[0])], kinds=("reverse",))


def _words_vector(text: str, ordered: bool) -> torch.Tensor:
    """Bag of words (a sum of word vectors), or the same plus the position of each word."""
    v = torch.zeros(64)
    for i, w in enumerate(text.split()):
        g = torch.Generator().manual_seed(sum(map(ord, w)) * 131 + len(w))
        v += torch.randn(64, generator=g) * ((1 + 0.5 * i) if ordered else 1.0)
    return v


def test_bag_of_words_scores_exactly_chance_and_an_order_model_wins():
    items = W.build_items([(i, c) for i, c in enumerate(REAL)])
    n, k = len(items.image_keys), len(items.kinds)
    for ordered, expect in ((False, None), (True, 1.0)):
        text = torch.nn.functional.normalize(torch.stack([_words_vector(t, ordered) for t in items.texts]), dim=-1)
        true = text[torch.tensor(items.true_rows)]
        pert = text[torch.tensor(items.perturbed_rows)]
        image = true  # the image "is" its caption: only word order can tell the texts apart
        res = W.score(image, true, pert, items.kinds, min_items=1)
        if ordered:
            assert res["precision_at_1"] == expect and all(v == 1.0 for v in res["pairwise"].values())
        else:  # every perturbation ties: exactly 1/(k+1) and 1/2
            assert res["precision_at_1"] == pytest.approx(1 / (k + 1), abs=1e-12)
            assert all(v == 0.5 for v in res["pairwise"].values()) and res["ties"] == n * k
    assert res["summary"]["precision_at_1"]["denominator"] == f"N={n}"


def test_shuffled_image_control_is_near_chance():
    items = W.build_items([(i, c) for i, c in enumerate(REAL)])
    text = torch.nn.functional.normalize(torch.stack([_words_vector(t, True) for t in items.texts]), dim=-1)
    true = text[torch.tensor(items.true_rows)]
    pert = text[torch.tensor(items.perturbed_rows)]
    shuffled = true[torch.randperm(len(true), generator=torch.Generator().manual_seed(0))]
    res = W.score(shuffled, true, pert, items.kinds, min_items=1)
    assert res["precision_at_1"] < 0.5  # a wrong image no longer singles out its caption


def test_end_to_end_on_real_photos_with_a_table_model():
    """Images of the slice embed as their first caption's ordered words: the true caption wins."""
    from eval.zeroshot import load_images

    caps = json.loads(CAPTIONS.read_text())
    files = {im["id"]: im["file_name"] for im in caps["images"]}
    first = {}
    for c in caps["annotations"]:
        first.setdefault(c["image_id"], c["caption"])
    pairs = [(CAPTIONS.parent / "val2017" / files[i], first[i]) for i in sorted(first)]
    by_size = {}
    for path, caption in pairs:
        from PIL import Image

        with Image.open(path) as im:
            by_size[im.convert("RGB").tobytes()[:4096]] = W.perturbations(caption)[0]
    adapter = TableAdapter(lambda im: _words_vector(by_size[im.tobytes()[:4096]], True),
                           lambda s: _words_vector(s, True))
    items = W.build_items(pairs)
    tensor, kept, bad = load_images(adapter, items.image_keys)
    part = {"items": items, "images": tensor, "kept": kept, "skipped": {}, "tokens": adapter.tokenizer(items.texts)}
    res = _run_word_order(adapter, part, min_items=1)
    assert bad == 0 and res["n_items"] == len(items.image_keys) >= 10 and res["precision_at_1"] == 1.0
