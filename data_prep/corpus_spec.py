"""The rendered training corpus's knobs, declared once: :class:`CorpusSpec`.

Each knob is one dataclass field with its type, default, help text and bounds (:func:`knob`). Both
command lines are derived from it: ``python -m data_prep synth`` makes one flag per field
(``p_large_first`` -> ``--p-large-first``, see ``data_prep.cli``), and training's ``data.synthetic``
config is a subclass (``train.data.SyntheticCorpus``), so its keys are the field names
(``data.synthetic.p_large_first``) and jsonargparse documents them from the class docstring, whose
``Args:`` section :func:`document_fields` writes from the same help texts. :meth:`CorpusSpec.problems`
holds every rule and names each field the way its caller's interface does.
"""
from __future__ import annotations

import dataclasses
import textwrap
import types
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, Union, get_args, get_origin, get_type_hints

from .captions import HELD_OUT_TEMPLATES, TEMPLATES, training_templates
from .checks import int_problem, is_int, real_problem
from .vocab import check_names, list_objects

SIZE_MODES = ("one_large", "mixed")


def cli_flag(name: str) -> str:
    """A field's ``data_prep`` flag: ``p_large_first`` -> ``--p-large-first``."""
    return "--" + name.replace("_", "-")


def knob(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
         min: float | None = None, max: float | None = None, choices: Sequence[str] | None = None,
         metavar: str | None = None) -> Any:
    """A :class:`CorpusSpec` field: its default (or ``factory``; neither: required), one help text,
    and the bounds/choices :meth:`CorpusSpec.problems` enforces (``metavar``: the CLI's placeholder)."""
    meta = {"help": help, "min": min, "max": max, "choices": tuple(choices) if choices else None,
            "metavar": metavar}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def with_default(cls: type, name: str, default: Any) -> Any:
    """Field ``name`` of dataclass ``cls`` as it is (help, bounds) but with another default, for a subclass."""
    base = {f.name: f for f in dataclasses.fields(cls)}[name]
    return dataclasses.field(default=default, metadata=base.metadata)


def field_default(f: dataclasses.Field) -> Any:
    """A field's default value (a fresh one from its factory); ``dataclasses.MISSING`` if it is required."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


@lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """Field name -> its type (resolved, whatever ``from __future__ import annotations`` left as text)."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def document_fields(cls: type) -> type:
    """Class decorator: append an ``Args:`` section built from the fields' help texts to ``cls``'s docstring,
    where jsonargparse (``--help``) and ``help()`` read them."""
    lines = ["", "", "    Args:"]
    for f in dataclasses.fields(cls):
        lines.extend(textwrap.wrap(f"{f.name}: {f.metadata.get('help', '')}", 100, initial_indent=" " * 8,
                                   subsequent_indent=" " * 12, break_on_hyphens=False))
    cls.__doc__ = (cls.__doc__ or cls.__name__).rstrip() + "\n".join(lines) + "\n"
    return cls


def optional_of(kind: Any) -> Any | None:
    """``X`` for a field typed ``X | None``, else None."""
    if get_origin(kind) in (Union, types.UnionType):
        rest = [a for a in get_args(kind) if a is not type(None)]
        if len(rest) == 1 and len(get_args(kind)) == 2:
            return rest[0]
    return None


def _is_str_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


