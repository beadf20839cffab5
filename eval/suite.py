"""Prepare a probe suite once, then run it cheaply many times (CLI, training callback).

:func:`prepare_suite` turns an eval set into fixed inputs — preprocessed image tensors, token
tensors of every distinct caption, and index tensors saying which embedding is which object in
which position/role. :func:`run_suite` then only encodes those inputs (batched, no_grad) and
calls the probe functions of :mod:`eval.probes`, so a periodic evaluation costs the encoder
forward passes plus a few matrix products.

``run_suite`` returns ``{probe: {n: result}}`` (the layout of ``eval.records.make_records``).
TOR results carry their other caption templates and the "split" text encoding under
``variants``; ITM and Claim-1 likewise for "split". Every TOR result (headline and template
variants) names its ``template`` and its ``template_split``: ``"held_out"`` if the training
corpus leaves that template out by default (``data_prep.captions.HELD_OUT_TEMPLATES``),
``"in_distribution"`` if it uses it, ``None`` for the "split" encoding.
"""
from __future__ import annotations

import math
import textwrap
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from data_prep.captions import TEMPLATES
from data_prep.checks import is_int, is_real, to_int
from eval import probes as P
from eval.manifest import EvalItem, EvalSet

TEXT_ENCODINGS = ("plain", "split")
LINEAR_METHODS = ("ridge", "logistic")
#: the paper's bare "A and B and C" form first (held out of the training corpus), then a natural
#: template the corpus uses ("photo", in-distribution) and one it holds out ("there_is")
DEFAULT_TEMPLATES = ("and_chain", "photo", "there_is")


def held_out_templates() -> tuple[str, ...] | None:
    """``data_prep.captions.HELD_OUT_TEMPLATES`` (templates the training corpus leaves out by
    default), or ``None`` where data_prep does not define it."""
    from data_prep import captions

    held = getattr(captions, "HELD_OUT_TEMPLATES", None)
    return tuple(held) if held is not None else None


def template_split(template: str) -> str | None:
    """``"held_out"`` or ``"in_distribution"`` for a caption template id (by
    :func:`held_out_templates`, i.e. the corpus default); ``None`` if unknown (no such list, or
    ``"split"``, which is an encoding, not a template)."""
    held = held_out_templates()
    if held is None or template == "split":
        return None
    return "held_out" if template in held else "in_distribution"


class Adapter(Protocol):
    """What the suite needs from a model (``eval.model_access.ClipAdapter`` provides it)."""

    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor: ...
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor: ...


def option(default: Any, help: str, *, choices: Sequence[str] | None = None, none: str | None = None) -> Any:
    """A :class:`SuiteConfig` field: its default and the one help text of the option.

    ``help`` says what the option is, the same words for every surface (``python -m eval comco``,
    ``BiasEvalCallback``, this class's docstring); ``choices`` are its valid names (the check and
    the help both list them); ``none`` says what ``None`` means, for an option that may be ``None``.
    Each surface adds its own spelling (flag, default, how ``None`` is written): :class:`SuiteOption`.
    """
    return field(default=default, metadata={"help": help, "choices": tuple(choices) if choices else None,
                                            "none": none})


