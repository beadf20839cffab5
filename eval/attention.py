"""Where a ViT's CLS token looks (paper Fig. 3): last-block CLS-to-patch attention per object box.

``python -m eval attention --checkpoint PATH [--data DIR]`` runs each multi-object image of an
eval set through the image tower, takes the last block's attention from the CLS token to every
patch (heads averaged, renormalised over patches so the CLS self-weight drops out), and sums it
inside each object's box (``bboxes`` of the manifest, [x, y, w, h] per slot in image pixels).
A patch partly inside a box contributes the overlapping fraction of its weight. Per size role
it reports the mean attention mass, the mean box area fraction (what uniform attention would
give) and their ratio (density), plus how often the large object's box gets the most mass.

The weights come from a forward pre-hook on ``resblocks[-1].attn`` (``nn.MultiheadAttention``)
that asks for ``need_weights=True, average_attn_weights=True``; the block's output is unchanged.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from eval.model_access import model_image_size
from eval.probes import role_labels
from eval.stats import proportion


# ---------------------------------------------------------------------- attention extraction


def vit_last_attention(visual: nn.Module) -> nn.MultiheadAttention:
    """The last block's attention module of an open_clip ViT tower, or a clear error."""
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise TypeError(
            f"attention analysis needs an open_clip ViT image tower; this model's tower is "
            f"{type(visual).__name__} (ResNet/timm towers have no CLS-to-patch attention)"
        )
    attn = getattr(visual.transformer.resblocks[-1], "attn", None)
    if not isinstance(attn, nn.MultiheadAttention):
        raise TypeError(
            f"last ViT block uses {type(attn).__name__}, not nn.MultiheadAttention (custom block "
            "options such as qk_norm / scaled_cosine_attn); its weights cannot be read with a hook"
        )
    return attn


