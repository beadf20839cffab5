"""Default eval sets: the ComCO-style set rendered once per (seed, image size) into a cache.

Used by ``python -m eval comco`` / ``attention`` without ``--data`` and by ``BiasEvalCallback``
without ``data_dir``; both share one cache, so each set is rendered once per machine. The cache
location is resolved when a set is needed, not at import: ``$CLIP_BIAS_LAB_CACHE`` if set, else
``~/.cache/clip_bias_lab``.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from data_prep.checks import is_int
from data_prep.fileio import OutDirError, atomic_dir, check_writable

#: environment variable that moves the cache of rendered eval sets
CACHE_ENV = "CLIP_BIAS_LAB_CACHE"
#: object counts the default eval set holds (data_prep.comco renders 2..5 objects per image)
DEFAULT_N_OBJECTS = (2, 3, 4, 5)


def default_cache_dir() -> Path:
    """``$CLIP_BIAS_LAB_CACHE``, else ``~/.cache/clip_bias_lab`` (read now, on every call)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "clip_bias_lab")


def default_eval_set(cache_dir: Path | None, seed: int, image_size: int, progress: bool = True,
                     blocks: int = 1) -> Path:
    """Render the default eval set once (atomically) into ``cache_dir`` and return its folder.

    ``cache_dir`` None = :func:`default_cache_dir`. ``blocks``: counterbalanced blocks per large-slot
    setting (each block = every vocabulary object once in every slot), so the set holds
    ``blocks × V × n`` images per n (V = 62 objects): more blocks, narrower probe intervals.
    """
    if not is_int(blocks) or blocks < 1:
        raise ValueError(f"eval set blocks must be an integer >= 1, got {blocks!r}")
    target = _sets_dir(cache_dir) / set_name(seed, image_size, blocks)
    if (target / "manifest.jsonl").is_file():
        return target
    from data_prep.comco import vocabulary, write_eval_set  # imported lazily: rendering needs PIL

    try:
        with atomic_dir(target) as tmp:
            tmp.mkdir()
            write_eval_set(tmp, seed=seed, image_size=image_size, n_objects=DEFAULT_N_OBJECTS, progress=progress,
                           items_per_setting=None if blocks == 1 else blocks * len(vocabulary("objects")))
    except OSError:
        if not (target / "manifest.jsonl").is_file():  # lost a race with another process: fine
            raise
    return target


def relation_eval_set(cache_dir: Path | None, seed: int, image_size: int, progress: bool = False,
                      objects: Sequence[str] | None = None) -> Path:
    """The two-object relation set of the compositional probes (``data_prep.relation_set``), rendered
    once (atomically) into ``cache_dir`` as ``relations-seed<s>-px<size>``; on a vocabulary of
    ``objects`` only (a small training world), in enough blocks for as many images as the whole
    vocabulary's set (``data_prep.relation_set.blocks_for``), as ``...-v<hash of the names>``."""
    name = f"relations-seed{seed}-px{image_size}"
    if objects is not None:
        name += "-v" + hashlib.sha1(" ".join(sorted(set(objects))).encode()).hexdigest()[:8]
    target = _sets_dir(cache_dir) / name
    if (target / "manifest.jsonl").is_file():
        return target
    from data_prep.relation_set import blocks_for, write_relation_set  # lazily: rendering needs PIL

    try:
        with atomic_dir(target) as tmp:
            tmp.mkdir()
            write_relation_set(tmp, seed=seed, image_size=image_size, progress=progress, objects=objects,
                               blocks=blocks_for(objects))
    except OSError:
        if not (target / "manifest.jsonl").is_file():
            raise
    return target


def set_name(seed: int, image_size: int | str, blocks: int = 1) -> str:
    """Cache folder name of a default eval set (``-b<blocks>d`` only when more than one block; the
    ``d``: blocks of distinct scenes, since 2026-12-04 — the sets cached as ``-b<blocks>`` before
    repeated the first block's scenes and are not read)."""
    return f"comco-objects-seed{seed}-px{image_size}" + (f"-b{blocks}d" if blocks > 1 else "")


def eval_set_cache_problem(cache_dir: Path | None, seed: int, image_size: int | None, flag: str,
                           blocks: int = 1) -> str | None:
    """Why the default eval set cannot be rendered into ``cache_dir`` (checked before any work), or None.

    Fine if the set is already there (a read-only shared cache is fine; with ``image_size`` unknown
    until the model loads, any cached size for ``seed`` counts), else the cache must be writable.
    """
    sets = _sets_dir(cache_dir)
    size = "*" if image_size is None else str(image_size)
    if any((d / "manifest.jsonl").is_file() for d in sets.glob(set_name(seed, size, blocks))):
        return None
    try:
        check_writable(sets, flag, is_dir=True)
    except OutDirError as e:
        return f"{e} (the default eval set is rendered there; give a writable one, or an eval set folder)"
    return None


def n_objects_problem(n_objects: Sequence[int], flag: str) -> str | None:
    """Why the default eval set cannot serve ``n_objects`` (some n it does not hold), or None."""
    bad = [n for n in n_objects if n not in DEFAULT_N_OBJECTS]
    if not bad:
        return None
    return (f"{flag} {bad}: the default eval set holds n in {min(DEFAULT_N_OBJECTS)}..{max(DEFAULT_N_OBJECTS)}; "
            "for other n give an eval set folder that holds them")


def _sets_dir(cache_dir: Path | None) -> Path:
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / "eval_sets"