@dataclass(frozen=True)
class SuiteConfig:
    """Which probes to run and how: the one definition of the probe options, their defaults, their
    help and their checks (``python -m eval comco`` and ``BiasEvalCallback`` derive theirs from it,
    through :func:`suite_options`).

    Built from loose values too (``probes="tor,ior"``, ``items_per_probe="8"``, lists for tuples);
    every bad option is named in one :class:`SuiteOptionError` (a ``ValueError``). What depends on
    the eval set (its n values, its vocabulary size) is checked by :func:`validate_config`.
    Each field is declared once with :func:`option` (default, help, choices); the ``Args:`` below
    are written from those declarations (:func:`options_doc`).
    """

    probes: tuple[str, ...] = option(P.PROBE_NAMES, "probes to run (any case)", choices=P.PROBE_NAMES)
    n_objects: tuple[int, ...] = option((2, 3, 4, 5), "objects per item to probe, each >= 2 and one the eval set holds")
    items_per_probe: int | None = option(
        256, "TOR/Claim-1 captions per n (rounded up to whole Latin-square blocks of the vocabulary size) and "
        "about this many multi-object images per n for IOR, I2TOR, IOC and ITM (rounded up to whole balanced "
        "blocks of every large-slot setting, see eval.suite.select_images); fewer = faster, wider intervals",
        none="one block, the vocabulary size: each object once in every position")
    templates: tuple[str, ...] = option(
        DEFAULT_TEMPLATES, "caption templates (data_prep.captions.TEMPLATES ids); the first is the headline "
        "TOR/TOC/ITM/Claim-1 template, the others are reported as TOR variants, each marked held-out or "
        "in-distribution for the training corpus", choices=tuple(TEMPLATES))
    gallery_template: str = option("{}", "text gallery prompt per object name, '{}' = the bare name")
    text_encodings: tuple[str, ...] = option(
        ("plain",), "caption encodings for TOR, ITM and Claim 1: plain and/or split (per-object caption "
        "splitting, eval.text_split.encode_split), plain being the headline when given", choices=TEXT_ENCODINGS)
    split_template: str = option("{}", "phrase per object in the split encoding, '{}' = the bare name")
    linear_items: int = option(1024, "captions per n for TOC (the same Latin-square construction), >= 4")
    linear_method: str = option("ridge", "TOC/IOC classifier: ridge (closed form) or logistic",
                                choices=LINEAR_METHODS)
    linear_steps: int = option(300, "full-batch optimisation steps of the logistic regressions")
    train_frac: float = option(0.7, "share of items the TOC/IOC classifiers train on, between 0 and 1; "
                               "the rest is held out")
    itm_distractors: int | None = option(
        4, "absent objects per image in ITM; each adds 2 captions per image and scenario, so this is the "
        "main cost knob of ITM", none="all of them (the paper's ITM)")
    seed: int = option(0, "seed of caption construction, subsets, ITM distractors and classifier splits (fixed, "
                       "so every evaluation sees the same items), and of the rendered default eval set")

    def __post_init__(self) -> None:
        """Normalise loose values (``"tor,ior"``, ``"8"``, ``8.0``, lists) or raise :class:`SuiteOptionError`."""
        values, problems = _check_options({f: getattr(self, f) for f in self.__dataclass_fields__})
        if problems:
            raise SuiteOptionError(problems)
        for key, value in values.items():
            object.__setattr__(self, key, value)


@dataclass(frozen=True)
class SuiteOption:
    """One probe option as declared in :class:`SuiteConfig` (:func:`suite_options`), with what a
    surface needs to offer it: its type split into list-or-not, item type and optional-or-not."""

    name: str
    #: the field's annotation, resolved: ``tuple[str, ...]``, ``int | None``, ``float``, ...
    type: Any
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    #: what ``None`` means, for an option that may be ``None``
    none: str | None = None

    @property
    def optional(self) -> bool:
        return type(None) in typing.get_args(self.type)

    @property
    def is_list(self) -> bool:
        return typing.get_origin(self._base) is tuple

    @property
    def item_type(self) -> type:
        """``int`` for ``tuple[int, ...]`` and for ``int | None``; the type itself otherwise."""
        base = self._base
        return typing.get_args(base)[0] if typing.get_origin(base) is tuple else base

    @property
    def _base(self) -> Any:
        args = [a for a in typing.get_args(self.type) if a is not type(None)]
        return args[0] if self.optional else self.type

    def describe(self, none_as: str | None = "null", spelling: str = "") -> str:
        """The help text, then ``spelling`` (how a surface writes the value, e.g. ``", comma-separated"``),
        the valid names, and what ``None`` (written ``none_as``; ``None``: the surface cannot say it)
        means: every surface's help of this option."""
        text = self.help + spelling
        if self.choices:
            text += f"; valid: {', '.join(self.choices)}"
        if self.none and none_as is not None:
            text += f"; {none_as} = {self.none}"
        return text


def suite_options() -> tuple[SuiteOption, ...]:
    """Every probe option of :class:`SuiteConfig`, in field order."""
    hints = typing.get_type_hints(SuiteConfig)
    return tuple(SuiteOption(f.name, hints[f.name], f.default, f.metadata["help"], f.metadata["choices"],
                             f.metadata["none"]) for f in fields(SuiteConfig))


