"""Benchmark the probe suite: total cost, and how it splits into encoder forwards vs probe math.

    python bench/bench_probes.py --threads 2 [--out bench_probes.json]

(a) the whole default suite on a tiny open_clip model (``clip-tiny``, random init) on the
default rendered eval set; (b) cost as n and the vocabulary grow. Each run of ``run_suite`` is
split into time inside ``encode_text`` / ``encode_image`` and the rest (probe arithmetic,
indexing, linear-probe training): the rest should stay a small share as the inputs grow.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.cli import DEFAULT_CACHE, default_eval_set, write_json_atomic  # noqa: E402
from eval.manifest import EvalSet, load_eval_set  # noqa: E402
from eval.suite import SuiteConfig, prepare_suite, run_suite  # noqa: E402


class TimedAdapter:
    """Delegates to an adapter and accumulates seconds spent in each encoder."""

    def __init__(self, inner):
        self.inner = inner
        self.seconds = {"encode_text": 0.0, "encode_image": 0.0}
        self.counts = {"encode_text": 0, "encode_image": 0}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _timed(self, name, x):
        t = time.perf_counter()
        out = getattr(self.inner, name)(x)
        self.seconds[name] += time.perf_counter() - t
        self.counts[name] += int(x.shape[0])
        return out

    def encode_text(self, tokens):
        return self._timed("encode_text", tokens)

    def encode_image(self, images):
        return self._timed("encode_image", images)


def timed_run(adapter, eval_set: EvalSet, config: SuiteConfig, repeats: int = 3) -> dict:
    """Prepare once, run ``repeats`` times; report the fastest run and its split (shared CPUs are noisy)."""
    timed = TimedAdapter(adapter)
    t0 = time.perf_counter()
    prepared = prepare_suite(timed, eval_set, config, progress=False)
    prep = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        timed.seconds = dict.fromkeys(timed.seconds, 0.0)
        timed.counts = dict.fromkeys(timed.counts, 0)
        t0 = time.perf_counter()
        run_suite(timed, prepared)
        runs.append((time.perf_counter() - t0, dict(timed.seconds), dict(timed.counts)))
    total, enc, counts = min(runs, key=lambda r: r[0])
    rest = total - sum(enc.values())
    return {
        "probes": list(config.probes), "n_objects": list(config.n_objects),
        "vocabulary": len(eval_set.vocabulary), "texts": len(prepared.texts),
        "images": 0 if prepared.images is None else int(prepared.images.shape[0]),
        "prepare_s": round(prep, 3), "run_s": round(total, 3), "run_s_all": [round(r[0], 3) for r in runs],
        "encode_text_s": round(enc["encode_text"], 3), "encode_image_s": round(enc["encode_image"], 3),
        "probe_math_s": round(rest, 3), "encoder_share": round(sum(enc.values()) / total, 3),
        "text_rows_encoded": counts["encode_text"], "image_rows_encoded": counts["encode_image"],
    }


def restrict(eval_set: EvalSet, k: int) -> EvalSet:
    """The eval set limited to its first ``k`` vocabulary objects (items naming others dropped)."""
    keep = set(eval_set.vocabulary[:k])
    return EvalSet(eval_set.root, [it for it in eval_set.items if set(it.objects) <= keep])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="clip-tiny", help="open_clip config name (configs/models registered)")
    p.add_argument("--data", type=Path, help="eval set (default: the CLI's cached default set)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--items", type=int, default=256, help="items_per_probe of the default suite")
    p.add_argument("--skip-full", action="store_true", help="skip (a), the whole default suite")
    p.add_argument("--full-repeats", type=int, default=2, help="runs of (a); the fastest is reported")
    p.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from eval.model_access import ClipAdapter

    adapter = ClipAdapter.from_open_clip(args.model, None)
    eval_set = load_eval_set(args.data or default_eval_set(DEFAULT_CACHE, 0, 64))
    results: dict = {"model": args.model, "threads": args.threads, "torch": torch.__version__}
    base = SuiteConfig(n_objects=tuple(eval_set.n_values()), items_per_probe=args.items)
    if not args.skip_full:
        results["full_default_suite"] = full = timed_run(adapter, eval_set, base, repeats=args.full_repeats)
        print("(a) whole default suite:", json.dumps(full))
    # (b) scaling: TOR+TOC+IOR+ITM, one n at a time, then vocabulary subsets at n=3
    small = replace(base, probes=("tor", "toc", "ior", "itm"), items_per_probe=128, linear_items=256,
                    templates=base.templates[:1])
    rows = []
    for n in eval_set.n_values():
        rows.append(timed_run(adapter, eval_set, replace(small, n_objects=(n,))))
    for k in (16, 32, len(eval_set.vocabulary)):
        sub = restrict(eval_set, k)
        if 3 in sub.n_values():
            rows.append(timed_run(adapter, sub, replace(small, n_objects=(3,))))
    results["scaling"] = rows
    print(f"\n(b) scaling (probes {','.join(small.probes)}):")
    print(f"{'n':>3} {'vocab':>6} {'texts':>6} {'images':>6} {'run_s':>7} {'text_s':>7} {'image_s':>7} "
          f"{'probe_s':>7} {'enc%':>6}")
    for r in rows:
        print(f"{r['n_objects'][0]:>3} {r['vocabulary']:>6} {r['texts']:>6} {r['images']:>6} {r['run_s']:>7.2f} "
              f"{r['encode_text_s']:>7.2f} {r['encode_image_s']:>7.2f} {r['probe_math_s']:>7.2f} "
              f"{100 * r['encoder_share']:>5.1f}%")
    if args.out is not None:
        write_json_atomic(args.out, results)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
