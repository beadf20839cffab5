"""Deterministic, atomic webdataset shard writing in img2dataset's layout."""
from __future__ import annotations

import io
import json
import math
import os
import tarfile
from pathlib import Path
from typing import Iterable

from PIL import Image

JPEG_QUALITY = 95


def shard_name(index: int) -> str:
    """``00000.tar`` style name, as img2dataset writes."""
    return f"{index:05d}.tar"


def sample_key(shard: int, index_in_shard: int, shard_size: int) -> str:
    """img2dataset key: 5-digit shard id, then the index inside the shard padded to
    ``ceil(log10(shard_size))`` digits (img2dataset's ``compute_key``)."""
    width = math.ceil(math.log10(shard_size)) if shard_size > 1 else 0
    return f"{shard:05d}{index_in_shard:0{width}d}"


def encode_jpeg(image: Image.Image) -> bytes:
    """JPEG bytes with fixed settings (same image -> same bytes)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # fixed metadata -> byte-identical tars for the same content
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_tar_atomic(path: Path, samples: Iterable[tuple[str, bytes, str, dict]]) -> int:
    """Write ``(key, jpg_bytes, caption, json_dict)`` samples to ``path`` via a temp file + rename.

    Returns the number of samples written. An interrupted write removes its temp file, so a
    shard is either complete or absent.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    try:
        with open(tmp, "wb") as fh:
            with tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for key, jpg, caption, meta in samples:
                    _add(tar, f"{key}.jpg", jpg)
                    _add(tar, f"{key}.txt", caption.encode("utf-8"))
                    _add(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8"))
                    count += 1
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:  # incl. KeyboardInterrupt: never leave a partial shard behind
        tmp.unlink(missing_ok=True)
        raise
    return count


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON via temp file + rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def prepare_out_dir(out_dir: Path, overwrite: bool, produced: tuple[str, ...] = ("*.tar", "*.tmp",
                    "sizes.json", "meta.json", "manifest.jsonl")) -> Path:
    """Create ``out_dir``; refuse a non-empty one unless ``overwrite`` (then clear what we produce)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise ValueError(f"--out {out_dir} is not empty; pass --overwrite (overwrite=True) "
                             "or choose an empty directory")
        for pattern in produced:
            for p in out_dir.glob(pattern):
                if p.is_file():
                    p.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir
