"""Rendered training corpus with a caption-order knob (``python -m data_prep synth``).

Each sample: 2-4 OpenMoji objects at random non-overlapping places; the caption names them
largest-first (by visible area) with probability ``p_large_first``, otherwise in a random
order whose first object is *not* the largest. So the share of captions whose first-mentioned
object is the largest is exactly ``p_large_first`` in expectation, whatever each sample's n.
A uniformly random order would put the largest first with probability 1/n, and n varies per
sample (``min_objects``..``max_objects``), so no single ``p_large_first`` gives an unbiased
order for the whole corpus: ``1/3`` is uniform for 3-object samples but favours the largest
object in 4-object ones and disfavours it in 2-object ones.

Every sample draws from its own RNG seeded by ``(seed, index)``, so output bytes do not depend
on the number of workers. The knobs, their defaults and rules are declared once, in
:class:`data_prep.corpus_spec.CorpusSpec`.
"""
from __future__ import annotations

import dataclasses
import math
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from .captions import TEMPLATES, make_caption, training_templates
from .relations import rebuild_caption, relation_of, size_words
from .checks import int_problem
from .corpus_spec import CorpusSpec, cli_flag
from .render import render_scene, size_for_area
from .fileio import write_json_atomic
from .shards import encode_jpeg, prepare_out_dir, sample_key, shard_name, write_meta, write_tar_atomic
from .vocab import list_objects

#: opaque area as a fraction of the image: (low, high)
LARGE_RANGE = (0.10, 0.18)
SMALL_RANGE = (0.015, 0.04)
MIXED_RANGE = (0.015, 0.18)


def caption_mention_order(areas: Sequence[int], p_large_first: float,
                          rng: np.random.Generator) -> tuple[list[int], bool]:
    """Order in which a rendered caption mentions its objects (indices into ``areas``), and
    whether it is largest-first. (Not ``caption_order``: that is the Fig. 4b analysis module.)

    With probability ``p_large_first``: decreasing area (ties by index). Otherwise a uniformly
    random permutation among those whose first element is not the largest object.
    """
    n = len(areas)
    by_size = sorted(range(n), key=lambda i: (-areas[i], i))
    if n == 1 or rng.random() < p_large_first:
        return by_size, True
    largest = by_size[0]
    first = int(rng.choice([i for i in range(n) if i != largest]))
    rest = [i for i in range(n) if i != first]
    rest = [rest[j] for j in rng.permutation(len(rest))]
    return [first] + rest, False


def caption_kind(spec: CorpusSpec, rng: np.random.Generator) -> str:
    """``"relation"`` with probability ``relation_share``, ``"attribute"`` with ``attribute_share``, else
    ``"list"``; one draw from ``rng`` only when a share is above 0."""
    if not (spec.relation_share or spec.attribute_share):
        return "list"
    u = rng.random()
    if u < spec.relation_share:
        return "relation"
    return "attribute" if u < spec.relation_share + spec.attribute_share else "list"


def make_sample(index: int, spec: CorpusSpec, key: str,
                objects: Sequence[str] | None = None) -> tuple[str, bytes, str, dict]:
    """Render sample ``index`` of the corpus ``spec``: ``(key, jpg bytes, caption, json dict)``.

    Depends only on ``index``, ``spec``'s knobs (not ``num_samples`` or ``shard_size``) and ``objects``
    (the vocabulary; ``None``: all objects).
    """
    seed, image_size, size_mode = spec.seed, spec.image_size, spec.size_mode
    rng = np.random.default_rng([seed, index])
    names = sorted(objects) if objects is not None else list_objects()
    n = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    chosen = [names[i] for i in rng.choice(len(names), size=n, replace=False)]
    if size_mode == "one_large":
        sizes = [rng.uniform(*LARGE_RANGE)] + list(rng.uniform(*SMALL_RANGE, size=n - 1))
    else:
        sizes = list(rng.uniform(*MIXED_RANGE, size=n))
    sizes = [size_for_area(nm, float(z), image_size, max_side=0.8) for nm, z in zip(chosen, sizes)]
    scene_seed = int(rng.integers(2**31))
    image, truth = render_scene(chosen, sizes, "random", image_size, "random", seed=scene_seed)
    order, large_first = caption_mention_order([t["area"] for t in truth], spec.p_large_first, rng)
    templates = training_templates(spec.held_out_templates)
    template = templates[int(rng.integers(len(templates)))]
    kind = caption_kind(spec, rng)  # draws nothing when both shares are 0: older corpora keep their bytes
    extra: dict = {}
    if kind != "list" and n >= 2:
        a, b = truth[order[0]], truth[order[1]]
        if kind == "relation" and (rel := relation_of(a["bbox"], b["bbox"], image_size)) is not None:
            extra = {"caption_kind": "relation", "relation": rel}
        elif kind == "attribute" and (words := size_words(a["area"], b["area"])) is not None:
            extra = {"caption_kind": "attribute", "size_words": list(words)}
    if extra:
        order = order[:2]
        caption = rebuild_caption({"template": template, **extra}, [chosen[i] for i in order])
    else:
        caption = make_caption([chosen[i] for i in order], template)
    mention = {obj: pos for pos, obj in enumerate(order)}
    drawing = sorted(range(n), key=lambda i: truth[i]["draw_index"])
    boxes = [{"name": truth[i]["name"], "bbox": truth[i]["bbox"], "area": truth[i]["area"],
              "mention_index": mention.get(i)} for i in drawing]
    meta = {"key": key, "caption": caption, "url": None, "width": image_size, "height": image_size,
            "original_width": image_size, "original_height": image_size, "status": "success",
            "error_message": None, "template": template, "objects": boxes, "large_first": large_first, **extra}
    return key, encode_jpeg(image), caption, meta


