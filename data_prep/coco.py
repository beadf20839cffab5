"""COCO-format annotations → training shards in img2dataset layout (``python -m data_prep coco``).

One sample per (image, caption), ordered by image id then caption id. The sample json carries
``objects: [{name, bbox, area, mention_index}]`` like the rendered corpus: ``bbox`` = COCO's
``[x, y, w, h]`` in pixels of the stored image, ``area`` = the annotation's area (segmentation
pixels), ``mention_index`` = position of the object's name among the distinct objects the caption
names (:func:`data_prep.mentions.mentioned_names`; every instance of a named category shares it),
``null`` when the caption does not name it; crowd regions keep ``"iscrowd": 1``. Any dataset in
COCO format works (COCO, Visual Genome exports, LVIS): category names the mention vocabulary
does not know are added to it as plain names (with plurals), or pass a vocabulary of your own.

Images are copied byte for byte (JPEG) unless ``max_size`` asks for a downscale (boxes and
areas are scaled with the pixels) or the file is not a JPEG (re-encoded). Shards are written
atomically, with ``sizes.json`` and ``meta.json`` beside them.
"""
from __future__ import annotations

import io
import json
import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Iterator, Sequence

from PIL import Image
from tqdm.auto import tqdm

from .fileio import write_json_atomic
from .mentions import Vocabulary, coco_vocabulary, mentioned_names
from .shards import encode_jpeg, prepare_out_dir, sample_key, shard_name, write_meta, write_tar_atomic


def load_coco(instances: Sequence[str | Path], captions: Sequence[str | Path]) -> tuple[dict, dict, dict]:
    """``(images by id, annotations by image id, captions by image id)`` merged over files.

    Raises ``ValueError`` naming the file when a required key is missing.
    """
    images: dict[int, dict] = {}
    cats: dict[int, str] = {}
    anns: dict[int, list[dict]] = defaultdict(list)
    caps: dict[int, list[dict]] = defaultdict(list)
    for path in instances:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        for key in ("annotations", "categories"):
            if key not in data:
                raise ValueError(f"{path}: not a COCO instances file (no {key!r} list)")
        cats.update({c["id"]: c["name"] for c in data["categories"]})
        images.update({im["id"]: im for im in data.get("images", [])})
        for a in data["annotations"]:
            anns[a["image_id"]].append({**a, "name": cats[a["category_id"]]})
    for path in captions:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if "annotations" not in data:
            raise ValueError(f"{path}: not a COCO captions file (no 'annotations' list)")
        images.update({im["id"]: im for im in data.get("images", []) if im["id"] not in images})
        for c in data["annotations"]:
            caps[c["image_id"]].append(c)
    return images, anns, caps


def vocabulary_for(category_names: Sequence[str], base: Vocabulary | None = None) -> Vocabulary:
    """``base`` (default: COCO with synonyms) plus the category names it does not know."""
    base = base or coco_vocabulary()
    extra = [n for n in category_names if base.canonical(n) not in base.names]
    return base.merged(Vocabulary.from_names(extra)) if extra else base


def objects_for_caption(caption: str, annotations: Sequence[dict], vocab: Vocabulary,
                        scale: float = 1.0) -> list[dict]:
    """The sample json's ``objects`` for one caption (see module docstring)."""
    named = mentioned_names(caption, vocab)
    out = []
    for a in annotations:
        canon = vocab.canonical(a["name"])
        obj = {"name": a["name"], "bbox": [round(float(v) * scale, 2) for v in a["bbox"]],
               "area": round(float(a.get("area", a["bbox"][2] * a["bbox"][3])) * scale * scale, 2),
               "mention_index": named.index(canon) if canon in named else None}
        if a.get("iscrowd"):
            obj["iscrowd"] = 1
        out.append(obj)
    return out


def find_image(image_dirs: Sequence[Path], file_name: str) -> Path | None:
    for d in image_dirs:
        for p in (d / file_name, d / Path(file_name).name):
            if p.is_file():
                return p
    return None