def options_doc(names: Sequence[str] | None = None, none_as: str = "null", indent: str = "        ") -> str:
    """Google-style ``Args:`` entries (``name: help``, continuation lines indented once more) of the
    probe options ``names`` (default: all), for a docstring that docstring_parser reads (jsonargparse
    shows them as the options' help)."""
    chosen = {o.name: o for o in suite_options()}
    lines = []
    for name in names or chosen:
        lines += textwrap.wrap(f"{name}: {chosen[name].describe(none_as)}", 100, initial_indent=indent,
                               subsequent_indent=indent + "    ", break_on_hyphens=False)
    return "\n".join(lines)


SuiteConfig.__doc__ = f"{SuiteConfig.__doc__.rstrip()}\n\n    Args:\n{options_doc(none_as='None')}\n"


class SuiteOptionError(ValueError):
    """Every bad probe option at once; :meth:`messages` names each option as the caller calls it.

    ``problems`` holds ``(option, text)`` pairs, ``text`` continuing after the option's name, e.g.
    ``("items_per_probe", " must be an integer >= 1, got 0")``.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("invalid probe suite options: " + "; ".join(self.messages()))

    def messages(self, names: Mapping[str, str] | None = None) -> list[str]:
        """One line per problem, the option named ``names[option]`` (a flag, a config path) or as is."""
        names = names or {}
        return [f"{names.get(key, key)}{text}" for key, text in self.problems]


def check_int(value: Any, low: int, optional: bool = False, hint: str = "") -> tuple[int | None, str | None]:
    """``(value as int, None)`` or ``(None, " must be an integer >= low..., got ...")``.

    3, "3", 3.0 and numpy integers are integers; True, 2.5 and "x" are not; None passes if ``optional``.
    """
    if value is None and optional:
        return None, None
    number = to_int(value)
    if number is None or number < low:
        return None, f" must be an integer >= {low}{hint}, got {value!r}"
    return number, None


def _check_options(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The options normalised, and a problem per bad one (see :class:`SuiteOptionError`)."""
    out: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    choices = {f.name: f.metadata["choices"] for f in fields(SuiteConfig)}  # the declared valid names

    def names(key: str, lower: bool = False) -> None:
        value, valid = raw[key], choices[key]
        if isinstance(value, str):
            value = [x.strip() for x in value.split(",") if x.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
            problems.append((key, f" must be a list of names from {list(valid)}, got {raw[key]!r}"))
            return
        value = tuple(x.lower() for x in value) if lower else tuple(value)
        bad = [x for x in value if x not in valid]
        if bad or not value:
            problems.append((key, f": {'unknown ' + repr(bad) if bad else 'none given'}; valid: {', '.join(valid)}"))
        out[key] = value

    def integer(key: str, low: int, optional: bool = False, hint: str = "") -> None:
        value, problem = check_int(raw[key], low, optional, hint)
        if problem:
            problems.append((key, problem))
        out[key] = value

    names("probes", lower=True)
    n_objects = raw["n_objects"]
    n_objects = [n_objects] if isinstance(n_objects, int) else n_objects
    if (not isinstance(n_objects, (list, tuple)) or not n_objects
            or not all(is_int(n) and n >= 2 for n in n_objects)):
        problems.append(("n_objects", f" must be a list of integers >= 2 (objects per item), got {raw['n_objects']!r}"))
    else:
        out["n_objects"] = tuple(int(n) for n in n_objects)
    integer("items_per_probe", 1, optional=True)
    names("templates")
    names("text_encodings")
    for key in ("gallery_template", "split_template"):
        if not isinstance(raw[key], str) or "{}" not in raw[key]:
            problems.append((key, f" needs a '{{}}' for the object name, got {raw[key]!r}"))
    integer("linear_items", 4)
    if raw["linear_method"] not in choices["linear_method"]:
        problems.append(("linear_method", f": {raw['linear_method']!r}; valid: {', '.join(choices['linear_method'])}"))
    integer("linear_steps", 1)
    frac = raw["train_frac"]
    if not is_real(frac) or not 0 < frac < 1:
        problems.append(("train_frac", f" must be a number between 0 and 1, got {frac!r}"))
    integer("itm_distractors", 1, optional=True, hint=" or null (all)")
    integer("seed", 0)
    return {k: v for k, v in out.items() if k not in dict(problems)}, problems


@dataclass
class PreparedSuite:
    """Fixed inputs of a suite: token/image tensors and per-(probe, n) index tensors."""

    config: SuiteConfig
    vocabulary: list[str]
    texts: list[str]
    tokens: torch.Tensor
    images: torch.Tensor | None
    gallery_text: torch.Tensor  # [V] indices into texts
    gallery_images: torch.Tensor | None  # [V, S] 0/1 weights: singles of each vocabulary object
    tasks: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)

    def describe(self) -> dict:
        """JSON-able summary: config, vocabulary, input counts and counterbalance."""
        return {
            "config": asdict(self.config),
            "vocabulary": self.vocabulary,
            "n_texts": len(self.texts),
            "n_images": 0 if self.images is None else int(self.images.shape[0]),
            "balance": self.balance(),
            "template_split": {t: template_split(t) for t in self.config.templates},
        }

    def balance(self) -> dict[str, dict[str, list[int]]]:
        """Per TOR position / IOR role: [min, max] times a vocabulary object fills it.

        Equal numbers mean the probe is counterbalanced (position/role not confounded with object).
        """
        out = {}
        for probe, labels in (("tor", P.position_labels), ("ior", P.role_labels)):
            for n, task in self.tasks.get(probe, {}).items():
                counts = [torch.bincount(col, minlength=len(self.vocabulary)) for col in task["targets"].T]
                out[f"{probe}/n{n}"] = {lab: [int(c.min()), int(c.max())] for lab, c in zip(labels(n), counts)}
        return out


