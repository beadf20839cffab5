"""Command line: ``python -m data_prep {synth,comco,official,caption-order,caption-stats,mention-eval,laion,vocab,coco} ...``.

Every sub-command checks its arguments before doing any work and reports bad values through
``parser.error`` (exit code 2, message naming the flag).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import get_origin

from . import synth as synth_mod
from .corpus_spec import CorpusSpec, cli_flag, field_default, field_types
from .fileio import OutDirError, check_writable


def _typed(flag: str, cast: type = int, minimum: int | None = None):
    """An argparse ``type=`` that parses ``cast`` (int or float) and names ``flag`` in its error."""
    what = "an integer" if cast is int else "a number"

    def conv(text: str):
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be {what}, got {text!r}") from None
        if minimum is not None and v < minimum:
            raise argparse.ArgumentTypeError(f"{flag} must be positive, got {v}")
        return v
    return conv


def _positive(flag: str):
    return _typed(flag, int, minimum=1)


def add_spec_arguments(parser: argparse.ArgumentParser, spec_cls: type = CorpusSpec) -> None:
    """One flag per field of the dataclass ``spec_cls`` (``p_large_first`` -> ``--p-large-first``), with the
    field's type, default (none: required), choices and help. Values are only parsed here; their rules
    are ``spec_cls.problems`` (the caller reports them through ``parser.error``)."""
    for f in dataclasses.fields(spec_cls):
        flag, kind, meta = cli_flag(f.name), field_types(spec_cls)[f.name], f.metadata
        kw: dict = {"dest": f.name, "help": meta.get("help", "").replace("%", "%%")}
        if kind is int:
            kw["type"] = _typed(flag, int)
        elif kind is float:
            kw["type"] = _typed(flag, float)
        elif kind is str:
            kw["type"] = str
        elif get_origin(kind) is list:
            kw["nargs"] = "*"
        else:
            raise TypeError(f"{spec_cls.__name__}.{f.name}: no command-line form for type {kind!r}")
        if meta.get("choices"):
            kw["choices"] = meta["choices"]
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        default = field_default(f)
        if default is dataclasses.MISSING:
            kw["required"] = True
        else:
            kw["default"] = default
            shown = " ".join(default) if isinstance(default, list) else "%(default)s"
            kw["help"] += f" (default: {shown or 'none'})"
        parser.add_argument(flag, **kw)


def spec_from_args(args: argparse.Namespace, spec_cls: type = CorpusSpec):
    """The ``spec_cls`` instance that :func:`add_spec_arguments`' flags parsed into ``args``."""
    return spec_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(spec_cls)})


