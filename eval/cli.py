"""``python -m eval``: subcommands ``comco`` (run the probes), ``coco``, ``sugarcrepe``,
``zeroshot``, ``word-order``, ``compositional`` (the probes beyond the paper's), ``report`` and ``attention``.

Example::

    python -m eval comco --checkpoint runs/quick/checkpoints/last.ckpt --n-objects 3 4 --out res.json
    python -m eval comco --model ViT-B-32 --pretrained openai --probes tor,ior --out res.json
    python -m eval coco --images val2017 --instances instances_val2017.json --captions captions_val2017.json \
        --checkpoint runs/quick/checkpoints/last.ckpt --out coco.json
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from data_prep.fileio import write_json_atomic
from eval import report, suite
from eval.attention import attention_by_role, format_attention, vit_last_attention
from eval.benchmarks import BenchmarkConfig
from eval.eval_sets import CACHE_ENV, default_eval_set, eval_set_cache_problem, n_objects_problem
from eval.manifest import load_eval_set
from eval.model_access import ClipAdapter, model_image_size
from eval.records import summary_of
from eval.suite import SuiteConfig, SuiteOption, SuiteOptionError, suite_options

CACHE_HELP = f"cache for rendered eval sets (default: ${CACHE_ENV} or ~/.cache/clip_bias_lab)"


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


# ---------------------------------------------------------------- the probe options, from SuiteConfig
# Each SuiteConfig option is one comco flag whose type, default, choices and help come from its
# declaration (eval.suite.suite_options); what follows is only how this command line spells them.

#: flags that are not ``--<option name with dashes>`` (kept as users know them)
_FLAG_NAMES = {"items_per_probe": "--items", "text_encodings": "--text-encoding"}
#: list options given as one comma-separated word (the other lists take several words)
_COMMA_LISTS = ("probes", "templates")
#: the value that stands for None, for an optional option this command line can unset
_NONE_VALUES = {"itm_distractors": 0}
#: options whose default here is not the suite's: (default, what it means)
_OWN_DEFAULTS = {"n_objects": (None, "every n in the eval set")}


def suite_flag(name: str) -> str:
    """``comco``'s flag of the suite option ``name``."""
    return _FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


def _dest(name: str) -> str:
    """The ``args`` attribute of the suite option ``name`` (argparse's own, from the flag)."""
    return suite_flag(name).lstrip("-").replace("-", "_")


#: ``comco``'s flag for each suite option (:class:`eval.suite.SuiteConfig` checks them; its errors name these)
SUITE_FLAGS = {opt.name: suite_flag(opt.name) for opt in suite_options()}


def suite_argument(opt: SuiteOption) -> dict[str, Any]:
    """``add_argument`` keywords of one suite option: type, nargs, choices, default and help."""
    default, default_text = _OWN_DEFAULTS.get(opt.name, (opt.default, None))
    none_value = _NONE_VALUES.get(opt.name)
    if default is None and none_value is not None:
        default = none_value
    kw: dict[str, Any] = {}
    spelling = ""
    if opt.is_list and opt.name in _COMMA_LISTS:
        kw["type"], spelling = _csv, ", comma-separated"
        default_text = default_text or ",".join(map(str, default))
    elif opt.is_list:
        kw["nargs"] = "+"
        default_text = default_text or " ".join(map(str, default))
    if opt.item_type is not str and "type" not in kw:
        kw["type"] = opt.item_type
    if opt.choices and opt.name not in _COMMA_LISTS:  # argparse checks each word (a comma list is one word)
        kw["choices"] = opt.choices
    if opt.is_list and default is not None:
        default = list(default)
    text = opt.describe(None if none_value is None else str(none_value), spelling)
    text += f" (default: {default if default_text is None else default_text})"
    return {**kw, "default": default, "help": text.replace("%", "%%")}


