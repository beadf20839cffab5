"""Load and validate an eval set (``manifest.jsonl`` + images) into dataclasses.

Format (docs/INTERFACES.md): one JSON object per line,
``{"image", "objects", "large", "areas", "n_objects", "kind", "setting"}``. Single-object gallery
items (``kind: "single"``) define the eval set's vocabulary; every object named by a multi-object
item must have one, otherwise IOR has no gallery entry for it.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST_NAME = "manifest.jsonl"
_REQUIRED = ("image", "objects", "n_objects", "kind")
_MAX_LISTED = 10


class ManifestError(ValueError):
    """The eval set is malformed; the message lists every problem found."""


@dataclass(frozen=True)
class EvalItem:
    """One image of the eval set. ``objects`` are in slot order; ``large`` indexes into them."""

    image: str
    path: Path
    objects: tuple[str, ...]
    large: int | None
    areas: tuple[float, ...]
    n_objects: int
    kind: str
    setting: str

    def by_role(self) -> tuple[str, ...]:
        """Objects in role order: the large one first, then the small ones in slot order."""
        if self.large is None:
            raise ValueError(f"{self.image}: no large object, so it has no size roles")
        rest = [o for i, o in enumerate(self.objects) if i != self.large]
        return (self.objects[self.large], *rest)


@dataclass
class EvalSet:
    """A validated eval set: its root folder and its items in manifest order."""

    root: Path
    items: list[EvalItem]
    vocabulary: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.vocabulary = sorted({it.objects[0] for it in self.items if it.kind == "single"})

    def singles(self) -> list[EvalItem]:
        return [it for it in self.items if it.kind == "single"]

    def multi(self, n: int) -> list[EvalItem]:
        return [it for it in self.items if it.kind == "multi" and it.n_objects == n]

    def n_values(self) -> list[int]:
        """The object counts present among multi-object items, ascending."""
        return sorted({it.n_objects for it in self.items if it.kind == "multi"})

    def check_n(self, n_objects: Iterable[int]) -> None:
        """Raise a ``ValueError`` naming every requested n the set does not contain."""
        bad = [n for n in n_objects if n not in self.n_values()]
        if bad:
            raise ValueError(
                f"n_objects {bad} not in the eval set at {self.root}; valid: {self.n_values()}"
            )


def _parse_line(raw: dict, lineno: int, root: Path, problems: list[str]) -> EvalItem | None:
    where = f"line {lineno}"
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        problems.append(f"{where}: missing keys {missing}")
        return None
    objects = raw["objects"]
    if not isinstance(objects, list) or not objects or not all(isinstance(o, str) for o in objects):
        problems.append(f"{where}: 'objects' must be a non-empty list of names, got {objects!r}")
        return None
    n, kind, large = raw["n_objects"], raw["kind"], raw.get("large")
    areas = raw.get("areas") or [0.0] * len(objects)
    if kind not in ("single", "multi"):
        problems.append(f"{where}: kind must be 'single' or 'multi', got {kind!r}")
    if n != len(objects):
        problems.append(f"{where}: n_objects={n} but {len(objects)} objects listed")
    if len(set(objects)) != len(objects):
        problems.append(f"{where}: an object appears twice in {objects}")
    if kind == "single" and len(objects) != 1:
        problems.append(f"{where}: a 'single' item must name exactly one object, got {objects}")
    if large is not None and not (isinstance(large, int) and 0 <= large < len(objects)):
        problems.append(f"{where}: 'large'={large!r} is not a slot index in 0..{len(objects) - 1}")
    if len(areas) != len(objects):
        problems.append(f"{where}: {len(areas)} areas for {len(objects)} objects")
    return EvalItem(
        image=raw["image"],
        path=root / raw["image"],
        objects=tuple(objects),
        large=large,
        areas=tuple(float(a) for a in areas),
        n_objects=int(n),
        kind=kind,
        setting=str(raw.get("setting", "")),
    )


def load_eval_set(
    path: str | Path, known_objects: Iterable[str] | None = None, check_images: bool = True
) -> EvalSet:
    """Read ``manifest.jsonl`` (or a folder holding one) and validate it.

    Args:
        path: the manifest file or the eval-set folder containing ``manifest.jsonl``.
        known_objects: if given, every object name must be in it (e.g. ``data_prep.vocab.OBJECTS``).
        check_images: check that every image file exists.

    Raises:
        ManifestError: listing every malformed line, unknown object and missing image.
    """
    path = Path(path)
    manifest = path / MANIFEST_NAME if path.is_dir() else path
    if not manifest.is_file():
        raise FileNotFoundError(
            f"no eval-set manifest at {manifest}; create one with data_prep.comco.write_eval_set "
            "or data_prep.official.convert_official"
        )
    root = manifest.parent
    problems: list[str] = []
    items: list[EvalItem] = []
    with manifest.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                problems.append(f"line {lineno}: not JSON ({err.msg})")
                continue
            item = _parse_line(raw, lineno, root, problems)
            if item is not None:
                items.append(item)
    if not items and not problems:
        problems.append("the manifest has no items")
    eval_set = EvalSet(root=root, items=items)
    if items and not eval_set.vocabulary:
        problems.append("no single-object items (kind 'single'): IOR and TOR need that gallery")
    gallery = set(eval_set.vocabulary)
    named = {o for it in items for o in it.objects}
    if eval_set.vocabulary:
        _collect(problems, sorted(named - gallery), "objects with no single-object gallery image")
    if known_objects is not None:
        _collect(problems, sorted(named - set(known_objects)), "objects not in the vocabulary")
    if check_images:
        _collect(problems, [it.image for it in items if not it.path.is_file()], "missing images")
    if problems:
        listed = "\n  ".join(problems)
        raise ManifestError(f"invalid eval set {manifest}:\n  {listed}")
    return eval_set


def _collect(problems: list[str], bad: list[str], what: str) -> None:
    if bad:
        shown = ", ".join(bad[:_MAX_LISTED]) + (f", … ({len(bad)} in all)" if len(bad) > _MAX_LISTED else "")
        problems.append(f"{what}: {shown}")
