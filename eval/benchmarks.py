"""The probes beyond the paper's, run beside them during training: zero-shot classification,
the word-order probe, SugarCrepe and the size/order biases on a COCO-format dataset.

:class:`BenchmarkConfig` declares which run and on what data (the training callback's arguments
of the same names); :func:`prepare_benchmarks` decodes and tokenises their inputs once,
:func:`run_benchmarks` encodes and scores them: ``{probe: result}``, each result with its
``summary`` (``eval.records`` writes them as records with ``n_objects: null``). Probe names and
the prefix of their logged scalars (:data:`eval.records.BENCHMARK_PREFIX`):

=================== ======================== =================================================
probe               scalars                  data
=================== ======================== =================================================
``zeroshot``        ``zeroshot/rendered/*``  the eval set's single-object images, classes = its vocabulary
``zeroshot_folder`` ``zeroshot/folder/*``    ``zeroshot_folder`` (class-per-folder images)
``word_order``      ``word_order/rendered/*`` the eval set's multi-object images, captions in the corpus's template
``word_order_coco`` ``word_order/coco/*``    ``coco_images`` + ``coco_captions``
``sugarcrepe``      ``sugarcrepe/*``         ``sugarcrepe_dir`` + ``sugarcrepe_images``
``coco_bias``       ``coco_bias/*``          ``coco_images`` + ``coco_instances`` (+ ``coco_captions``)
``compositional``   ``compositional/*``      the rendered two-object relation set (``data_prep.relation_set``)
=================== ======================== =================================================
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from eval import coco_bias, sugarcrepe, word_order, zeroshot
from eval.stats import MIN_ITEMS

#: the W&B prefixes of these scalars (each plotted against ``samples_seen``)
METRIC_GLOBS = ("zeroshot/*", "word_order/*", "sugarcrepe/*", "coco_bias/*", "compositional/*")


@dataclass(frozen=True)
class BenchmarkConfig:
    """Which of the probes beyond the paper's run, and on what.

    Args:
        zeroshot: zero-shot top-1/top-5 over the eval set's single-object images (every object,
            prompt templates averaged).
        zeroshot_folder: a class-per-folder image directory (ROOT/<class>/<image>, e.g. an ImageNet
            validation folder) for zero-shot top-1/top-5; null = none.
        word_order: the word-order probe on the eval set's multi-object images (and on coco_captions
            when given).
        word_order_items: multi-object images (spread evenly over n) for the word-order probe.
        word_order_template: the caption template of the word-order probe's rendered captions
            (data_prep.captions.TEMPLATES id; "photo" is one the training corpus uses).
        sugarcrepe_dir: folder of SugarCrepe's official JSON files; null = none.
        sugarcrepe_images: the COCO val2017 image folder SugarCrepe's file names point into.
        coco_images: a COCO-format image folder for the real-photo bias probes (and the word-order probe
            on its captions); null = none.
        coco_instances: its instances JSON (boxes).
        coco_captions: its captions JSON (the text-side order bias and the word-order probe).
        coco_prompts: a JSON object {category: prompt} for the COCO gallery; null = "a photo of a {}." per
            category. A category it lacks is left out and its items are skipped, counted and named.
        coco_ratio: an image enters the size-bias probe when its largest instance is at least this many
            times the area of the next category's.
        compositional: the in-world compositional probes (swap_obj, replace_rel, swap_att; replace_axis as a
            control) on the rendered two-object relation set, for corpora with relation or attribute captions.
        min_items: fewest items behind any of these numbers; below it a value reads n/a (N = k).
    """

    zeroshot: bool = True
    zeroshot_folder: str | None = None
    word_order: bool = True
    word_order_items: int = 128
    word_order_template: str = "photo"
    sugarcrepe_dir: str | None = None
    sugarcrepe_images: str | None = None
    coco_images: str | None = None
    coco_instances: str | None = None
    coco_captions: str | None = None
    coco_prompts: str | None = None
    coco_ratio: float = coco_bias.DEFAULT_RATIO
    compositional: bool = False
    min_items: int = MIN_ITEMS

    def problems(self) -> list[str]:
        """Every bad argument, each named, found before any model is loaded."""
        from data_prep.captions import TEMPLATES
        from data_prep.checks import int_problem, real_problem

        errs = []
        for key in ("zeroshot", "word_order", "compositional"):
            if not isinstance(getattr(self, key), bool):
                errs.append(f"{key} must be true or false, got {getattr(self, key)!r}")
        for key in ("word_order_items", "min_items"):
            if problem := int_problem(key, getattr(self, key), 1):
                errs.append(problem)
        if self.word_order_template not in TEMPLATES:
            errs.append(f"word_order_template: unknown {self.word_order_template!r}; valid: {', '.join(TEMPLATES)}")
        if self.zeroshot_folder is not None and (problem := zeroshot.folder_problem(self.zeroshot_folder)):
            errs.append(f"zeroshot_folder: {problem}")
        if (self.sugarcrepe_dir is None) != (self.sugarcrepe_images is None):
            errs.append("sugarcrepe_dir and sugarcrepe_images go together (the JSON folder and the COCO val2017 images)")
        elif self.sugarcrepe_dir is not None and (
                problem := sugarcrepe.inputs_problem(self.sugarcrepe_dir, self.sugarcrepe_images)):
            errs.append(f"sugarcrepe_dir: {problem}")
        if problem := real_problem("coco_ratio", self.coco_ratio, 1.0):
            errs.append(problem)
        coco = (self.coco_images, self.coco_instances)
        if any(x is not None for x in (*coco, self.coco_captions)):
            if None in coco:
                errs.append("coco_images and coco_instances go together (coco_captions adds the text side)")
            else:
                errs += [p.replace("--", "coco_", 1) for p in coco_bias.inputs_problems(
                    self.coco_images, [self.coco_instances], [self.coco_captions] if self.coco_captions else [],
                    self.coco_prompts)]
                if self.coco_prompts is not None and Path(self.coco_prompts).is_file():
                    try:
                        coco_bias.read_prompts(self.coco_prompts)
                    except ValueError as e:
                        errs.append(f"coco_prompts: {e}")
        return errs

    @property
    def active(self) -> tuple[str, ...]:
        """The probe names this config runs."""
        on = {"zeroshot": self.zeroshot, "zeroshot_folder": self.zeroshot_folder is not None,
              "word_order": self.word_order, "word_order_coco": bool(self.word_order and self.coco_images and self.coco_captions),
              "sugarcrepe": self.sugarcrepe_dir is not None, "coco_bias": self.coco_images is not None,
              "compositional": self.compositional}
        return tuple(k for k, v in on.items() if v)


@dataclass
class PreparedBenchmarks:
    config: BenchmarkConfig
    parts: dict[str, Any] = field(default_factory=dict)


def _rendered_word_order_pairs(eval_set: Any, n_values: tuple[int, ...], items: int, template: str,
                               seed: int) -> list[tuple[Path, str]]:
    """``items`` multi-object images spread evenly over ``n_values``, each captioned with its
    objects in a seeded random order (so the caption's order says nothing about sizes)."""
    from data_prep.captions import make_caption

    rng = random.Random(seed)
    per_n = -(-items // max(1, len(n_values)))
    pairs = []
    for n in n_values:
        pool = list(eval_set.multi(n))
        rng.shuffle(pool)
        for it in pool[:per_n]:
            names = list(it.objects)
            rng.shuffle(names)
            pairs.append((it.path, make_caption(names, template)))
    return pairs[:items]


def _word_order_part(adapter: Any, pairs: list[tuple[Path, str]], seed: int, progress: bool) -> dict:
    items = word_order.build_items(pairs, seed=seed)
    tensor, kept, bad = zeroshot.load_images(adapter, items.image_keys, progress)
    skipped = dict(items.skipped, **({"unreadable image": bad} if bad else {}))
    return {"items": items, "images": tensor, "kept": kept, "skipped": skipped,
            "tokens": adapter.tokenizer(items.texts) if items.texts else None}


def prepare_benchmarks(adapter: Any, config: BenchmarkConfig, eval_set: Any = None,
                       n_values: tuple[int, ...] = (2, 3, 4, 5), seed: int = 0,
                       progress: bool = False, relation_set: str | Path | None = None) -> PreparedBenchmarks:
    """Decode and tokenise every active probe's inputs once (``eval_set`` for the rendered ones,
    ``relation_set`` for the compositional probes)."""
    out = PreparedBenchmarks(config)
    active = config.active
    if "compositional" in active:
        if relation_set is None:
            raise ValueError("the compositional probes need the relation set (eval.eval_sets.relation_eval_set)")
        from eval import compositional

        out.parts["compositional"] = compositional.prepare(adapter, relation_set, progress=progress)
    if eval_set is not None and "zeroshot" in active:
        singles = eval_set.singles()
        names = list(eval_set.vocabulary)
        folder = zeroshot.FolderSet(Path(eval_set.root), [it.path for it in singles],
                                    [names.index(it.objects[0]) for it in singles], names)
        out.parts["zeroshot"] = zeroshot.prepare_folder(adapter, folder, progress)
    if "zeroshot_folder" in active:
        out.parts["zeroshot_folder"] = zeroshot.prepare_folder(adapter, zeroshot.load_folder(config.zeroshot_folder),
                                                               progress)
    if eval_set is not None and "word_order" in active:
        pairs = _rendered_word_order_pairs(eval_set, tuple(n for n in n_values if eval_set.multi(n)),
                                           config.word_order_items, config.word_order_template, seed)
        out.parts["word_order"] = _word_order_part(adapter, pairs, seed, progress)
    if "coco_bias" in active or "word_order_coco" in active:
        captions = [config.coco_captions] if config.coco_captions else []
        prompts = coco_bias.read_prompts(config.coco_prompts) if config.coco_prompts else None
        items = coco_bias.load_items(config.coco_images, [config.coco_instances], captions, config.coco_ratio,
                                     prompts=prompts)
        out.parts["coco_bias"] = coco_bias.prepare(adapter, items, progress)
        if "word_order_coco" in active:
            from data_prep.coco import find_image, load_coco

            imgs, _, caps = load_coco([], captions)
            pairs = []
            for image_id in sorted(caps):
                path = find_image([Path(config.coco_images)], imgs[image_id]["file_name"]) if image_id in imgs else None
                if path is not None:
                    pairs += [(path, c["caption"]) for c in caps[image_id]]
            out.parts["word_order_coco"] = _word_order_part(adapter, pairs, seed, progress)
    if "sugarcrepe" in active:
        data = sugarcrepe.load(config.sugarcrepe_dir, config.sugarcrepe_images)
        out.parts["sugarcrepe"] = sugarcrepe.prepare(adapter, data, progress)
    return out


def _run_word_order(adapter: Any, part: dict, min_items: int) -> dict:
    items, kept = part["items"], part["kept"]
    k = len(items.kinds)
    if not kept:
        empty = torch.zeros(0, 1)
        return word_order.score(empty, empty, torch.zeros(0, k, 1), items.kinds, min_items, part["skipped"])
    text = adapter.encode_text(part["tokens"])
    image = adapter.encode_image(part["images"])
    true = text[torch.tensor([items.true_rows[i] for i in kept])]
    pert = text[torch.tensor([items.perturbed_rows[i] for i in kept])]
    return word_order.score(image, true, pert, items.kinds, min_items, part["skipped"])


def run_benchmarks(adapter: Any, prepared: PreparedBenchmarks) -> dict[str, dict]:
    """Encode and score every prepared probe: ``{probe: result}``."""
    cfg, out = prepared.config, {}
    for name, part in prepared.parts.items():
        if name in ("zeroshot", "zeroshot_folder"):
            out[name] = zeroshot.run_prepared(adapter, part, min_items=cfg.min_items)
        elif name in ("word_order", "word_order_coco"):
            out[name] = _run_word_order(adapter, part, cfg.min_items)
        elif name == "coco_bias":
            out[name] = coco_bias.run(adapter, part, cfg.min_items)
        elif name == "sugarcrepe":
            out[name] = sugarcrepe.run(adapter, part, cfg.min_items)
        elif name == "compositional":
            from eval import compositional

            out[name] = compositional.run(adapter, part, cfg.min_items)
    return out