def _write_shard(out_dir: str, shard: int, start: int, stop: int, shard_size: int, kw: dict) -> int:
    samples = (make_sample(i, key=sample_key(shard, i - start, shard_size), **kw) for i in range(start, stop))
    return write_tar_atomic(Path(out_dir) / shard_name(shard), samples)


def write_corpus(out_dir, num_samples: int | None = None, *, spec: CorpusSpec | None = None,
                 overwrite: bool = False, progress: bool = True, workers: int = 1,
                 objects: Sequence[str] | None = None, desc: str = "rendering corpus", **knobs: Any) -> dict:
    """Write the rendered corpus as img2dataset-style shards + ``sizes.json`` + ``meta.json``.

    The corpus is ``spec`` (a :class:`~data_prep.corpus_spec.CorpusSpec`), or the knobs given as keywords
    (``num_samples``, ``seed``, ``p_large_first``, ...: its fields, with its defaults); knobs given
    beside ``spec`` replace its values. Every problem with them raises one ``ValueError`` naming the
    ``python -m data_prep synth`` flags, before any file is touched.

    Args:
        out_dir: output directory (must be empty unless ``overwrite``).
        num_samples: number of images (a knob, positional for short calls).
        spec: all the knobs at once.
        overwrite: in a non-empty ``out_dir``, delete the files a previous data_prep run recorded
            writing there (its ``meta.json``) instead of refusing; other files are left alone (a
            warning names them), and one that a new shard would replace makes it refuse.
        progress: show a tqdm bar (labelled ``desc``).
        workers: processes rendering whole shards in parallel (output bytes are the same).
        objects: restrict the vocabulary to these names (default: all of ``vocab.OBJECTS``).
        **knobs: the other fields of ``CorpusSpec``.
    Returns:
        the meta dict written to ``meta.json``.
    """
    if num_samples is not None:
        knobs["num_samples"] = num_samples
    if spec is not None:  # a subclass (train.data.SyntheticCorpus) too: keep only the knobs
        knobs = {f.name: getattr(spec, f.name) for f in dataclasses.fields(CorpusSpec)} | knobs
    spec = CorpusSpec(**knobs)
    errs = spec.problems(cli_flag, objects=objects)
    if problem := int_problem("--workers", workers, 1):
        errs.append(problem)
    if errs:
        raise ValueError("; ".join(errs))
    spec = dataclasses.replace(spec, held_out_templates=list(spec.held_out_templates))
    objects = sorted(objects) if objects is not None else None
    num_samples, shard_size = spec.num_samples, spec.shard_size
    n_shards = math.ceil(num_samples / shard_size)
    files = [shard_name(s) for s in range(n_shards)] + ["sizes.json", "meta.json"]
    out = prepare_out_dir(Path(out_dir), overwrite, planned=files)
    kw = dict(spec=spec, objects=objects)
    meta = {"kind": "synth", "num_samples": num_samples, "num_shards": n_shards, "seed": spec.seed,
            "image_size": spec.image_size, "min_objects": spec.min_objects, "max_objects": spec.max_objects,
            "size_mode": spec.size_mode, "p_large_first": spec.p_large_first, "objects": objects,
            "relation_share": spec.relation_share, "attribute_share": spec.attribute_share,
            "held_out_templates": spec.held_out_templates, "shard_size": shard_size,
            "templates": {t: TEMPLATES[t] for t in training_templates(spec.held_out_templates)},
            "vocabulary": objects or list_objects(),
            "size_ranges": {"large": LARGE_RANGE, "small": SMALL_RANGE, "mixed": MIXED_RANGE},
            "caption_order_rule": "largest-first (by visible area) with p_large_first, else random order "
                                  "whose first object is not the largest",
            "files": files}
    # meta.json first: it records every file this run writes, so that after an interruption (error,
    # Ctrl-C, or a kill -9/OOM/power loss) `--overwrite` can remove the partial corpus, and only ours.
    # It stays on failure; only complete shards remain beside it, as a shard is whole or absent.
    # sizes.json last: its presence marks a whole corpus.
    meta = write_meta(out, meta)
    jobs = [(s, s * shard_size, min((s + 1) * shard_size, num_samples)) for s in range(n_shards)]
    sizes: dict[str, int] = {}
    bar = tqdm(total=num_samples, desc=desc, unit="img", disable=not progress)
    if workers == 1:
        for shard, start, stop in jobs:
            def counted(shard=shard, start=start, stop=stop):
                for i in range(start, stop):
                    yield make_sample(i, key=sample_key(shard, i - start, shard_size), **kw)
                    bar.update(1)
            sizes[shard_name(shard)] = write_tar_atomic(out / shard_name(shard), counted())
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futs = {pool.submit(_write_shard, str(out), s, a, b, shard_size, kw): s for s, a, b in jobs}
            for fut, shard in futs.items():
                sizes[shard_name(shard)] = fut.result()
                bar.update(sizes[shard_name(shard)])
    bar.close()
    write_json_atomic(out / "sizes.json", sizes)
    return meta
