"""Benchmark the probe suite: total cost, and how it splits into encoder forwards vs probe math.

    python bench/bench_probes.py --threads 2 [--out bench_probes.json]
    python bench/bench_probes.py --compare --threads 2   # text trimming off vs on
    python bench/bench_probes.py --compare-fused --items 806 --blocks 4 --threads 2   # fused attention off vs on
    python bench/bench_probes.py --compare-prefixes --items 806 --blocks 4 --threads 2   # text per row vs per prefix
    python bench/bench_probes.py --compare-images --items 806 --blocks 4 --threads 2   # open_clip's encode_image vs fast


(a) the whole default suite on a tiny open_clip model (``clip-tiny``, random init) on the
default rendered eval set; (b) cost as n and the vocabulary grow. Each run of ``run_suite`` is
split into time inside ``encode_text`` / ``encode_image`` and the rest (probe arithmetic,
indexing, linear-probe training): the rest should stay a small share as the inputs grow.

``--compare`` instead runs the whole default suite with length-trimmed text encoding off and on
(``ClipAdapter.trim_text``, :mod:`eval.text_encoding`), alternating in one process on the same
prepared inputs, prints both times and their ratio, and exits 1 unless every probe result and
every caption embedding agrees to 1e-5.

``--compare-fused`` times the text encoding of the suite's captions (the quickstart callback's
sizes with ``--items 806 --blocks 4``) with open_clip's float causal mask and with the boolean mask
that lets ``nn.MultiheadAttention`` take torch's fused inference path (:mod:`eval.text_encoding`),
alternating, and exits 1 unless the embeddings agree to 1e-5.

``--compare-prefixes`` runs the callback's probes (same sizes) with the text tower run per caption
row (length-trimmed batches) and per distinct caption prefix (:mod:`eval.prefix_sharing`, the
default), alternating, and exits 1 unless every result and embedding agrees to 1e-5.

``--compare-images`` likewise with open_clip's ``encode_image`` and the fused, class-token path
(:mod:`eval.image_encoding`, the default).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep.fileio import write_json_atomic  # noqa: E402
from eval.eval_sets import default_eval_set  # noqa: E402
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


def result_diffs(a, b, tol: float = 1e-5, path: str = "") -> list[str]:
    """Where two ``run_suite`` results differ: floats by more than ``tol``, anything else at all."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"]
        return [d for k in a for d in result_diffs(a[k], b[k], tol, f"{path}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in result_diffs(x, y, tol, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        same = math.isclose(a, b, rel_tol=0, abs_tol=tol) or (math.isnan(a) and math.isnan(b))
        return [] if same else [f"{path}: {a} vs {b}"]
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


def _alternate(adapter, timed, prepared, switch: str, repeats: int,
               encoder: str = "encode_text") -> tuple[dict, dict, dict]:
    """The suite with ``adapter.<switch>`` off and on, alternating: per setting the runs' (total,
    ``encoder``) seconds, the last results and the embeddings of the prepared captions
    (``encode_text``) or images (``encode_image``)."""
    runs: dict[bool, list] = {False: [], True: []}
    results, embeddings = {}, {}
    for _ in range(repeats):
        for on in (False, True):
            setattr(adapter, switch, on)
            timed.seconds = dict.fromkeys(timed.seconds, 0.0)
            t0 = time.perf_counter()
            results[on] = run_suite(timed, prepared)
            runs[on].append((time.perf_counter() - t0, timed.seconds[encoder]))
    inputs = prepared.tokens if encoder == "encode_text" else prepared.images
    for on in (False, True):
        setattr(adapter, switch, on)
        with torch.no_grad():
            embeddings[on] = getattr(adapter, encoder)(inputs)
    return runs, results, embeddings


def compare_trimming(adapter, eval_set: EvalSet, config: SuiteConfig, repeats: int = 1) -> dict:
    """The suite with ``adapter.trim_text`` off and on, alternating; fastest run of each, and equality."""
    timed = TimedAdapter(adapter)
    prepared = prepare_suite(timed, eval_set, config, progress=False)
    runs, results, embeddings = _alternate(adapter, timed, prepared, "trim_text", repeats)
    best = {trim: min(r, key=lambda x: x[0]) for trim, r in runs.items()}
    diffs = result_diffs(results[False], results[True])
    return {
        "texts": len(prepared.texts), "context_length": int(prepared.tokens.shape[1]),
        "max_caption_tokens": int(prepared.tokens.argmax(-1).max()) + 1,
        "untrimmed_s": round(best[False][0], 3), "trimmed_s": round(best[True][0], 3),
        "untrimmed_encode_text_s": round(best[False][1], 3), "trimmed_encode_text_s": round(best[True][1], 3),
        "speedup": round(best[False][0] / best[True][0], 2),
        "encode_text_speedup": round(best[False][1] / max(best[True][1], 1e-9), 2),
        "runs_s": {"untrimmed": [round(r[0], 3) for r in runs[False]],
                   "trimmed": [round(r[0], 3) for r in runs[True]]},
        "max_embedding_diff": float((embeddings[False] - embeddings[True]).abs().max()),
        "results_equal_1e-5": not diffs, "result_diffs": diffs[:10],
    }


def compare_prefixes(adapter, eval_set: EvalSet, config: SuiteConfig, repeats: int = 3) -> dict:
    """The suite with ``adapter.share_prefixes`` off (length-trimmed rows) and on (prefix trie),
    alternating; the fastest encode_text of each, and equality of results and embeddings."""
    timed = TimedAdapter(adapter)
    prepared = prepare_suite(timed, eval_set, config, progress=False)
    runs, results, embeddings = _alternate(adapter, timed, prepared, "share_prefixes", repeats)
    text = {on: min(r[1] for r in runs[on]) for on in (False, True)}
    total = {on: min(r[0] for r in runs[on]) for on in (False, True)}
    diffs = result_diffs(results[False], results[True])
    return {"texts": len(prepared.texts), "rows_s": round(text[False], 3), "trie_s": round(text[True], 3),
            "encode_text_speedup": round(text[False] / text[True], 2),
            "suite_rows_s": round(total[False], 3), "suite_trie_s": round(total[True], 3),
            "runs_encode_text_s": {k: [round(r[1], 3) for r in runs[on]] for k, on in (("rows", False), ("trie", True))},
            "max_embedding_diff": float((embeddings[False] - embeddings[True]).abs().max()),
            "results_equal_1e-5": not diffs, "result_diffs": diffs[:10]}


def compare_fused(adapter, eval_set: EvalSet, config: SuiteConfig, repeats: int = 3) -> dict:
    """Text encoding of the prepared captions with the fused attention path off and on, alternating."""
    import eval.text_encoding as te

    prepared = prepare_suite(adapter, eval_set, config, progress=False)
    adapter = replace(adapter, share_prefixes=False)  # the row-by-row path, where the fused kernel runs
    ready = te._fast_path_ready
    times: dict[bool, list[float]] = {False: [], True: []}
    emb = {}
    try:
        for _ in range(repeats):
            for fused in (False, True):
                te._fast_path_ready = ready if fused else (lambda transformer: False)
                with torch.no_grad():
                    t0 = time.perf_counter()
                    emb[fused] = adapter.encode_text(prepared.tokens)
                    times[fused].append(time.perf_counter() - t0)
    finally:
        te._fast_path_ready = ready
    diff = float((emb[False] - emb[True]).abs().max())
    return {"texts": len(prepared.texts), "float_mask_s": round(min(times[False]), 3),
            "fused_s": round(min(times[True]), 3), "speedup": round(min(times[False]) / min(times[True]), 2),
            "runs_s": {k: [round(t, 3) for t in v] for k, v in (("float_mask", times[False]), ("fused", times[True]))},
            "max_embedding_diff": diff, "equal_1e-5": diff <= 1e-5}


def compare_images(adapter, eval_set: EvalSet, config: SuiteConfig, repeats: int = 3) -> dict:
    """The suite with ``adapter.fast_images`` off (open_clip's encode_image) and on (fused blocks, the
    last on the class token), alternating; the fastest encode_image of each, and equality."""
    timed = TimedAdapter(adapter)
    prepared = prepare_suite(timed, eval_set, config, progress=False)
    runs, results, embeddings = _alternate(adapter, timed, prepared, "fast_images", repeats, "encode_image")
    image = {on: min(r[1] for r in runs[on]) for on in (False, True)}
    diffs = result_diffs(results[False], results[True])
    return {"images": int(prepared.images.shape[0]), "open_clip_s": round(image[False], 3),
            "fast_s": round(image[True], 3), "speedup": round(image[False] / image[True], 2),
            "runs_encode_image_s": {k: [round(r[1], 3) for r in runs[on]] for k, on in (("open_clip", False), ("fast", True))},
            "max_embedding_diff": float((embeddings[False] - embeddings[True]).abs().max()),
            "results_equal_1e-5": not diffs, "result_diffs": diffs[:10]}


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
    p.add_argument("--compare", action="store_true",
                   help="only run the whole default suite with text trimming off and on; print times, ratio, equality")
    p.add_argument("--compare-fused", action="store_true",
                   help="only time the suite's text encoding with open_clip's float mask vs the fused path")
    p.add_argument("--compare-prefixes", action="store_true",
                   help="only run the callback's probes with the text tower per row vs per distinct prefix")
    p.add_argument("--compare-images", action="store_true",
                   help="only run the callback's probes with open_clip's encode_image vs the fused, class-token path")
    p.add_argument("--blocks", type=int, default=1, help="eval_set_blocks of the default eval set (4: the callback's)")
    p.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from eval.model_access import ClipAdapter

    adapter = ClipAdapter.from_open_clip(args.model, None)
    eval_set = load_eval_set(args.data or default_eval_set(None, 0, 64, blocks=args.blocks))
    results: dict = {"model": args.model, "threads": args.threads, "torch": torch.__version__}
    base = SuiteConfig(n_objects=tuple(eval_set.n_values()), items_per_probe=args.items)
    callback_like = replace(base, probes=("tor", "ior", "i2tor", "itm"), n_objects=(3,), itm_distractors=1)
    callback_sized = [  # (flag, results key, comparison, its summary line, the key that says "equal")
        (args.compare_fused, "compare_fused", compare_fused, lambda c: (
            f"text encoding of {c['texts']} captions: float mask {c['float_mask_s']:.2f} s, fused "
            f"{c['fused_s']:.2f} s, ratio {c['speedup']:.2f}x; equal to 1e-5: {c['equal_1e-5']} "
            f"(max diff {c['max_embedding_diff']:.1e})"), "equal_1e-5"),
        (args.compare_prefixes, "compare_prefixes", compare_prefixes, lambda c: (
            f"text encoding of {c['texts']} captions: per row {c['rows_s']:.2f} s, per distinct prefix "
            f"{c['trie_s']:.2f} s, ratio {c['encode_text_speedup']:.2f}x (whole suite {c['suite_rows_s']:.2f} "
            f"vs {c['suite_trie_s']:.2f} s); results equal to 1e-5: {c['results_equal_1e-5']} "
            f"(max embedding diff {c['max_embedding_diff']:.1e})"), "results_equal_1e-5"),
        (args.compare_images, "compare_images", compare_images, lambda c: (
            f"image encoding of {c['images']} images: open_clip {c['open_clip_s']:.2f} s, fused + class token "
            f"{c['fast_s']:.2f} s, ratio {c['speedup']:.2f}x; results equal to 1e-5: {c['results_equal_1e-5']} "
            f"(max embedding diff {c['max_embedding_diff']:.1e})"), "results_equal_1e-5"),
    ]
    for wanted, key, compare, line, equal in callback_sized:
        if wanted:
            results[key] = cmp = compare(adapter, eval_set, callback_like, repeats=args.full_repeats + 1)
            print(json.dumps(cmp, indent=1))
            print(line(cmp))
            if args.out is not None:
                write_json_atomic(args.out, results)
            return 0 if cmp[equal] else 1
    if args.compare:
        results["compare_trimming"] = cmp = compare_trimming(adapter, eval_set, base, repeats=args.full_repeats)
        print(json.dumps(cmp, indent=1))
        print(f"whole default suite ({cmp['texts']} distinct texts, <= {cmp['max_caption_tokens']} of "
              f"{cmp['context_length']} tokens): untrimmed {cmp['untrimmed_s']:.2f} s, trimmed {cmp['trimmed_s']:.2f} s, "
              f"ratio {cmp['speedup']:.2f}x (encode_text {cmp['encode_text_speedup']:.2f}x); "
              f"results equal to 1e-5: {cmp['results_equal_1e-5']} (max embedding diff {cmp['max_embedding_diff']:.1e})")
        if args.out is not None:
            write_json_atomic(args.out, results)
            print(f"wrote {args.out}")
        return 0 if cmp["results_equal_1e-5"] else 1
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
