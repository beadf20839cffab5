"""Read webdataset shards in img2dataset layout (``{key}.jpg|png|webp``, ``.txt``, ``.json``) without
webdataset: sample metadata (and optionally image bytes) for analyses and converters."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Iterator, Sequence

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def list_tars(paths: Sequence[str | Path]) -> list[Path]:
    """Tar files named by ``paths`` (files, or directories whose ``*.tar`` are taken in order).

    Raises ``FileNotFoundError`` naming a path that does not exist.
    """
    tars: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise FileNotFoundError(f"shard path {p} does not exist")
        tars.extend(sorted(p.glob("*.tar")) if p.is_dir() else [p])
    return tars


def iter_samples(paths: Sequence[str | Path], need_image: bool = False) -> Iterator[tuple[dict, bytes | None]]:
    """``(meta, image bytes or None)`` per sample, in shard order.

    ``meta`` is the sample json (``{}`` if absent) with ``key`` set from the member name and
    ``caption`` from the ``.txt`` member when present (the text the training loader reads).
    """
    for tar_path in list_tars(paths):
        with tarfile.open(tar_path) as tar:
            current, parts = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")
                if key != current:
                    if current is not None:
                        yield _sample(current, parts)
                    current, parts = key, {}
                if ext in ("json", "txt") or (need_image and ext in IMAGE_EXTS):
                    parts["img" if ext in IMAGE_EXTS else ext] = tar.extractfile(member).read()
            if current is not None:
                yield _sample(current, parts)


def _sample(key: str, parts: dict[str, bytes]) -> tuple[dict, bytes | None]:
    meta = json.loads(parts["json"]) if "json" in parts else {}
    meta.setdefault("key", Path(key).name)
    if "txt" in parts:
        meta["caption"] = parts["txt"].decode("utf-8", errors="replace").strip()
    return meta, parts.get("img")