def _check_out(parser: argparse.ArgumentParser, out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``--out`` without ``--overwrite``, and one that cannot be written, before any work."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        parser.error(f"--out {out} exists and is not empty; pass --overwrite or choose an empty directory")
    try:
        check_writable(out, "--out", is_dir=True)
    except OutDirError as e:
        parser.error(str(e))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_prep", description=(
        "Data room: rendered scenes, training shards, eval sets, LAION ingestion, caption analyses."))
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="rendered training shards with a caption-order knob")
    s.add_argument("--out", type=Path, required=True, help="output directory for 00000.tar, sizes.json, meta.json")
    add_spec_arguments(s)  # the corpus's knobs: data_prep.corpus_spec.CorpusSpec, one flag per field
    s.add_argument("--workers", type=_positive("--workers"), default=1, help="processes (same bytes for any value)")
    s.add_argument("--objects", nargs="+", default=None, help="restrict to these object names (default: all)")
    s.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")
    s.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    c = sub.add_parser("comco", help="ComCO/SimCO-style counterbalanced eval set")
    c.add_argument("--out", type=Path, required=True, help="output directory (images + manifest.jsonl)")
    c.add_argument("--seed", type=int, default=0, help="seed of object orders")
    c.add_argument("--image-size", type=_positive("--image-size"), default=64, help="image side in pixels")
    c.add_argument("--n-objects", type=int, nargs="+", default=[2, 3, 4, 5], help="object counts (2..5)")
    c.add_argument("--items-per-setting", type=_positive("--items-per-setting"), default=None,
                   help="images per (n, large slot); default = vocabulary size (exact counterbalance)")
    c.add_argument("--kind", choices=("objects", "shapes"), default="objects", help="OpenMoji objects or SimCO shapes")
    c.add_argument("--background", default="white", help="plain, white, noise, gradient or #rrggbb")
    c.add_argument("--objects", nargs="+", default=None, help="restrict to these names (default: all of --kind)")
    c.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")
    c.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    o = sub.add_parser("official", help="convert the paper's ComCO folders to manifest.jsonl")
    o.add_argument("--src", type=Path, required=True, help="folder holding CoCo-* folders")
    o.add_argument("--out", type=Path, required=True, help="output directory")
    o.add_argument("--large-slot", action="append", default=[], metavar="FOLDER=INDEX",
                   help="override: folder name without 'CoCo-' = large slot index (repeatable)")
    o.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")

    a = sub.add_parser("caption-order", help="position of the largest mentioned object in captions (Fig. 4b)")
    a.add_argument("--shards", nargs="*", type=Path, default=[], help="tar shards or directories of shards")
    a.add_argument("--coco-instances", type=Path, help="COCO instances_*.json")
    a.add_argument("--coco-captions", type=Path, help="COCO captions_*.json")
    a.add_argument("--out", type=Path, required=True, help="output directory for caption_order.json/.png")
    a.add_argument("--max-samples", type=_positive("--max-samples"), default=None, help="stop after this many")
    a.add_argument("--sidecar", type=Path, default=None,
                   help="boxes sidecar jsonl for shards without boxes (LAION): {key, objects: [{name, bbox, score}]}")
    a.add_argument("--min-score", type=float, default=0.3, help="sidecar boxes below this detector score are ignored")
    a.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")

    l = sub.add_parser("laion", help="download url+caption parquet rows with img2dataset")
    l.add_argument("--parquet", type=Path, required=True, help="parquet file with url and caption columns")
    l.add_argument("--out", type=Path, required=True, help="output directory for shards")
    l.add_argument("--num-samples", type=_positive("--num-samples"), default=None, help="use at most N rows")
    l.add_argument("--image-size", type=_positive("--image-size"), default=64, help="resize side")
    l.add_argument("--url-col", default="url", help="url column name")
    l.add_argument("--caption-col", default="caption", help="caption column name")
    l.add_argument("--processes", type=_positive("--processes"), default=1, help="img2dataset processes")
    l.add_argument("--threads", type=_positive("--threads"), default=8, help="img2dataset threads")
    l.add_argument("--shard-size", type=_positive("--shard-size"), default=1000, help="samples per tar")
    l.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")

    v = sub.add_parser("vocab", help="list objects/shapes, or save a PNG grid of all sprites")
    v.add_argument("--grid", type=Path, default=None, help="write a contact sheet PNG here")
    for sp in (s, c, o, a, l, v):
        sp.set_defaults(parser=sp)

    cs = sub.add_parser("caption-stats", help="share of captions naming 0/1/2/3+ objects; what CaptionShuffle can do")
    cs.add_argument("shards", nargs="*", type=Path, help="tar shards or directories of shards")
    cs.add_argument("--captions", type=Path, default=None,
                    help="instead of shards: a caption file (one per line, or the first tab-separated column)")
    cs.add_argument("--vocabulary", default="default",
                    help="default (COCO + rendered objects), coco, rendered, open (every depictable noun), or a "
                         "TSV file name<TAB>synonyms; the open vocabulary's view is shown beside it")
    cs.add_argument("--max-samples", type=_positive("--max-samples"), default=None, help="stop after this many")
    cs.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    cs.set_defaults(parser=cs)

    co = sub.add_parser("coco", help="COCO-format captions + instances -> shards with boxes per sample")
    co.add_argument("--images", type=Path, nargs="+", required=True, help="folder(s) holding the images")
    co.add_argument("--captions", type=Path, nargs="+", required=True, help="captions_*.json file(s)")
    co.add_argument("--instances", type=Path, nargs="+", required=True, help="instances_*.json file(s)")
    co.add_argument("--out", type=Path, required=True, help="output directory for 00000.tar, sizes.json, meta.json")
    co.add_argument("--shard-size", type=_positive("--shard-size"), default=1000, help="samples per tar")
    co.add_argument("--max-size", type=_positive("--max-size"), default=None,
                    help="downscale images whose longer side exceeds this (boxes follow); default: keep bytes")
    co.add_argument("--vocabulary", default=None,
                    help="mention vocabulary: coco (default, plus the dataset's category names), or a TSV file")
    co.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")
    co.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    co.set_defaults(parser=co)

    me = sub.add_parser("mention-eval", help="recall/precision of mention vocabularies on hand-labelled captions")
    me.add_argument("gold", type=Path, help="gold TSV: source, id, caption, mentions ('phrase => head' | ...)")
    me.add_argument("--vocabulary", nargs="+", default=["open", "default"],
                    help="vocabularies to compare (open, default, coco, rendered or TSV files)")
    me.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    me.set_defaults(parser=me)
    return p