@document_fields
@dataclasses.dataclass
class CorpusSpec:
    """What a rendered corpus is: every knob that decides its bytes (``data_prep.synth.write_corpus``).

    Sample i depends only on ``(seed, i)`` and these knobs, not on how many processes render it.
    """

    num_samples: int = knob(help="Number of images to render.", min=1)
    seed: int = knob(0, "Corpus seed: sample i depends only on (seed, i) and the other knobs.", min=0)
    image_size: int = knob(64, "Image side in pixels.", min=16)
    min_objects: int = knob(2, "Fewest objects per image.", min=1)
    max_objects: int = knob(4, "Most objects per image (at most the number of objects in the vocabulary).")
    size_mode: str = knob("one_large", "one_large: one large object and smaller ones; mixed: all sizes drawn "
                                       "alike.", choices=SIZE_MODES)
    p_large_first: float = knob(
        0.9, "Probability that a caption names its objects largest-first (the bias knob); otherwise a random "
             "order whose first object is not the largest. A uniform order (1/n) is unbiased only for "
             "samples with n objects, and n varies per sample.", min=0.0, max=1.0)
    relation_share: float = knob(
        0.0, "Share of captions that state a spatial relation between the first two named objects (\"a cat to "
             "the left of a dog\", decided from the box centres; a pair without a clear relation keeps the list "
             "caption), so word order carries meaning.", min=0.0, max=1.0)
    attribute_share: float = knob(
        0.0, "Share of captions that give the first two named objects their size words (\"a large cat and a "
             "small dog\", when one area is at least twice the other; else the list caption). "
             "relation_share + attribute_share <= 1.", min=0.0, max=1.0)
    shard_size: int = knob(1000, "Samples per tar.", min=1)
    held_out_templates: list[str] = knob(
        factory=lambda: list(HELD_OUT_TEMPLATES), metavar="TEMPLATE",
        help=f"Caption templates no sample uses, so the bias probes can score them as held-out forms (by "
             f"default the paper's bare \"A and B and C\" form and \"there is ...\"). An empty list ([]; for "
             f"python -m data_prep synth, the flag with no value) uses all of {', '.join(TEMPLATES)}.")

    def problems(self, name: Callable[[str], str] = cli_flag, *,
                 objects: Sequence[str] | None = None) -> list[str]:
        """Every problem with these values (``[]``: none), each naming its field by ``name(field)``:
        :func:`cli_flag` gives ``--p-large-first``, a config gives e.g. ``data.synthetic.p_large_first``.

        ``objects``: the vocabulary the corpus draws from (``None``: all of ``vocab.OBJECTS``), named by
        ``name("objects")``; ``max_objects`` may not exceed its size.
        """
        errs: list[str] = []
        bad: set[str] = set()
        for f in dataclasses.fields(self):
            kind, value, m = field_types(type(self))[f.name], getattr(self, f.name), f.metadata
            if (inner := optional_of(kind)) is not None:
                if value is None:
                    continue
                kind = inner
            if kind is int:
                problem = int_problem(name(f.name), value, m.get("min"))
            elif kind is float:
                problem = real_problem(name(f.name), value, m.get("min"), m.get("max"))
            elif kind is str:
                problem = (None if isinstance(value, str) and (not m.get("choices") or value in m["choices"])
                           else f"{name(f.name)} must be one of {m['choices']}, got {value!r}" if m.get("choices")
                           else f"{name(f.name)} must be a string, got {value!r}")
            elif get_origin(kind) is list:
                problem = None if _is_str_list(value) else f"{name(f.name)} must be a list of strings, got {value!r}"
            else:  # pragma: no cover - a new field of a type nobody checks yet (nor data_prep.cli parses)
                raise TypeError(f"{type(self).__name__}.{f.name}: no check for type {kind!r}")
            if problem:
                errs.append(problem)
                bad.add(f.name)
        if not {"relation_share", "attribute_share"} & bad and self.relation_share + self.attribute_share > 1:
            errs.append(f"{name('relation_share')} + {name('attribute_share')} must be <= 1, got "
                        f"{self.relation_share} + {self.attribute_share}")
        if "held_out_templates" not in bad:
            try:
                training_templates(self.held_out_templates)
            except ValueError as e:
                errs.append(f"{name('held_out_templates')}: {e}")
        vocab_size = len(list_objects())
        if objects is not None and "objects" not in bad:
            if not _is_str_list(objects):
                errs.append(f"{name('objects')} must be a list of strings, got {objects!r}")
                vocab_size = None
            else:
                try:
                    check_names(list(objects))
                except ValueError as e:  # e lists the valid names
                    errs.append(f"{name('objects')}: {e}")
                    vocab_size = None
                if len(set(objects)) != len(objects):
                    errs.append(f"{name('objects')} has duplicates: {sorted(objects)}")
                if vocab_size is not None:
                    vocab_size = len(set(objects))
        if not {"min_objects", "max_objects"} & bad and is_int(self.max_objects):
            if self.max_objects < self.min_objects:
                errs.append(f"{name('max_objects')} ({self.max_objects}) must be >= {name('min_objects')} "
                            f"({self.min_objects})")
            if vocab_size is not None and self.max_objects > vocab_size:
                errs.append(f"{name('max_objects')} must be <= the number of objects ({vocab_size}), "
                            f"got {self.max_objects}")
        return errs