class _Table:
    """Distinct strings (or image paths) -> row index, so each input is encoded once."""

    def __init__(self) -> None:
        self.rows: dict[Any, int] = {}

    def add(self, keys: Sequence[Any]) -> torch.Tensor:
        return torch.tensor([self.rows.setdefault(k, len(self.rows)) for k in keys], dtype=torch.long)


def _caption_fn(template: str) -> Callable[[list[str]], str]:
    from data_prep.captions import make_caption  # SuiteConfig checked the template id

    return lambda names: make_caption(list(names), template)


def _default_size_classes(vocabulary: Sequence[str]) -> dict[str, str]:
    from data_prep.vocab import OBJECTS

    return {o: OBJECTS[o].size_class for o in vocabulary if o in OBJECTS}


def validate_config(config: SuiteConfig, eval_set: EvalSet) -> None:
    """Raise one ``ValueError`` naming every option this eval set cannot serve.

    The options themselves were checked when ``config`` was built (:class:`SuiteConfig`).
    """
    problems = []
    image_probes = {"ior", "i2tor", "ioc", "itm"} & set(config.probes)
    missing_n = [n for n in config.n_objects if n not in eval_set.n_values()]
    if image_probes and missing_n:
        problems.append(f"n_objects {missing_n} not in the eval set at {eval_set.root}; valid: {eval_set.n_values()}")
    too_many = [n for n in config.n_objects if n > len(eval_set.vocabulary)]
    if too_many:
        problems.append(f"n_objects {too_many} exceed the eval set's vocabulary of {len(eval_set.vocabulary)} objects")
    if problems:
        raise ValueError("invalid probe suite options:\n  " + "\n  ".join(problems))


def select_images(items: list[EvalItem], wanted: int, block: int) -> list[EvalItem]:
    """At least ``wanted`` items, in whole runs of ``block`` per setting, covering every setting.

    data_prep's eval sets are balanced per setting over each run of ``block`` (= vocabulary size)
    items: every object once in every slot, so once in the large role and n-1 times small. Whole
    runs keep that role balance; taking every setting (one per large slot) keeps the large
    object's spatial balance too, so ``wanted`` is rounded up to a multiple of block × settings.
    """
    by_setting: dict[str, list[EvalItem]] = {}
    for it in items:
        by_setting.setdefault(it.setting, []).append(it)
    groups = list(by_setting.values())
    per_round = block * len(groups)
    cap = math.ceil(wanted / per_round) * per_round
    out: list[EvalItem] = []
    for start in range(0, max(len(g) for g in groups), block):
        for g in groups:
            out.extend(g[start:start + block])
            if len(out) >= cap:
                return out
    return out


