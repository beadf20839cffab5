"""Deterministic, atomic webdataset shard writing in img2dataset's layout."""
from __future__ import annotations

import io
import json
import math
import tarfile
import warnings
from pathlib import Path
from typing import Iterable

from PIL import Image

# OutDirError, check_writable, write_json_atomic: also imported from here by other modules (for now)
from .fileio import OutDirError, atomic_write, check_writable, parse_temp, write_json_atomic

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
    """Write ``(key, jpg_bytes, caption, json_dict)`` samples to ``path`` atomically (:func:`~.fileio.atomic_write`).

    Returns the number of samples written. An interrupted write removes its temp file, so a
    shard is either complete or absent.
    """
    count = 0
    with atomic_write(path, "wb") as fh:
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for key, jpg, caption, meta in samples:
                _add(tar, f"{key}.jpg", jpg)
                _add(tar, f"{key}.txt", caption.encode("utf-8"))
                _add(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8"))
                count += 1
    return count


def write_meta(out_dir: Path, meta: dict) -> dict:
    """Write ``out_dir/meta.json`` (atomically) with data_prep's ``writer`` marker; return the dict written.

    Every data_prep writer goes through here, so :func:`recorded_files` can tell our folders apart.
    """
    meta = {**meta, "writer": WRITER}
    write_json_atomic(Path(out_dir) / "meta.json", meta)
    return meta


#: ``meta.json`` kinds that data_prep writes (synth, laion, comco ``objects``/``shapes``, official, coco).
DATA_PREP_KINDS = ("synth", "laion", "objects", "shapes", "official_comco", "coco")
#: Marker every data_prep writer puts in ``meta.json`` (:func:`write_meta`): a folder holds data_prep's
#: record of what it wrote only if its ``meta.json`` has ``"writer": WRITER`` and a data_prep kind
#: (a generic ``"kind": "laion"`` alone could be another tool's).
WRITER = "clip-bias-lab/data_prep"
RECORD_FILES = ("meta.json", "sizes.json", "manifest.jsonl")
#: Hint for files left or refused: folders written before the marker existed count as foreign.
_OLD_HINT = ("output written by data_prep before its meta.json carried "
             f'"writer": "{WRITER}" counts as foreign too: move it away')


def _safe_rel(name) -> str | None:
    """``name`` as a relative path inside the folder, or None if it is absolute or climbs out."""
    if not isinstance(name, str) or not name:
        return None
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        return None
    return rel.as_posix()


def recorded_files(out_dir: Path) -> set[str]:
    """Relative paths that a previous data_prep run recorded writing into ``out_dir``.

    The record is a ``meta.json`` with data_prep's ``writer`` marker and kind (else: empty set,
    nothing is ours; e.g. folders written before the marker existed, or another tool's): its
    ``files`` list (synth writes it before its shards, so a killed run is covered), the shards in
    ``sizes.json`` with img2dataset's ``<shard>_stats.json`` / ``<shard>.parquet`` beside them
    (laion), the images in ``manifest.jsonl`` (comco, official), and those record files themselves.
    """
    out_dir = Path(out_dir)
    try:
        meta = json.loads((out_dir / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(meta, dict) or meta.get("writer") != WRITER or meta.get("kind") not in DATA_PREP_KINDS:
        return set()
    names: set = set(RECORD_FILES) | set(meta.get("files") or [])
    try:
        sizes = json.loads((out_dir / "sizes.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        sizes = {}
    for shard in sizes if isinstance(sizes, dict) else ():
        if isinstance(shard, str) and shard.endswith(".tar"):
            names |= {shard, shard[:-4] + "_stats.json", shard[:-4] + ".parquet"}
    try:
        lines = (out_dir / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            names.add(rec.get("image"))
    safe = {_safe_rel(n) for n in names}
    # ``<name>.tmp``: the temp files of data_prep's writes before they moved to data_prep.fileio
    return {n for n in safe if n is not None} | {n + ".tmp" for n in safe if n is not None}


def _shown(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def prepare_out_dir(out_dir: Path, overwrite: bool, planned: Iterable[str] = ()) -> Path:
    """Create ``out_dir`` (checked writable); refuse a non-empty one unless ``overwrite``.

    With ``overwrite``, delete only what a previous data_prep run recorded writing there
    (:func:`recorded_files`); every other file is left alone and named in a warning. If one of
    ``planned`` (the relative paths this run will write, when known) is such a foreign file, refuse
    instead: replacing it would delete a file data_prep did not write.
    """
    out_dir = Path(out_dir)
    check_writable(out_dir, "--out", is_dir=True)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise OutDirError(f"--out {out_dir} is not empty; pass --overwrite (overwrite=True) "
                              "or choose an empty directory")
        ours = recorded_files(out_dir)
        present = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if not p.is_dir())
        # temp files a killed write of one of ours left behind (``.<name>.tmp-<pid>``) are ours too
        ours |= {f for f in present if (t := parse_temp(f)) is not None and t[0].as_posix() in ours}
        foreign = [f for f in present if f not in ours]
        clash = sorted(set(foreign) & {_safe_rel(n) for n in planned})
        if clash:
            raise OutDirError(
                f"--out {out_dir}: {_shown(clash)} would be replaced, but data_prep did not write "
                f"{'it' if len(clash) == 1 else 'them'} (no data_prep meta.json there records "
                f"{'it' if len(clash) == 1 else 'them'}); --overwrite only replaces files data_prep wrote. "
                f"Move them away or choose another --out ({_OLD_HINT})")
        root = out_dir.resolve()
        removed_dirs = set()
        for rel in sorted(ours):
            p = out_dir / rel
            parent = p.parent.resolve()
            if parent != root and root not in parent.parents:
                continue  # reached through a symlinked folder: its target is not ours to delete
            if p.is_file() or p.is_symlink():
                p.unlink()
                removed_dirs.update(p.parents)
        for d in sorted((d for d in removed_dirs if out_dir in d.parents), key=lambda d: -len(d.parts)):
            if d.is_dir() and not d.is_symlink() and not any(d.iterdir()):
                d.rmdir()
        if foreign:
            tars = [f for f in foreign if f.endswith(".tar")]
            warnings.warn(
                f"--out {out_dir}: left {len(foreign)} file(s) that data_prep did not write: {_shown(foreign)}"
                + (f"; a '*.tar' glob over this folder would mix {_shown(tars)} with the new shards "
                   "(sizes.json lists exactly the new ones)" if tars else "") + f" ({_OLD_HINT})", stacklevel=2)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutDirError(f"--out {out_dir} cannot be created: {e.strerror or e}") from None
    return out_dir
