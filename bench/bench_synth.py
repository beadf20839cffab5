"""Throughput of the rendered corpus writer at 64 px, in images/s per core.

    python bench/bench_synth.py [--num-samples 5000] [--image-size 64]

Runs ``write_corpus`` with one worker (one core) into a temp dir and prints images/s by wall
clock and by this process's CPU time (the latter is what one core achieves on a busy machine).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.synth import write_corpus  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-samples", type=int, default=5000, help="images to render")
    ap.add_argument("--image-size", type=int, default=64, help="image side in pixels")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        write_corpus(Path(d) / "warm", 200, seed=1, image_size=args.image_size, progress=False)  # fill caches
        w0, c0 = time.perf_counter(), time.process_time()
        write_corpus(Path(d) / "run", args.num_samples, seed=0, image_size=args.image_size, progress=False)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    print(f"{args.num_samples} images at {args.image_size}px: "
          f"{args.num_samples / wall:.0f} images/s wall, {args.num_samples / cpu:.0f} images/s per core (CPU time)")


if __name__ == "__main__":
    main()