def prepare_suite(
    adapter: Adapter,
    eval_set: EvalSet,
    config: SuiteConfig | None = None,
    size_classes: Mapping[str, str] | None = None,
    progress: bool = True,
    **options: Any,
) -> PreparedSuite:
    """Build every caption, decode/preprocess every image and tokenise every caption once.

    Args:
        adapter: supplies ``preprocess`` and ``tokenizer`` (no forward pass happens here).
        eval_set: a validated eval set (``eval.manifest.load_eval_set``).
        config: suite options; keyword ``options`` override its fields
            (e.g. ``probes=("tor",), n_objects=(3,)``).
        size_classes: object -> "small"/"medium"/"large" for Claim 1; default
            ``data_prep.vocab.OBJECTS[name].size_class``.
        progress: show a tqdm bar while loading images.
    """
    config = config or SuiteConfig()
    if options:
        fields = set(SuiteConfig.__dataclass_fields__)
        unknown = sorted(set(options) - fields)
        if unknown:
            raise TypeError(f"unknown suite options {unknown}; valid: {sorted(fields)}")
        config = replace(config, **options)
    validate_config(config, eval_set)
    vocab = eval_set.vocabulary
    items = config.items_per_probe or len(vocab)  # None: one Latin-square block of the vocabulary
    col = {o: i for i, o in enumerate(vocab)}
    texts, images = _Table(), _Table()
    caption = {t: _caption_fn(t) for t in config.templates}
    headline = caption[config.templates[0]]
    tasks: dict[str, dict[int, dict[str, Any]]] = {p: {} for p in config.probes}

    def targets(lists: Sequence[Sequence[str]]) -> torch.Tensor:
        return torch.tensor([[col[o] for o in lst] for lst in lists], dtype=torch.long)

    def text_set(lists: list[list[str]], fn: Callable = headline) -> dict[str, Any]:
        return {"lists": lists, "targets": targets(lists), "text": texts.add([fn(x) for x in lists])}

    gallery_text = texts.add([config.gallery_template.format(o) for o in vocab])
    need_images = bool({"ior", "i2tor", "ioc", "itm"} & set(config.probes))
    if "claim1" in config.probes and size_classes is None:
        size_classes = _default_size_classes(vocab)
    for n in config.n_objects:
        seed = config.seed + 1000 * n
        if "tor" in config.probes:
            lists = P.latin_square_lists(vocab, n, items, seed)
            tasks["tor"][n] = {
                "lists": lists,
                "targets": targets(lists),
                "variants": {t: texts.add([caption[t](x) for x in lists]) for t in config.templates},
            }
        if "toc" in config.probes:
            tasks["toc"][n] = text_set(P.latin_square_lists(vocab, n, config.linear_items, seed + 1))
        if "claim1" in config.probes:
            pairs = P.claim1_lists(vocab, size_classes or {}, n, items, seed + 2)
            tasks["claim1"][n] = {k: text_set(v) for k, v in pairs.items()}
        if need_images:
            chosen = select_images([it for it in eval_set.multi(n) if it.large is not None],
                                   items, len(vocab))
            if not chosen:
                raise ValueError(f"eval set {eval_set.root} has no n={n} images with a large object")
            by_role = [it.by_role() for it in chosen]
            img = {"image": images.add([it.path for it in chosen]), "targets": targets(by_role)}
            for probe in ("ior", "i2tor", "ioc"):
                if probe in config.probes:
                    tasks[probe][n] = img
            if "itm" in config.probes:
                scen = P.itm_lists(by_role, vocab, config.itm_distractors, seed + 3)
                tasks["itm"][n] = {
                    s: {"image": img["image"][torch.tensor(idx)], "correct": text_set(c), "wrong": text_set(w)}
                    for s, (idx, c, w) in scen.items()
                }
    gallery_images = None
    if "ior" in config.probes:  # only IOR's gallery is made of single-object images
        singles = eval_set.singles()
        single_rows = images.add([it.path for it in singles])
        gallery_images = torch.zeros(len(vocab), len(images.rows))
        gallery_images[torch.tensor([col[it.objects[0]] for it in singles]), single_rows] = 1.0
    text_list = list(texts.rows)
    image_paths = list(images.rows)
    image_tensor = None
    if image_paths:
        image_tensor = torch.stack(
            [adapter.preprocess(_open(p)) for p in tqdm(image_paths, desc="eval images", disable=not progress)]
        )
    return PreparedSuite(
        config=config,
        vocabulary=list(vocab),
        texts=text_list,
        tokens=adapter.tokenizer(text_list),
        images=image_tensor,
        gallery_text=gallery_text,
        gallery_images=gallery_images,
        tasks={p: t for p, t in tasks.items() if t},
    )