def _run_mention_eval(p, args) -> None:
    from .fileio import write_json_atomic
    from .mention_gold import evaluate, format_evaluation, read_gold
    from .mentions import load_vocabulary
    if not args.gold.is_file():
        p.error(f"gold file {args.gold} does not exist")
    try:
        gold = read_gold(args.gold)
        vocabs = {str(v): load_vocabulary(v) for v in args.vocabulary}
    except (ValueError, KeyError) as e:
        p.error(f"{args.gold}: {e}" if isinstance(e, KeyError) else str(e))
    results = {name: evaluate(gold, vocab) for name, vocab in vocabs.items()}
    print("\n".join(format_evaluation(name, r) for name, r in results.items()))
    if args.json:
        write_json_atomic(args.json, results)
        print(f"wrote {args.json}")


def _run_synth(p, args) -> None:
    spec = spec_from_args(args)
    errs = spec.problems(cli_flag, objects=args.objects)
    if errs:
        p.error("; ".join(errs))
    _check_out(p, args.out, args.overwrite)
    try:
        meta = synth_mod.write_corpus(args.out, spec=spec, overwrite=args.overwrite, progress=not args.no_progress,
                                      workers=args.workers, objects=args.objects, desc="rendering training corpus")
    except OutDirError as e:  # --overwrite would replace a file data_prep did not write
        p.error(str(e))
    print(f"wrote {meta['num_samples']} samples in {meta['num_shards']} shards to {args.out}")


def _run_comco(p, args) -> None:
    from . import comco
    from .render import check_background
    try:
        comco.validate_args(args.image_size, args.n_objects, args.items_per_setting, args.kind, args.objects)
        check_background(args.background)
    except ValueError as e:
        p.error(str(e))
    _check_out(p, args.out, args.overwrite)
    try:
        path = comco.write_eval_set(args.out, args.seed, args.image_size, args.n_objects, args.items_per_setting,
                                    args.kind, args.overwrite, args.background, not args.no_progress, args.objects)
    except OutDirError as e:
        p.error(str(e))
    print(f"wrote {path}")


def _run_official(p, args) -> None:
    from .official import convert_official
    overrides = {}
    for item in args.large_slot:
        name, _, idx = item.partition("=")
        if not idx.isdigit():
            p.error(f"--large-slot expects FOLDER=INDEX, got {item!r}")
        overrides[name] = int(idx)
    if not args.src.is_dir():
        p.error(f"--src {args.src} is not a directory")
    _check_out(p, args.out, args.overwrite)
    try:
        path = convert_official(args.src, args.out, args.overwrite, overrides)
    except ValueError as e:
        p.error(str(e))
    print(f"wrote {path}")


def _run_caption_order(p, args) -> None:
    from . import caption_order
    if not args.shards and not (args.coco_instances and args.coco_captions):
        p.error("give --shards, or both --coco-instances and --coco-captions")
    for f in [*args.shards, args.coco_instances, args.coco_captions]:
        if f is not None and not f.exists():
            p.error(f"input {f} does not exist")
    for d in args.shards:
        if d.is_dir() and not any(d.glob("*.tar")):
            p.error(f"--shards {d} holds no *.tar shard (give the folder that data_prep or img2dataset wrote, "
                    f"or the .tar files themselves)")
    _check_out(p, args.out, args.overwrite)
    if args.sidecar is not None and not args.shards:
        p.error("--sidecar goes with --shards")
    if not 0.0 <= args.min_score <= 1.0:
        p.error(f"--min-score must lie in [0, 1], got {args.min_score}")
    sidecar = None
    if args.sidecar is not None:
        from .boxes import BoxesSidecar
        try:
            sidecar = BoxesSidecar(args.sidecar, min_score=args.min_score)
        except (OSError, ValueError) as e:
            p.error(f"--sidecar: {e}")
    if args.shards:
        counts = caption_order.analyse_shards(args.shards, max_samples=args.max_samples, sidecar=sidecar)
    else:
        counts = caption_order.analyse_coco(args.coco_instances, args.coco_captions, max_samples=args.max_samples)
    report = caption_order.write_report(counts, args.out)
    print(json.dumps(report["summary"], indent=2))
    print(caption_order.format_summary(report))
    if report["summary"]["n_used"] == 0:
        print("warning: no caption names 2+ objects with boxes; shards without 'objects' in their json "
              "(e.g. LAION) need --sidecar with detector boxes (see data_prep.boxes)", file=sys.stderr)