def add_suite_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`eval.suite.SuiteConfig` option, in its field order."""
    group = parser.add_argument_group("probe options (eval.suite.SuiteConfig)")
    for opt in suite_options():
        group.add_argument(suite_flag(opt.name), **suite_argument(opt))


def suite_config(args: argparse.Namespace, n_objects: Sequence[int] | None = None) -> SuiteConfig:
    """The suite options of ``comco``'s arguments (``n_objects`` None: ``--n-objects`` or the default)."""
    values = {}
    for opt in suite_options():
        value = getattr(args, _dest(opt.name))
        if opt.name in _NONE_VALUES and value == _NONE_VALUES[opt.name]:
            value = None
        elif value is None and opt.name in _OWN_DEFAULTS:
            continue  # not given: the suite's default
        values[opt.name] = value
    if n_objects:
        values["n_objects"] = n_objects
    return SuiteConfig(**values)


def add_comco_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "comco", help="run the bias probes on a model", description="Run the ComCO bias probes "
        "(TOR, TOC, IOR, IOC, I2TOR, ITM, Claim 1) on one model; print tables and write JSON.")
    src = p.add_argument_group("model (one of)")
    src.add_argument("--checkpoint", type=Path, help="Lightning checkpoint of train.module.CLIPModule")
    src.add_argument("--model", help="open_clip model name (built-in, clip-tiny/clip-micro, or ./configs/models/*.json)")
    src.add_argument("--pretrained", help="open_clip pretrained tag (needs network) or weights file")
    p.add_argument("--data", type=Path, help="eval-set folder with manifest.jsonl (default: render "
                   "the default ComCO-style set once into --cache-dir)")
    p.add_argument("--cache-dir", type=Path, default=None, help=CACHE_HELP)
    p.add_argument("--image-size", type=int, default=None,
                   help="side of rendered default eval images (default: the model's input size)")
    p.add_argument("--eval-set-blocks", type=int, default=1,
                   help="counterbalanced blocks of 62 images per large-object slot in the rendered default "
                   "set (4 = the training callback's +-0.05 sizing, with --items 806 --itm-distractors 1; "
                   "default: %(default)s)")
    add_suite_arguments(p)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--batch-size", type=int, default=256, help="encoder batch size")
    p.add_argument("--out", type=Path, required=True, help="results JSON (written atomically)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_comco)
    return p


def validate_args(args: argparse.Namespace) -> None:
    """Collect every problem with the ``comco`` arguments into one error."""
    problems = model_problems(args)
    config = None
    try:
        config = suite_config(args)
    except SuiteOptionError as e:
        problems += e.messages(SUITE_FLAGS)
    if args.data is not None and not (args.data / "manifest.jsonl").is_file() and not args.data.is_file():
        problems.append(f"--data {args.data} has no manifest.jsonl (make one with data_prep)")
    if args.batch_size < 1:
        problems.append(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.eval_set_blocks < 1:
        problems.append(f"--eval-set-blocks must be >= 1, got {args.eval_set_blocks}")
    elif args.data is not None and args.eval_set_blocks != 1:
        problems.append("--eval-set-blocks sizes the rendered default set; it does not apply to --data "
                        f"{args.data} (drop one of them)")
    if args.data is None and config is not None and (problem := n_objects_problem(config.n_objects, "--n-objects")):
        problems.append(problem)
    if args.data is None and (problem := eval_set_cache_problem(args.cache_dir, args.seed, args.image_size,
                                                                "--cache-dir", max(1, args.eval_set_blocks))):
        problems.append(problem)
    problems += output_problems(args)
    if problems:
        raise SystemExit("error: " + "\n  ".join(problems))


def model_problems(args: argparse.Namespace) -> list[str]:
    """What is wrong with ``--checkpoint`` / ``--model`` / ``--pretrained`` (before anything loads)."""
    problems = []
    if (args.checkpoint is None) == (args.model is None):
        problems.append("give exactly one of --checkpoint PATH or --model NAME [--pretrained TAG|FILE]")
    if args.pretrained and args.checkpoint is not None:
        problems.append("--pretrained goes with --model, not with --checkpoint")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        problems.append(f"--checkpoint {args.checkpoint} does not exist")
    return problems


def output_problems(args: argparse.Namespace) -> list[str]:
    """``--out`` that cannot be written, found before the model is loaded or any probe runs."""
    from data_prep.fileio import OutDirError, check_writable

    if getattr(args, "out", None) is None:
        return []
    try:
        check_writable(args.out, "--out")
    except OutDirError as e:
        return [str(e)]
    return []


def load_adapter(args: argparse.Namespace) -> Any:
    """The model named by ``--checkpoint`` or ``--model/--pretrained``."""
    if args.checkpoint is not None:
        return ClipAdapter.from_checkpoint(args.checkpoint, device=args.device, batch_size=args.batch_size)
    return ClipAdapter.from_open_clip(args.model, args.pretrained, device=args.device, batch_size=args.batch_size)


def run_comco(args: argparse.Namespace, adapter_factory: Callable[[argparse.Namespace], Any] = load_adapter) -> int:
    """Load model and eval set, prepare and run the suite, print tables, write JSON."""
    validate_args(args)
    progress = not args.no_progress
    adapter = adapter_factory(args)
    size = args.image_size or model_image_size(adapter)
    data = args.data or default_eval_set(args.cache_dir, args.seed, size, progress, blocks=args.eval_set_blocks)
    eval_set = load_eval_set(data)
    n_objects = tuple(args.n_objects or eval_set.n_values())
    try:
        eval_set.check_n(n_objects)
    except ValueError as e:
        raise SystemExit(f"error: --n-objects: {e}") from e
    t0 = time.perf_counter()
    prepared = suite.prepare_suite(adapter, eval_set, suite_config(args, n_objects), progress=progress)
    t1 = time.perf_counter()
    results = suite.run_suite(adapter, prepared)
    t2 = time.perf_counter()
    print(format_results(results))
    record = {
        "model": getattr(adapter, "name", None) or str(args.checkpoint or f"{args.model}:{args.pretrained}"),
        "eval_set": str(Path(data).resolve()),
        **prepared.describe(),
        "timing_s": {"prepare": round(t1 - t0, 3), "run": round(t2 - t1, 3)},
        "results": results,
    }
    write_json_atomic(args.out, record)
    print(f"wrote {args.out}")
    return 0


_TITLES = {
    "tor": "TOR: caption -> object-name retrieval, top-1 share by mention position",
    "ior": "IOR: image -> single-object image retrieval, top-1 share by size role",
    "i2tor": "I2TOR: image -> object-name retrieval, top-1 share by size role",
    "toc": "TOC: held-out accuracy of a linear probe per mention position",
    "ioc": "IOC: held-out accuracy of a linear probe per size role",
    "itm": "ITM: accuracy, S1 = large object named first, S2 = named last",
    "claim1": "Claim 1: TOR share of the first object, large-first vs small-first captions",
}


def _f(x: float | None, signed: bool = False) -> str:
    return "  -  " if x is None else (f"{x:+.3f}" if signed else f"{x:.3f}")


def _index(res: dict, name: str) -> float | None:
    """A summary index of a probe result, read from its one home (``result["summary"]``)."""
    return summary_of(res).get(name, {}).get("value")


def _ci(res: dict, name: str) -> str:
    """``[lo, hi]`` of a summary index's 95 % interval, blank when it has none."""
    ci = summary_of(res).get(name, {}).get("ci")
    return f" [{ci[0]:+.2f},{ci[1]:+.2f}]" if ci else ""


def _retrieval_rows(n: int, res: dict, index: str) -> list[str]:
    """Conditional, unconditional and own-objects shares per position/role, each with its index,
    denominator and 95 % interval."""
    labels = res["labels"]
    head = f"  n  {'kind':6}" + "".join(f"{lab:>8}" for lab in labels) + f"{'none':>8}{'N':>11}  {index} [95 % CI]"
    rows = [("cond", res["conditional"], f"{res['n_conditional']:>5}/{res['n_items']:<5}", "_conditional"),
            ("uncond", res["unconditional"], f"{res['n_items']:>11}", "")]
    if "own_objects" in res:
        rows.append(("own", res["own_objects"], f"{res['n_items']:>11}", "_own"))
    out = [head]
    for kind, shares, denominator, suffix in rows:
        none = _f(shares["none"]["share"]) if "none" in shares else ""
        out.append(f"  {n}  {kind:6}" + "".join(f"{_f(shares[lab]['share']):>8}" for lab in labels)
                   + f"{none:>8}{denominator}  {_f(_index(res, index + suffix), True)}{_ci(res, index + suffix)}")
    return out


def format_results(results: dict[str, dict[int, dict]]) -> str:
    """Plain-text tables in the spirit of the paper's Tables 1, 2 and 6."""
    lines: list[str] = []
    for probe, per_n in results.items():
        lines += ["", _TITLES.get(probe, probe)]
        for n, res in per_n.items():
            if probe in ("tor", "ior", "i2tor"):
                index = "order_bias" if probe == "tor" else "size_bias"
                lines += _retrieval_rows(n, res, index)
                for name, var in res.get("variants", {}).items():
                    lines.append(f"     variant {name}: pos1/large uncond "
                                 f"{_f(var['unconditional'][var['labels'][0]]['share'])}, "
                                 f"{index} {_f(_index(var, index), True)}, cond N {var['n_conditional']}")
            elif probe in ("toc", "ioc"):
                acc = res["accuracy"]
                lines.append(f"  n={n}  " + "  ".join(f"{lab} {_f(acc[lab]['share'])}" for lab in res["labels"])
                             + f"   (chance {res['chance']:.3f}, test N {res['n_test']})")
            elif probe == "itm":
                rows = [("plain" if res.get("text_encoding") != "split" else "split", res)]
                rows += list(res.get("variants", {}).items())
                for enc, r in rows:
                    lines.append(f"  n={n} {enc:5}  S1 {_f(r['s1']['share'])}  S2 {_f(r['s2']['share'])}  "
                                 f"gap {_f(_index(r, 'gap'), True)}{_ci(r, 'gap')}   (pairs {r['s1']['total']})")
            elif probe == "claim1":
                lf, sf = res["large_first"], res["small_first"]
                lines.append(f"  n={n}  large-first {_f(lf['unconditional']['pos1']['share'])}  small-first "
                             f"{_f(sf['unconditional']['pos1']['share'])}  gap {_f(_index(res, 'first_share_gap'), True)}"
                             f"   (cond: {_f(lf['conditional']['pos1']['share'])} vs "
                             f"{_f(sf['conditional']['pos1']['share'])})")
    return "\n".join(lines)


def run_attention(args: argparse.Namespace) -> int:
    """Entry point of the ``attention`` subcommand."""
    if (args.checkpoint is None) == (args.model is None):
        raise SystemExit("error: give exactly one of --checkpoint PATH or --model NAME [--pretrained TAG|FILE]")
    adapter = load_adapter(args)
    try:
        vit_last_attention(adapter.model.visual)
    except TypeError as e:
        raise SystemExit(f"error: {e}") from e
    data = args.data or default_eval_set(args.cache_dir, args.seed, args.image_size or model_image_size(adapter),
                                         not args.no_progress)
    eval_set = load_eval_set(data)
    n_objects = args.n_objects or eval_set.n_values()
    results = attention_by_role(adapter, eval_set, n_objects, args.items, progress=not args.no_progress)
    print(format_attention(results))
    if args.out:
        write_json_atomic(args.out, {"model": adapter.name, "eval_set": str(Path(data).resolve()),
                                     "results": results})
        print(f"wrote {args.out}")
    return 0


def add_attention_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``attention`` (:mod:`eval.attention`) on ``python -m eval``."""
    p = subparsers.add_parser(
        "attention", help="CLS attention inside each object's box, per size role (ViT towers)",
        description="Last-block CLS-to-patch attention of a ViT image tower summed inside object boxes.")
    p.add_argument("--checkpoint", type=Path, help="Lightning checkpoint of train.module.CLIPModule")
    p.add_argument("--model", help="open_clip model name (instead of --checkpoint)")
    p.add_argument("--pretrained", help="open_clip pretrained tag (needs network) or weights file")
    p.add_argument("--data", type=Path, help="eval-set folder with manifest.jsonl incl. bboxes (default: render)")
    p.add_argument("--cache-dir", type=Path, default=None, help=CACHE_HELP)
    p.add_argument("--image-size", type=int, default=None,
                   help="side of rendered default eval images (default: the model's input size)")
    p.add_argument("--n-objects", type=int, nargs="+", default=None, help="objects per image (default: all)")
    p.add_argument("--items", type=int, default=None, help="about this many images per n, rounded up to whole balanced blocks (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the rendered default eval set")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--out", type=Path, default=None, help="results JSON (optional)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_attention)
    return p


# ---------------------------------------------------------------- the probes beyond the paper's

def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("model (one of)")
    src.add_argument("--checkpoint", type=Path, help="Lightning checkpoint of train.module.CLIPModule")
    src.add_argument("--model", help="open_clip model name (built-in, clip-tiny/clip-micro, or ./configs/models/*.json)")
    src.add_argument("--pretrained", help="open_clip pretrained tag (needs network) or weights file (an export)")
    p.add_argument("--min-items", type=int, default=BenchmarkConfig.min_items,
                   help="fewest items behind a reported number; below it: n/a (N = k) (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--batch-size", type=int, default=256, help="encoder batch size")
    p.add_argument("--seed", type=int, default=0, help="seed of the word-order perturbations, of the rendered "
                   "default eval set and of a random init (--model without --pretrained) (default: %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="results JSON (written atomically)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_rendered_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, help="eval-set folder with manifest.jsonl (default: the rendered "
                   "default set, as comco renders it, in --cache-dir)")
    p.add_argument("--cache-dir", type=Path, default=None, help=CACHE_HELP)
    p.add_argument("--image-size", type=int, default=None,
                   help="side of rendered default eval images (default: the model's input size)")


def add_benchmark_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "coco", help="size and order bias on real photos (COCO-format)", description="The size bias of the "
        "image encoder and the order bias of the text encoder on a COCO-format dataset (COCO, LVIS, Visual "
        "Genome exports), and the word-order probe on its captions (eval.coco_bias, eval.word_order).")
    p.add_argument("--images", type=Path, required=True, help="image folder the annotations' file_name entries point into")
    p.add_argument("--instances", type=Path, required=True, help="instances JSON (boxes)")
    p.add_argument("--captions", type=Path, help="captions JSON (the text side and the word-order probe)")
    p.add_argument("--ratio", type=float, default=BenchmarkConfig.coco_ratio, help="an image enters the size probe "
                   "when its largest instance is at least this many times the next category's (default: %(default)s)")
    p.add_argument("--prompts", type=Path, help="JSON object {category: prompt} for the gallery (default: "
                   "'a photo of a {}.' per category; a category it lacks is left out, its items counted)")
    p.add_argument("--no-word-order", action="store_true", help="skip the word-order probe on the captions")
    _add_model_arguments(p)
    p.set_defaults(func=run_benchmark_command, benchmark="coco")
    p = subparsers.add_parser(
        "sugarcrepe", help="SugarCrepe compositionality accuracy", description="SugarCrepe (Hsieh et al. 2023): "
        "per subset, the share of pairs whose caption beats its hard negative (eval.sugarcrepe).")
    p.add_argument("--dir", type=Path, required=True, help="folder of SugarCrepe's JSON files (add_obj.json, ...)")
    p.add_argument("--images", type=Path, required=True, help="the COCO val2017 image folder")
    _add_model_arguments(p)
    p.set_defaults(func=run_benchmark_command, benchmark="sugarcrepe")
    p = subparsers.add_parser(
        "zeroshot", help="zero-shot classification", description="Zero-shot top-1/top-5 (prompt templates "
        "averaged) on a class-per-folder directory, or on the rendered single-object images (eval.zeroshot).")
    p.add_argument("--folder", type=Path, help="ROOT/<class>/<image> (e.g. ImageNet val by class); default: the "
                   "rendered eval set's single-object images")
    _add_rendered_arguments(p)
    _add_model_arguments(p)
    p.set_defaults(func=run_benchmark_command, benchmark="zeroshot")
    p = subparsers.add_parser(
        "word-order", help="the word-order probe (ARO's COCO-Order idea)", description="Precision@1 of each "
        "image's caption against word-order perturbations of it, on the rendered eval set (eval.word_order); "
        "for COCO captions use `python -m eval coco`.")
    p.add_argument("--items", type=int, default=BenchmarkConfig.word_order_items, help="multi-object images "
                   "(default: %(default)s)")
    p.add_argument("--template", default=BenchmarkConfig.word_order_template, help="caption template (default: %(default)s)")
    _add_rendered_arguments(p)
    _add_model_arguments(p)
    p.set_defaults(func=run_benchmark_command, benchmark="word-order")
    p = subparsers.add_parser(
        "compositional",
        help="in-world compositional probes (swap_obj, replace_rel, swap_att; replace_axis as a control)",
        description="Is a two-object image closer to its true caption than to the objects swapped, the relation "
        "replaced by its opposite, or the size words swapped (and, as a control, the relation moved to the other axis)? "
        "On the rendered relation set (eval.compositional).")
    p.add_argument("--data", type=Path, help="a relation set folder (default: rendered once into --cache-dir, on "
                                             "the objects of --objects or of the checkpoint's run)")
    p.add_argument("--objects", nargs="+", default=None,
                   help="draw the default relation set from these objects (default: the run's data.synthetic.objects "
                        "from the config.yaml beside the checkpoint's folder, else every object)")
    p.add_argument("--cache-dir", type=Path, default=None, help=CACHE_HELP)
    p.add_argument("--image-size", type=int, default=None, help="side of the rendered set (default: the model's)")
    _add_model_arguments(p)
    p.set_defaults(func=run_benchmark_command, benchmark="compositional")


def run_vocabulary(checkpoint: Path | None) -> list[str] | None:
    """``data.synthetic.objects`` of the run a checkpoint belongs to (``RUN/config.yaml`` beside
    ``RUN/checkpoints/``), or None: no such config, or a run on every object."""
    config = None if checkpoint is None else Path(checkpoint).resolve().parent.parent / "config.yaml"
    if config is None or not config.is_file():
        return None
    import yaml

    data = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("data") or {}
    return (data.get("synthetic") or {}).get("objects")


def benchmark_config(args: argparse.Namespace) -> BenchmarkConfig:
    """The :class:`eval.benchmarks.BenchmarkConfig` of a ``coco``/``sugarcrepe``/``zeroshot``/``word-order`` command."""
    off = {"zeroshot": False, "word_order": False, "min_items": args.min_items}
    if args.benchmark == "coco":
        return BenchmarkConfig(**{**off, "word_order": not args.no_word_order}, coco_images=str(args.images),
                               coco_instances=str(args.instances),
                               coco_captions=None if args.captions is None else str(args.captions),
                               coco_prompts=None if args.prompts is None else str(args.prompts), coco_ratio=args.ratio)
    if args.benchmark == "sugarcrepe":
        return BenchmarkConfig(**off, sugarcrepe_dir=str(args.dir), sugarcrepe_images=str(args.images))
    if args.benchmark == "zeroshot":
        if args.folder is not None:
            return BenchmarkConfig(**off, zeroshot_folder=str(args.folder))
        return BenchmarkConfig(**{**off, "zeroshot": True})
    if args.benchmark == "compositional":
        return BenchmarkConfig(**{**off, "compositional": True})
    return BenchmarkConfig(**{**off, "word_order": True}, word_order_items=args.items, word_order_template=args.template)


def run_benchmark_command(args: argparse.Namespace, adapter_factory: Callable[[argparse.Namespace], Any] = load_adapter) -> int:
    """``coco``, ``sugarcrepe``, ``zeroshot``, ``word-order``: check everything, load the model,
    prepare, run, print one table, write JSON."""
    from eval.benchmarks import prepare_benchmarks, run_benchmarks

    problems = model_problems(args)
    config = None
    try:
        config = benchmark_config(args)
        problems += [_flag_names(p) for p in config.problems()]
    except ValueError as e:
        problems.append(str(e))
    rendered = args.benchmark == "word-order" or (args.benchmark == "zeroshot" and args.folder is None)
    if rendered and args.data is not None and not (args.data / "manifest.jsonl").is_file():
        problems.append(f"--data {args.data} has no manifest.jsonl (make one with data_prep)")
    if rendered and args.data is None and (problem := eval_set_cache_problem(args.cache_dir, args.seed, args.image_size,
                                                                             "--cache-dir")):
        problems.append(problem)
    problems += output_problems(args)
    if args.benchmark == "compositional" and args.data is not None and not (args.data / "manifest.jsonl").is_file():
        problems.append(f"--data {args.data} has no manifest.jsonl (a relation set: data_prep.relation_set)")
    if args.benchmark == "compositional" and args.objects is not None:
        from data_prep.vocab import check_names

        try:
            check_names(args.objects)
        except ValueError as e:
            problems.append(f"--objects: {e}")
        if len(set(args.objects)) < 2:
            problems.append(f"--objects: a relation set needs at least 2 distinct objects, got {args.objects}")
    if problems:
        raise SystemExit("error: " + "\n  ".join(problems))
    progress = not args.no_progress
    import torch

    torch.manual_seed(args.seed)  # a --model without --pretrained is a random init: the same one for a seed
    adapter = adapter_factory(args)
    eval_set = None
    if rendered:
        size = args.image_size or model_image_size(adapter)
        eval_set = load_eval_set(args.data or default_eval_set(args.cache_dir, args.seed, size, progress))
    relation_set = None
    if args.benchmark == "compositional":
        from eval.eval_sets import relation_eval_set

        objects = args.objects or run_vocabulary(args.checkpoint)
        if args.data is None and objects is not None:
            print(f"relation set on {len(set(objects))} objects ({'--objects' if args.objects else 'the run'}'s: "
                  f"{', '.join(sorted(set(objects)))})")
        relation_set = args.data or relation_eval_set(args.cache_dir, args.seed,
                                                      args.image_size or model_image_size(adapter), progress,
                                                      objects=objects)
    t0 = time.perf_counter()
    prepared = prepare_benchmarks(adapter, config, eval_set, seed=args.seed, progress=progress,
                                  relation_set=relation_set)
    t1 = time.perf_counter()
    results = run_benchmarks(adapter, prepared)
    t2 = time.perf_counter()
    print(format_benchmarks(results))
    record = {"model": getattr(adapter, "name", None) or str(args.checkpoint or f"{args.model}:{args.pretrained}"),
              "config": asdict(config), "timing_s": {"prepare": round(t1 - t0, 3), "run": round(t2 - t1, 3)},
              "results": results}
    if eval_set is not None:
        record["eval_set"] = str(Path(eval_set.root).resolve())
    write_json_atomic(args.out, record)
    print(f"wrote {args.out}")
    return 0


def _flag_names(problem: str) -> str:
    """A BenchmarkConfig problem in this command line's words (``coco_images`` -> ``--images``, ...)."""
    for key, flag in (("coco_images", "--images"), ("coco_instances", "--instances"), ("coco_captions", "--captions"), ("coco_prompts", "--prompts"),
                      ("coco_ratio", "--ratio"), ("sugarcrepe_dir", "--dir"), ("sugarcrepe_images", "--images"),
                      ("zeroshot_folder", "--folder"), ("word_order_items", "--items"),
                      ("word_order_template", "--template"), ("min_items", "--min-items")):
        problem = problem.replace(key, flag)
    return problem


def format_benchmarks(results: dict[str, dict]) -> str:
    """One row per summary index: value, 95 % interval, denominator; then what was skipped."""
    lines: list[str] = []
    for probe, res in results.items():
        lines += ["", f"{probe}:"]
        for name, entry in summary_of(res).items():
            ci = entry.get("ci")
            signed = "bias" in name  # an index around 0; accuracies and shares are plain
            value = "n/a" if entry["value"] is None else f"{entry['value']:{'+' if signed else ''}.3f}"
            interval = f"[{ci[0]:{'+' if signed else ''}.3f}, {ci[1]:{'+' if signed else ''}.3f}]" if ci else ""
            lines.append(f"  {name:38} {value:>7} {interval:18} {entry['denominator']}")
        for part in (res, *(v for v in res.values() if isinstance(v, dict))):
            if part.get("skipped"):
                lines.append("  skipped: " + ", ".join(f"{k} {v}" for k, v in part["skipped"].items()))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_comco_parser(subparsers)
    add_benchmark_parsers(subparsers)
    report.add_subparser(subparsers)
    add_attention_parser(subparsers)
    return parser


#: subcommands whose optional ``--out`` is a results file, checked here before any work
#: (``comco`` checks it in :func:`validate_args`, ``report`` writes a folder and checks it itself)
_FILE_OUT_COMMANDS = ("attention",)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in _FILE_OUT_COMMANDS and (problems := output_problems(args)):
        raise SystemExit("error: " + "\n  ".join(problems))
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