def _image_bytes(path: Path, max_size: int | None) -> tuple[bytes, int, int, float]:
    """``(jpeg bytes, width, height, scale)`` of the stored image."""
    raw = path.read_bytes()
    with Image.open(io.BytesIO(raw)) as im:
        w, h = im.size
        scale = 1.0
        if max_size is not None and max(w, h) > max_size:
            scale = max_size / max(w, h)
            im = im.convert("RGB").resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
            return encode_jpeg(im), im.size[0], im.size[1], scale
        if im.format == "JPEG":
            return raw, w, h, scale
        return encode_jpeg(im.convert("RGB")), w, h, scale


def convert(images: Sequence[str | Path] | str | Path, captions: Sequence[str | Path],
            instances: Sequence[str | Path], out_dir: str | Path, shard_size: int = 1000,
            max_size: int | None = None, vocabulary: Vocabulary | None = None, overwrite: bool = False,
            progress: bool = True) -> dict:
    """Write COCO-format data as shards; return the ``meta.json`` dict.

    Args:
        images: folder(s) holding the images (``file_name`` relative to one of them).
        captions: ``captions_*.json`` files.
        instances: ``instances_*.json`` files (boxes, categories, image sizes).
        out_dir: output folder (empty unless ``overwrite``).
        shard_size: samples per tar.
        max_size: downscale images whose longer side exceeds this (boxes follow); default: keep.
        vocabulary: mention vocabulary (default: COCO synonyms + the dataset's category names).
        overwrite: clear our files from a non-empty ``out_dir``.
        progress: show a progress bar.
    """
    if shard_size < 1:
        raise ValueError(f"--shard-size must be positive, got {shard_size}")
    if max_size is not None and max_size < 1:
        raise ValueError(f"--max-size must be positive, got {max_size}")
    image_dirs = [Path(images)] if isinstance(images, (str, Path)) else [Path(d) for d in images]
    for d in image_dirs:
        if not d.is_dir():
            raise ValueError(f"--images {d} is not a directory")
    imgs, anns, caps = load_coco(instances, captions)
    if not imgs:
        raise ValueError("no 'images' list in --instances or --captions: file names are unknown")
    if problem := id_mismatch(imgs, anns, caps, bool(instances)):
        raise ValueError(problem)
    if problem := images_absent(imgs, caps, image_dirs):
        raise ValueError(problem)
    cat_names = sorted({a["name"] for lst in anns.values() for a in lst})
    vocab = vocabulary_for(cat_names, vocabulary)
    # at most one sample per caption of an image: planned names are an upper bound (missing images write fewer)
    n_max = sum(len(caps.get(i, [])) for i in imgs)
    planned = [shard_name(s) for s in range(math.ceil(n_max / shard_size))] + ["sizes.json", "meta.json"]
    out = prepare_out_dir(Path(out_dir), overwrite, planned=planned)
    counts = {"images": 0, "samples": 0, "missing_images": 0, "images_without_captions": 0,
              "captions_without_image": sum(len(c) for i, c in caps.items() if i not in imgs),
              "captioned_images_without_boxes": 0,
              "objects": 0, "objects_named": 0, "captions_naming_2plus_boxed": 0}
    if counts["captions_without_image"]:
        warnings.warn(f"{counts['captions_without_image']} captions name an image id that no 'images' list "
                      f"holds; skipped (counted in meta.json as captions_without_image)", stacklevel=2)

    def samples() -> Iterator[tuple[bytes, str, dict]]:
        for image_id in sorted(imgs):
            im = imgs[image_id]
            image_caps = sorted(caps.get(image_id, []), key=lambda c: c.get("id", 0))
            if not image_caps:
                counts["images_without_captions"] += 1
                continue
            path = find_image(image_dirs, im["file_name"])
            if path is None:
                counts["missing_images"] += 1
                if counts["missing_images"] <= 5:
                    warnings.warn(f"image {im['file_name']!r} (id {image_id}) not found under "
                                  f"{', '.join(map(str, image_dirs))}; skipped", stacklevel=2)
                continue
            jpg, w, h, scale = _image_bytes(path, max_size)
            counts["images"] += 1
            counts["captioned_images_without_boxes"] += not anns.get(image_id)
            for c in image_caps:
                caption = c["caption"].strip()
                objects = objects_for_caption(caption, anns.get(image_id, []), vocab, scale)
                named = {o["mention_index"] for o in objects if o["mention_index"] is not None}
                counts["objects"] += len(objects)
                counts["objects_named"] += sum(o["mention_index"] is not None for o in objects)
                counts["captions_naming_2plus_boxed"] += len(named) >= 2
                meta = {"caption": caption, "url": None, "width": w, "height": h,
                        "original_width": im.get("width", w), "original_height": im.get("height", h),
                        "status": "success", "error_message": None, "source": "coco", "image_id": image_id,
                        "caption_id": c.get("id"), "file_name": im["file_name"], "objects": objects}
                yield jpg, caption, meta

    sizes: dict[str, int] = {}
    bar = tqdm(desc="coco", unit="sample", disable=not progress)
    stream = samples()
    shard = 0
    done = False
    while not done:
        batch = []
        for item in stream:
            batch.append(item)
            if len(batch) == shard_size:
                break
        else:
            done = True
        if not batch:
            break
        keyed = [(sample_key(shard, i, shard_size), jpg, cap, {**meta, "key": sample_key(shard, i, shard_size)})
                 for i, (jpg, cap, meta) in enumerate(batch)]
        sizes[shard_name(shard)] = write_tar_atomic(out / shard_name(shard), keyed)
        counts["samples"] += len(batch)
        bar.update(len(batch))
        shard += 1
    bar.close()
    if counts["missing_images"]:
        warnings.warn(f"{counts['missing_images']} of {counts['missing_images'] + counts['images']} captioned images "
                      f"were not found under {', '.join(map(str, image_dirs))}; skipped (meta.json: missing_images)",
                      stacklevel=2)
    if instances and counts["images"] and counts["captioned_images_without_boxes"] > counts["images"] // 2:
        warnings.warn(f"{counts['captioned_images_without_boxes']} of {counts['images']} images have no instance "
                      f"annotation, so their samples carry no objects: do --instances and --captions come from "
                      f"the same split?", stacklevel=2)
    write_json_atomic(out / "sizes.json", sizes)
    meta = {"kind": "coco", "num_samples": counts["samples"], "num_shards": len(sizes), "shard_size": shard_size,
            "max_size": max_size, "captions": [str(p) for p in captions], "instances": [str(p) for p in instances],
            "images": [str(d) for d in image_dirs], "categories": cat_names, "counts": counts,
            "mention_index_rule": "position of the object's name among the distinct objects the caption names "
                                  "(data_prep.mentions); null if not named"}
    return write_meta(out, meta)


