"""A tiny COCO-format dataset drawn with the scene renderer, so every box is true."""
from __future__ import annotations

import json
from pathlib import Path

from data_prep.render import render_scene

# (objects in the scene, sizes as fractions of the side, captions)
SCENES = [
    (["dog", "car"], [0.5, 0.25], ["A dog next to a small car.", "A car and a big dog", "Just a sunny day"]),
    (["person", "bicycle", "umbrella"], [0.3, 0.6, 0.2],
     ["A man riding a bike with an umbrella", "A bicycle, a woman and an umbrella on the street"]),
    (["pizza", "cup"], [0.6, 0.3], ["A pizza next to a cup of coffee", "Two pizzas and a mug"]),
    (["person", "tv", "couch"], [0.25, 0.3, 0.7], ["A woman on the sofa watching TV"]),
]
CATEGORIES = ["dog", "car", "person", "bicycle", "umbrella", "pizza", "cup", "tv", "couch"]


def make_coco(root: Path, image_size: int = 96, fmt: str = "png") -> dict:
    """Write ``images/``, ``instances.json`` and ``captions.json`` under ``root``; return the truth:
    ``{image_id: [{name, bbox, area}, ...]}``."""
    (root / "images").mkdir(parents=True)
    cat_id = {n: i + 1 for i, n in enumerate(CATEGORIES)}
    images, anns, caps, truth = [], [], [], {}
    for k, (names, sizes, captions) in enumerate(SCENES):
        image_id = 100 + k
        img, objs = render_scene(names, sizes, "random", image_size, "white", seed=k)
        fname = f"{image_id:012d}.{fmt}"
        img.save(root / "images" / fname)
        images.append({"id": image_id, "file_name": fname, "width": image_size, "height": image_size})
        truth[image_id] = [{"name": o["name"], "bbox": o["bbox"], "area": o["area"]} for o in objs]
        for o in objs:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat_id[o["name"]],
                         "bbox": o["bbox"], "area": o["area"], "iscrowd": 0})
        for c in captions:
            caps.append({"id": 1000 + len(caps), "image_id": image_id, "caption": c})
    cats = [{"id": i, "name": n, "supercategory": "thing"} for n, i in cat_id.items()]
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    (root / "captions.json").write_text(json.dumps({"images": images, "annotations": caps}))
    return truth
