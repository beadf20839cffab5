"""caption-stats: mention coverage of a shard set and what CaptionShuffle will do with it."""
import io
import json
import math
import random

import pytest
from PIL import Image

from data_prep.caption_stats import caption_stats, format_stats, shard_caption_stats
from data_prep.cli import main as cli_main
from data_prep.shards import write_tar_atomic
from train.mitigations import CaptionShuffle

CAPTIONS = [
    "A beautiful sunset over the ocean",                       # 0
    "Abstract watercolor background",                          # 0
    "a photo of a dog",                                        # 1
    "Vintage 1950s chrome toaster for sale",                   # 1
    "people waiting at a bus stop",                            # 1
    "Woman holding a cup of coffee while reading a book",      # 3
    "Vintage red truck with a surfboard on the roof",          # 2
    "A man riding a horse next to a dog",                      # 3
    "A zebra and a giraffe standing in the grass.",            # 2
    "Two horses and a dog running in a meadow",                # 2
]
EXPECTED = {"0": 2, "1": 3, "2": 3, "3+": 2}


def write_shards(root, captions, per_shard=4):
    root.mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG")
    for s in range(0, len(captions), per_shard):
        samples = [(f"{s // per_shard:05d}{i:01d}", buf.getvalue(), c, {"caption": c, "status": "success"})
                   for i, c in enumerate(captions[s:s + per_shard])]
        write_tar_atomic(root / f"{s // per_shard:05d}.tar", samples)
    return root


def test_bins_and_shuffle_coverage(tmp_path):
    stats = shard_caption_stats([write_shards(tmp_path / "s", CAPTIONS)], progress=False)
    assert stats["n_captions"] == 10
    assert {b: v["count"] for b, v in stats["mentions"].items()} == EXPECTED
    assert stats["mentions"]["2"]["share"] == pytest.approx(0.3)
    cs = stats["caption_shuffle"]
    assert cs["shuffled"] == {"count": 5, "of": 10, "share": 0.5}
    assert cs["unchanged_fewer_than_2"]["count"] == 5
    assert cs["expected_changed_per_epoch"]["count"] == pytest.approx(3 * 0.5 + 2 * 5 / 6, abs=0.01)
    assert cs["expected_first_object_moved_per_epoch"]["count"] == pytest.approx(3 * 0.5 + 2 * 2 / 3, abs=0.01)
    text = format_stats(stats)
    assert "3+" in text and "5 / 10" in text


def test_stats_agree_with_the_transform():
    t = CaptionShuffle(p=1.0, vocabulary="default")  # caption_stats' default vocabulary
    rng = random.Random(0)
    epochs = 300
    for _ in range(epochs):
        for c in CAPTIONS:
            t(None, c, {"caption": c}, rng)
    stats = caption_stats({"caption": c} for c in CAPTIONS)
    assert t.counts["no_mention"] == EXPECTED["0"] * epochs
    assert t.counts["one_mention"] == EXPECTED["1"] * epochs
    expected = stats["caption_shuffle"]["expected_changed_per_epoch"]["count"] * epochs
    sd = math.sqrt(epochs * (3 * 0.25 + 2 * (5 / 6) * (1 / 6)))
    assert abs(t.counts["changed"] - expected) < 4 * sd


def test_rendered_samples_use_ground_truth(tmp_path):
    from data_prep.synth import write_corpus

    write_corpus(tmp_path / "r", num_samples=20, seed=1, min_objects=2, max_objects=3, progress=False)
    stats = shard_caption_stats([tmp_path / "r"], progress=False)
    assert stats["n_captions"] == 20
    assert stats["mentions"]["0"]["count"] == stats["mentions"]["1"]["count"] == 0


def test_cli(tmp_path, capsys):
    shards = write_shards(tmp_path / "s", CAPTIONS)
    cli_main(["caption-stats", str(shards), "--json", str(tmp_path / "stats.json")])
    out = capsys.readouterr().out
    assert "captions: 10" in out and "shuffled (>= 2 objects)" in out
    assert json.loads((tmp_path / "stats.json").read_text())["mentions"]["3+"]["count"] == 2
    with pytest.raises(SystemExit):
        cli_main(["caption-stats", str(tmp_path / "nope")])
    with pytest.raises(SystemExit):
        cli_main(["caption-stats", str(shards), "--vocabulary", str(tmp_path / "missing.tsv")])