@torch.no_grad()
def cls_patch_attention(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``[B, gh, gw]`` last-block CLS-to-patch attention (heads averaged, sums to 1 per image)."""
    visual = model.visual
    attn = vit_last_attention(visual)
    captured: list[torch.Tensor] = []

    def pre_hook(module, args, kwargs):
        return args, {**kwargs, "need_weights": True, "average_attn_weights": True}

    def hook(module, args, output):
        captured.append(output[1])

    handles = [attn.register_forward_pre_hook(pre_hook, with_kwargs=True), attn.register_forward_hook(hook)]
    try:
        visual(images)
    finally:
        for h in handles:
            h.remove()
    weights = captured[-1]  # [B, L, L] with L = 1 + gh * gw, batch first
    gh, gw = visual.grid_size
    if weights.shape[-1] != 1 + gh * gw:
        raise ValueError(f"attention over {weights.shape[-1]} tokens, expected 1 CLS + {gh}x{gw} patches")
    cls = weights[:, 0, 1:].float()
    return (cls / cls.sum(dim=-1, keepdim=True)).reshape(-1, gh, gw)


# ---------------------------------------------------------------------- boxes


def box_to_input(box: Sequence[float], image_wh: tuple[int, int], input_size: int) -> tuple[float, ...]:
    """``[x, y, w, h]`` in image pixels -> ``(x0, y0, x1, y1)`` in model-input pixels.

    Follows open_clip's eval transform: resize the shorter side to ``input_size``, centre crop.
    """
    w_img, h_img = image_wh
    # torchvision Resize(int): shorter side -> input_size, longer side truncated like this
    if w_img <= h_img:
        new_w, new_h = input_size, int(input_size * h_img / w_img)
    else:
        new_w, new_h = int(input_size * w_img / h_img), input_size
    sx, sy = new_w / w_img, new_h / h_img
    off_x, off_y = int(round((new_w - input_size) / 2.0)), int(round((new_h - input_size) / 2.0))
    x, y, w, h = box
    clip = lambda v: min(max(v, 0.0), float(input_size))  # noqa: E731
    return (clip(x * sx - off_x), clip(y * sy - off_y), clip((x + w) * sx - off_x), clip((y + h) * sy - off_y))


def _overlap_1d(lo: float, hi: float, n: int, patch: float) -> torch.Tensor:
    starts = torch.arange(n, dtype=torch.float64) * patch
    return ((torch.clamp(starts + patch, max=hi) - torch.clamp(starts, min=lo)).clamp(min=0) / patch)


def box_mass(attn: torch.Tensor, box_xyxy: Sequence[float], patch: float) -> float:
    """Attention mass inside a box: each ``[gh, gw]`` patch weight times its overlapped fraction."""
    gh, gw = attn.shape
    x0, y0, x1, y1 = box_xyxy
    frac = _overlap_1d(y0, y1, gh, patch)[:, None] * _overlap_1d(x0, x1, gw, patch)[None, :]
    return float((attn.double() * frac).sum())


# ---------------------------------------------------------------------- analysis


def _bboxes(eval_root: Path) -> dict[str, list]:
    boxes = {}
    with (eval_root / "manifest.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                raw = json.loads(line)
                boxes[raw["image"]] = raw.get("bboxes")
    return boxes


def attention_by_role(adapter: Any, eval_set: Any, n_objects: Sequence[int], items: int | None = None,
                      progress: bool = True) -> dict[int, dict]:
    """Per n: mean CLS attention mass, box area fraction and density per size role.

    Args:
        adapter: an ``eval.model_access.ClipAdapter`` with a ViT image tower.
        eval_set: ``eval.manifest.EvalSet`` whose manifest lines carry ``bboxes``.
        n_objects: object counts to analyse.
        items: about this many images per n, rounded up to whole balanced blocks (see
            ``eval.suite.select_images``); None = all.
    """
    from eval.suite import select_images

    model = adapter.model
    vit_last_attention(model.visual)
    boxes = _bboxes(eval_set.root)
    size = model_image_size(adapter)
    patch = size / model.visual.grid_size[0]
    eval_set.check_n(n_objects)
    was_training = model.training
    model.eval()
    out: dict[int, dict] = {}
    try:
        for n in n_objects:
            chosen = [it for it in eval_set.multi(n) if it.large is not None]
            chosen = select_images(chosen, items or len(chosen), len(eval_set.vocabulary))
            lacking = [it.image for it in chosen if not boxes.get(it.image)]
            if lacking:
                raise ValueError(
                    f"{eval_set.root}/manifest.jsonl has no 'bboxes' for {len(lacking)} images (e.g. "
                    f"{lacking[0]}); render the set with data_prep.comco.write_eval_set, which stores them")
            labels = role_labels(n)
            mass = torch.zeros(len(chosen), n, dtype=torch.float64)
            area = torch.zeros_like(mass)
            for start in tqdm(range(0, len(chosen), adapter.batch_size), desc=f"attention n={n}",
                              disable=not progress):
                batch = chosen[start:start + adapter.batch_size]
                pil = [Image.open(it.path).convert("RGB") for it in batch]
                x = torch.stack([adapter.preprocess(im) for im in pil]).to(adapter.device)
                maps = cls_patch_attention(model, x).cpu()
                for b, (it, im) in enumerate(zip(batch, pil)):
                    # role order: the large slot first, then the small slots in slot order
                    slots = [it.large, *(s for s in range(n) if s != it.large)]
                    for r, s in enumerate(slots):
                        xyxy = box_to_input(boxes[it.image][s], im.size, size)
                        mass[start + b, r] = box_mass(maps[b], xyxy, patch)
                        area[start + b, r] = (xyxy[2] - xyxy[0]) * (xyxy[3] - xyxy[1]) / size**2
            top = int((mass.argmax(dim=1) == 0).sum())
            out[n] = {
                "labels": labels,
                "n_images": len(chosen),
                "roles": {
                    lab: {"mass": float(mass[:, r].mean()), "area_fraction": float(area[:, r].mean()),
                          "density": float((mass[:, r] / area[:, r].clamp_min(1e-12)).mean())}
                    for r, lab in enumerate(labels)
                },
                "large_top": proportion(top, len(chosen)),
                "large_vs_small_mass": float(mass[:, 0].mean() - mass[:, 1:].mean()),
            }
    finally:
        model.train(was_training)
    return out


def format_attention(results: dict[int, dict]) -> str:
    lines = ["CLS-to-patch attention of the last ViT block, per size role (mass / box area fraction / density)"]
    for n, res in results.items():
        cells = "  ".join(f"{lab} {v['mass']:.3f}/{v['area_fraction']:.3f}/{v['density']:.2f}"
                          for lab, v in res["roles"].items())
        top = res["large_top"]
        lines.append(f"  n={n}  {cells}   large box has most mass: {top['share']:.3f} "
                     f"[{top['ci'][0]:.3f}, {top['ci'][1]:.3f}] of {res['n_images']}")
    return "\n".join(lines)
