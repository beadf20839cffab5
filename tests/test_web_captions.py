"""Object mentions on real web captions (issue 21): the open vocabulary against a hand-labelled gold
set of Conceptual Captions and Flickr captions (tests/data/web_captions/, rules and credits
beside it), caption shuffling and the order-invariant twin on them, and captions a mention search
cannot read left as they are and counted."""
from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from data_prep.cli import main as data_prep_main
from data_prep.mention_gold import evaluate, read_gold
from data_prep.mentions import MAX_CAPTION_CHARS, caption_problem, find_mentions, open_vocabulary
from train.aux_losses.order_invariant import OrderInvariantText
from train.mitigations import CaptionShuffle

GOLD = Path(__file__).parent / "data" / "web_captions" / "gold.tsv"
TARGET = 0.90


@pytest.fixture(scope="module")
def gold():
    return read_gold(GOLD)


def words(text: str) -> Counter:
    return Counter(w.lower() for w in re.findall(r"[\w'’-]+", text))


def test_the_gold_set_is_real_web_text_of_several_corpora(gold):
    sources = Counter(g.source for g in gold)
    assert len(gold) >= 200 and sum(n for s, n in sources.items() if not s.startswith("cc3m")) >= 30, sources
    assert sum(len(g.spans) >= 2 for g in gold) >= 60


@pytest.mark.parametrize("key", ["recall", "precision", "first_object"])
def test_the_open_vocabulary_finds_what_the_gold_labels(gold, key):
    result = evaluate(gold, open_vocabulary())
    assert result[key]["share"] >= TARGET, result


def test_a_shuffle_moves_the_first_named_object_of_web_captions_and_keeps_every_word(gold):
    shuffle = CaptionShuffle(p=1.0)
    several = [g for g in gold if len(g.spans) >= 2]
    moved = 0
    for k, g in enumerate(several):
        first = g.spans[0][2]
        found_first = find_mentions(g.caption, shuffle._vocab)
        hit = False
        for draw in range(20):
            _, new, _ = shuffle(None, g.caption, {"caption": g.caption}, random.Random(1000 * k + draw))
            assert words(new) == words(g.caption), (g.caption, new)
            if new != g.caption and found_first and not new.lower().startswith(
                    g.caption[:found_first[0].end].lower()) and first:
                hit = True
        moved += hit
    assert moved / len(several) >= TARGET, f"{moved} / {len(several)}"


def test_the_order_invariant_twin_is_the_caption_shuffles_permutation(gold):
    loss, shuffle = OrderInvariantText(), CaptionShuffle(p=1.0)
    for k, g in enumerate(g for g in gold if len(g.spans) >= 2):
        twin = loss.twin(g.caption, {"caption": g.caption}, random.Random(k))
        rng = random.Random(k)
        for _ in range(loss.max_tries):  # the twin is the first draw that differs from the caption
            _, new, _ = shuffle(None, g.caption, {"caption": g.caption}, rng)
            if new != g.caption:
                break
        assert twin == (new if new != g.caption else None)


def test_determiners_travel_with_their_phrase():
    shuffle = CaptionShuffle(p=1.0)
    outs = {shuffle(None, "an apple and a dog", {}, random.Random(s))[1] for s in range(20)}
    assert outs == {"an apple and a dog", "a dog and an apple"}


@pytest.mark.parametrize("caption, reason", [
    ("", "empty"),
    ("a dog and a cat " * (MAX_CAPTION_CHARS // 16 + 1), "too_long"),
    ("a dog and a cat " * 625, "too_long"),  # 10,000 characters
    ("<p>a dog and a <b>cat</b></p>", "html"),
    ("a dog &amp; a cat", "html"),
    ("🐶🐱 🐕‍🦺 !!!", "no_letters"),
    ("ソファの上の猫と犬", "not_latin"),
    ("Собака и кошка на диване", "not_latin"),
    ("A DOG AND A CAT ON THE SOFA", "all_caps"),
])
def test_captions_a_search_cannot_read_are_left_unchanged_and_counted(caption, reason):
    assert caption_problem(caption) == reason
    shuffle = CaptionShuffle(p=1.0)
    out = shuffle(None, caption, {"caption": caption}, random.Random(0))
    assert out[1] == caption and shuffle.counts[reason] == 1


def test_boxes_keep_their_mention_index_when_the_open_vocabulary_moves_a_man(tmp_path):
    """COCO objects carry COCO names ("person" for "a man"); the open vocabulary calls it "man"."""
    meta = {"caption": "a man and a dog", "objects": [
        {"name": "person", "bbox": [0, 0, 5, 5], "area": 25, "mention_index": 0},
        {"name": "dog", "bbox": [5, 5, 5, 5], "area": 25, "mention_index": 1},
        {"name": "car", "bbox": [1, 1, 1, 1], "area": 1, "mention_index": None}]}
    shuffle = CaptionShuffle(p=1.0)
    for s in range(20):
        _, new, out = shuffle(None, meta["caption"], meta, random.Random(s))
        index = {o["name"]: o["mention_index"] for o in out["objects"]}
        if new == "a dog and a man":
            assert index == {"person": 1, "dog": 0, "car": None}
            break
    else:
        pytest.fail("no draw moved the man")


def test_caption_stats_on_a_caption_file_shows_the_open_view_beside_the_vocabulary(tmp_path, capsys):
    out = tmp_path / "stats.json"
    data_prep_main(["caption-stats", "--captions", str(GOLD), "--json", str(out)])
    text = capsys.readouterr().out
    assert "== vocabulary: default" in text and "== vocabulary: open" in text
    stats = json.loads(out.read_text())
    assert stats["vocabulary"] == "default" and set(stats["views"]) == {"default", "open"}
    shuffled = {v: s["caption_shuffle"]["shuffled"]["count"] for v, s in stats["views"].items()}
    assert shuffled["open"] > shuffled["default"]  # web captions: the open vocabulary sees more
    assert stats["n_captions"] == len(read_gold(GOLD))  # the header names the caption column


def test_mention_eval_prints_each_vocabulary_with_its_denominators(capsys):
    data_prep_main(["mention-eval", str(GOLD), "--vocabulary", "open", "default"])
    text = capsys.readouterr().out
    assert "vocabulary open:" in text and "vocabulary default:" in text
    assert re.search(r"mention recall\s+\d\.\d{3}\s+\(\d+ / \d+\)", text)


def test_mention_eval_refuses_a_file_that_is_not_a_gold_set(tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n1\t2\n")
    with pytest.raises(SystemExit):
        data_prep_main(["mention-eval", str(bad)])
    assert "no source, id, caption, mentions column" in capsys.readouterr().err
    bad.write_text("source\tid\tcaption\tmentions\nx\t1\ta dog\ta cat => cat\n")
    with pytest.raises(SystemExit):
        data_prep_main(["mention-eval", str(bad)])
    assert "mention 'a cat' is not in the caption" in capsys.readouterr().err