def _run_laion(p, args) -> None:
    from . import laion
    try:
        laion.validate_parquet(args.parquet, args.url_col, args.caption_col)
    except ValueError as e:
        p.error(str(e))
    _check_out(p, args.out, args.overwrite)
    try:
        meta = laion.download(args.parquet, args.out, num_samples=args.num_samples, image_size=args.image_size,
                              url_col=args.url_col, caption_col=args.caption_col, processes=args.processes,
                              threads=args.threads, shard_size=args.shard_size, overwrite=args.overwrite)
    except OutDirError as e:
        p.error(str(e))
    print(f"downloaded {meta['num_success']} of {meta['num_rows']} rows into {args.out}")


def _run_vocab(p, args) -> None:
    from .vocab import MISSING, OBJECTS, SHAPES
    for name, spec in sorted(OBJECTS.items()):
        print(f"{name}\t{spec.codepoint}\t{spec.size_class}")
    print(f"# {len(OBJECTS)} objects; missing: {', '.join(MISSING)}; shapes: {', '.join(SHAPES)}")
    if args.grid:
        from .glyphs import contact_sheet
        contact_sheet(list(OBJECTS) + list(SHAPES)).save(args.grid)
        print(f"wrote {args.grid}")


def _run_caption_stats(p, args) -> None:
    from .caption_stats import compare_vocabularies, format_views, read_caption_file
    from .fileio import write_json_atomic
    from .mentions import load_vocabulary, open_vocabulary
    from .read_shards import iter_samples
    try:
        vocab = load_vocabulary(args.vocabulary)
    except ValueError as e:
        p.error(f"--vocabulary: {e}")
    if bool(args.shards) == (args.captions is not None):
        p.error("give shards or --captions FILE (one of them)")
    for f in [*args.shards, *([args.captions] if args.captions else [])]:
        if not f.exists():
            p.error(f"input {f} does not exist")
    metas = read_caption_file(args.captions) if args.captions else (m for m, _ in iter_samples(args.shards))
    views = {str(args.vocabulary): vocab, **({} if str(args.vocabulary) == "open" else {"open": open_vocabulary()})}
    stats = compare_vocabularies(metas, views, args.max_samples, progress=True)
    print(format_views(stats))
    if args.json:  # the chosen vocabulary's numbers at the top; every view under "views"
        write_json_atomic(args.json, {**stats[str(args.vocabulary)], "vocabulary": str(args.vocabulary), "views": stats})
        print(f"wrote {args.json}")


def _run_coco(p, args) -> None:
    from . import coco
    from .mentions import load_vocabulary
    errs = coco.check_inputs(args.images, args.captions, args.instances)
    vocab = None
    if args.vocabulary is not None:
        try:
            vocab = load_vocabulary(args.vocabulary)
        except ValueError as e:
            errs.append(f"--vocabulary: {e}")
    if errs:
        p.error("; ".join(errs))
    _check_out(p, args.out, args.overwrite)
    try:
        meta = coco.convert(args.images, args.captions, args.instances, args.out, args.shard_size, args.max_size,
                            vocab, args.overwrite, not args.no_progress)
    except ValueError as e:
        p.error(str(e))
    print(f"wrote {meta['num_samples']} samples in {meta['num_shards']} shards to {args.out} "
          f"({json.dumps(meta['counts'])})")


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m data_prep``."""
    p = build_parser()
    args = p.parse_args(argv)
    sub = args.parser  # the sub-command's parser, so errors show its usage
    {"synth": _run_synth, "comco": _run_comco, "official": _run_official,
     "caption-order": _run_caption_order, "laion": _run_laion, "vocab": _run_vocab,
     "caption-stats": _run_caption_stats, "coco": _run_coco, "mention-eval": _run_mention_eval}[args.command](sub, args)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
