"""Benchmark mention finding on real web captions: captions/s on one core, and its share of a
training sample's data time.

    python bench/bench_mentions.py [--captions FILE] [--repeat 20] [--out bench_mentions.json]

Captions: the gold set's real web captions (tests/data/web_captions/gold.tsv) or ``--captions``
(one per line or a TSV, as ``data_prep caption-stats --captions`` reads them). For each vocabulary
(open, default) it times ``find_mentions`` and a whole ``CaptionShuffle`` over every caption,
``--repeat`` times, on one thread, and prints captions/s (median of the repeats). The data time
of one sample, the peer it is compared with, is what a LAION data worker does besides: decode a
256 x 256 JPEG, open_clip's ViT-B-32 preprocessing (resize, crop, normalise at 224) and tokenising
the caption. Target (issue 21): >= 5,000 captions/s per core, so a worker never waits on it.
"""
from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.caption_stats import read_caption_file  # noqa: E402
from data_prep.fileio import write_json_atomic  # noqa: E402
from data_prep.mentions import find_mentions, load_vocabulary  # noqa: E402

GOLD = Path(__file__).resolve().parents[1] / "tests" / "data" / "web_captions" / "gold.tsv"


def per_second(fn, items: list, repeat: int) -> float:
    """Items per second of ``fn`` over ``items``, median of ``repeat`` passes (after one warm-up)."""
    for item in items[:50]:
        fn(item)
    rates = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        rates.append(len(items) / (time.perf_counter() - t0))
    return statistics.median(rates)


def sample_data_seconds(captions: list[str], repeat: int) -> float:
    """Seconds per sample of decode + ViT-B-32 preprocessing + tokenising (no model is built)."""
    import open_clip
    from PIL import Image

    from eval.models import register_model_configs

    register_model_configs()
    preprocess = open_clip.image_transform(224, is_train=True)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    rng = random.Random(0)
    buf = io.BytesIO()
    Image.frombytes("RGB", (256, 256), bytes(rng.getrandbits(8) for _ in range(256 * 256 * 3))).save(buf, "JPEG")
    jpeg = buf.getvalue()

    def one(caption: str) -> None:
        preprocess(Image.open(io.BytesIO(jpeg)).convert("RGB"))
        tokenizer([caption])

    return 1.0 / per_second(one, captions[:200], max(1, repeat // 4))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--captions", type=Path, default=GOLD, help="caption file (default: the web gold set)")
    parser.add_argument("--repeat", type=int, default=20, help="timed passes over the captions")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    captions = [m["caption"] for m in read_caption_file(args.captions)]
    from train.mitigations import CaptionShuffle

    data_s = sample_data_seconds(captions, args.repeat)
    result = {"captions": len(captions), "source": str(args.captions), "sample_data_ms": 1e3 * data_s, "vocabularies": {}}
    print(f"{len(captions)} captions from {args.captions}; one core")
    print(f"data time of one sample (decode 256px JPEG + ViT-B-32 preprocess + tokenise): {1e3 * data_s:.2f} ms")
    for name in ("open", "default"):
        vocab = load_vocabulary(name)
        shuffle = CaptionShuffle(p=1.0, vocabulary=name)
        rng = random.Random(0)
        find = per_second(lambda c: find_mentions(c, vocab), captions, args.repeat)
        shuf = per_second(lambda c: shuffle(None, c, {"caption": c}, rng), captions, args.repeat)
        share = (1.0 / shuf) / data_s
        result["vocabularies"][name] = {"find_mentions_per_s": find, "caption_shuffle_per_s": shuf,
                                        "share_of_sample_data_time": share}
        print(f"  {name:<8} find_mentions {find:8.0f} captions/s   CaptionShuffle {shuf:8.0f} captions/s   "
              f"= {100 * share:.1f} % of a sample's data time")
    if args.out:
        write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
