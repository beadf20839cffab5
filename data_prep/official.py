"""Reader for the paper's official ComCO folders -> this toolkit's ``manifest.jsonl``.

Layout (file-name order = spatial slot; the folder names the slot holding the large object)::

    CoCo-OneObject/<name>.png
    CoCo-TwoObject-<Large>/<o1>_<o2>.png
    CoCo-ThreeObject-ULBig|Middle-Big|BRBig/<o1>_<o2>_<o3>.png
    CoCo-FourObject-Middle-Big/<o1>_<o2>_<o3>_<o4>.png

The large-slot part (``ULBig``, ``Middle-Big``, ...) is mapped by :func:`large_slot`. Slot names
follow :data:`data_prep.render.SLOT_NAMES`; for an even n, "middle" has no unique slot and is read
as slot ``(n - 1) // 2`` (an assumption about the official four-object layout; pass
``large_slots={"FourObject-Middle-Big": k}`` to override). Images are copied (hard-linked when
possible) under ``out_dir``; areas are unknown for official images: ``"areas": null``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

from .fileio import write_text_atomic
from .shards import prepare_out_dir, write_meta

COUNTS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
_FOLDER = re.compile(r"^CoCo-(One|Two|Three|Four|Five)Objects?(?:-(.+))?$", re.IGNORECASE)


def large_slot(tag: str, n: int) -> int:
    """Slot index of the large object from a folder suffix like ``ULBig`` / ``Middle-Big`` / ``BRBig``."""
    t = re.sub(r"[^a-z0-9]", "", tag.lower())
    t = t[:-3] if t.endswith("big") else t
    m = re.fullmatch(r"(?:slot|s)(\d+)", t)
    if m and int(m.group(1)) < n:
        return int(m.group(1))
    table = {
        "ul": 0, "upperleft": 0, "topleft": 0, "tl": 0, "left": 0, "first": 0,
        "br": n - 1, "bottomright": n - 1, "lowerright": n - 1, "right": n - 1, "last": n - 1,
        "middle": n // 2 if n % 2 else (n - 1) // 2, "center": n // 2 if n % 2 else (n - 1) // 2,
        "mid": n // 2 if n % 2 else (n - 1) // 2,
    }
    if n >= 4:
        table.update({"ur": 1, "upperright": 1, "topright": 1, "bl": n - 2, "bottomleft": n - 2,
                      "lowerleft": n - 2})
    if t not in table:
        raise ValueError(f"cannot tell the large slot from folder suffix {tag!r} for {n} objects; "
                         f"known suffixes: {sorted(table)} (+ 'Big'); pass large_slots={{...}}")
    return table[t]


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def convert_official(src_dir, out_dir, overwrite: bool = False,
                     large_slots: dict[str, int] | None = None) -> Path:
    """Convert official ComCO folders under ``src_dir`` into ``out_dir/manifest.jsonl``.

    Args:
        src_dir: folder holding ``CoCo-*`` sub-folders.
        out_dir: output folder (must be empty unless ``overwrite``).
        overwrite: allow a non-empty ``out_dir``.
        large_slots: override folder suffix -> large slot, keyed by the folder name without
            the ``CoCo-`` prefix (e.g. ``{"FourObject-Middle-Big": 1}``).
    Returns:
        path of the manifest.
    """
    src = Path(src_dir)
    if not src.is_dir():
        raise ValueError(f"--src {src} is not a directory")
    folders = sorted(p for p in src.iterdir() if p.is_dir() and _FOLDER.match(p.name))
    if not folders:
        raise ValueError(f"no CoCo-<N>Object* folders in {src}")
    planned = [f"{folder.name}/{img.name}" for folder in folders for img in folder.iterdir()
               if img.suffix.lower() in IMAGE_EXTS] + ["manifest.jsonl", "meta.json"]
    out = prepare_out_dir(Path(out_dir), overwrite, planned=planned)
    large_slots = large_slots or {}
    records = []
    for folder in folders:
        m = _FOLDER.match(folder.name)
        n = COUNTS[m.group(1).lower()]
        tag = m.group(2)
        key = folder.name[len("CoCo-"):]
        if n == 1:
            large = None
        elif key in large_slots:
            large = int(large_slots[key])
        elif tag is None:
            raise ValueError(f"folder {folder.name} does not say which slot is large; pass large_slots")
        else:
            large = large_slot(tag, n)
        for img in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS):
            names = img.stem.split("_")
            if len(names) != n:
                warnings.warn(f"skipping {img}: {len(names)} names in file name, folder says {n}")
                continue
            rel = f"{folder.name}/{img.name}"
            _link_or_copy(img, out / rel)
            records.append({"image": rel, "objects": names, "large": large, "areas": None,
                            "n_objects": n, "kind": "single" if n == 1 else "multi",
                            "setting": "single" if n == 1 else f"n{n}_large_slot{large}",
                            "source_folder": folder.name})
    manifest = write_text_atomic(out / "manifest.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    write_meta(out, {"kind": "official_comco", "src_dir": str(src),
                     "folders": [f.name for f in folders], "num_images": len(records)})
    return manifest