def _open(path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def run_suite(adapter: Adapter, prepared: PreparedSuite) -> dict[str, dict[int, dict]]:
    """Encode the prepared inputs (batched, no_grad) and run every probe.

    The caller chooses train/eval mode (the callback switches to eval and back). Returns
    ``{probe: {n: result}}``.
    """
    cfg = prepared.config
    with torch.no_grad():
        text = F.normalize(adapter.encode_text(prepared.tokens).float(), dim=-1)
        image = None
        if prepared.images is not None:
            image = F.normalize(adapter.encode_image(prepared.images).float(), dim=-1)
    names = text[prepared.gallery_text.to(text.device)]
    singles = None
    if prepared.gallery_images is not None:
        # average the single-object images of each vocabulary object
        singles = F.normalize(prepared.gallery_images.to(image.device) @ image, dim=-1)
    split = "split" in cfg.text_encodings
    plain = "plain" in cfg.text_encodings
    out: dict[str, dict[int, dict]] = {}
    headline = cfg.templates[0]
    linear_kw = {"train_frac": cfg.train_frac, "seed": cfg.seed, "method": cfg.linear_method,
                 "steps": cfg.linear_steps}

    def emb(rows: torch.Tensor) -> torch.Tensor:
        return text[rows.to(text.device)]

    def split_emb(lists: list[list[str]]) -> torch.Tensor:
        from eval.text_split import encode_split  # lazy: optional mitigation module

        return encode_split(adapter, lists, cfg.split_template).to(text.device)

    for probe, per_n in prepared.tasks.items():
        out[probe] = {}
        for n, task in per_n.items():
            if probe == "tor":
                res = {t: {**P.tor(emb(rows), names, task["targets"]), "template": t, "template_split": template_split(t)}
                       for t, rows in task["variants"].items()}
                main = res.pop(headline) if plain else None
                if split:
                    res["split"] = {**P.tor(split_emb(task["lists"]), names, task["targets"]),
                                    "template": "split", "template_split": None}
                if main is None:
                    main = res.pop("split")
                main = dict(main)
                if res:
                    main["variants"] = res
                out[probe][n] = main
            elif probe == "toc":
                out[probe][n] = P.toc(emb(task["text"]), task["targets"], len(prepared.vocabulary),
                                      **linear_kw)
            elif probe in ("ior", "i2tor", "ioc"):
                q = image[task["image"].to(image.device)]
                if probe == "ior":
                    out[probe][n] = P.ior(q, singles, task["targets"])
                elif probe == "i2tor":
                    out[probe][n] = P.i2tor(q, names, task["targets"])
                else:
                    out[probe][n] = P.ioc(q, task["targets"], len(prepared.vocabulary),
                                          **linear_kw)
            elif probe == "itm":
                out[probe][n] = _encodings(
                    plain, split, lambda enc: P.itm(*(
                        P.itm_accuracy(image[task[s]["image"].to(image.device)],
                                       enc(task[s]["correct"]), enc(task[s]["wrong"]))
                        for s in ("s1", "s2"))),
                    lambda ts: emb(ts["text"]), lambda ts: split_emb(ts["lists"]))
            elif probe == "claim1":
                out[probe][n] = _encodings(
                    plain, split, lambda enc: P.claim1(*(
                        P.tor(enc(task[g]), names, task[g]["targets"]) for g in ("large_first", "small_first"))),
                    lambda ts: emb(ts["text"]), lambda ts: split_emb(ts["lists"]))
    return out


def _encodings(plain: bool, split: bool, probe: Callable, plain_enc: Callable, split_enc: Callable) -> dict:
    """Run ``probe(encoder)`` with the plain encoding (headline) and/or split (as a variant)."""
    main = probe(plain_enc) if plain else probe(split_enc)
    main["text_encoding"] = "plain" if plain else "split"
    if plain and split:
        main["variants"] = {"split": probe(split_enc)}
    return main