def id_mismatch(imgs: dict, anns: dict, caps: dict, have_instances: bool) -> str | None:
    """Why the captions and instance files do not describe the same images (None: they do, at least in part)."""
    if have_instances and anns and caps and not set(anns) & set(caps):
        return (f"--captions and --instances share no image id (captions: {len(caps)} images, ids {min(caps)}.."
                f"{max(caps)}; instances: {len(anns)} images, ids {min(anns)}..{max(anns)}): every sample would "
                f"carry no objects. Give the captions and instances files of the same split (e.g. both val2017).")
    if caps and not set(caps) & set(imgs):
        return "no caption names an image id of the 'images' lists: the files describe different images"
    return None


def images_absent(imgs: dict, caps: dict, image_dirs: Sequence[Path], probe: int = 50) -> str | None:
    """Why no image can be read (None: at least one of the first ``probe`` captioned images exists)."""
    names = [imgs[i]["file_name"] for i in sorted(imgs) if caps.get(i)][:probe]
    if not names or any(find_image(image_dirs, n) is not None for n in names):
        return None
    return (f"none of the first {len(names)} captioned images (e.g. {names[0]!r}) is under "
            f"{', '.join(map(str, image_dirs))}: point --images at the folder holding the annotation files' "
            f"file_name entries")


def check_inputs(images: Sequence[Path], captions: Sequence[Path], instances: Sequence[Path]) -> list[str]:
    """Problems with the CLI's inputs, each naming its flag (empty list if none)."""
    errs = []
    for d in images:
        if not Path(d).is_dir():
            errs.append(f"--images {d} is not a directory")
    for flag, files in (("--captions", captions), ("--instances", instances)):
        for f in files:
            if not Path(f).is_file():
                errs.append(f"{flag} {f} does not exist")
    return errs


__all__ = ["convert", "load_coco", "objects_for_caption", "vocabulary_for", "check_inputs", "find_image"]
