"""Per-object region loss for ViT image towers: every boxed object, however small, must be named."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

from data_prep.captions import TEMPLATES, make_caption
from train.aux_losses.base import AuxBatch, AuxLoss, Terms
from train.aux_losses.geometry import box_patches, map_box


def pool_regions(patches: Tensor, sample: list[int], cells: list[list[int]]) -> Tensor:
    """``[R, W]``: region r = mean of ``patches[sample[r], cells[r]]`` (``patches``: ``[N, G, W]``).

    A mean, not a sum: a region's embedding does not grow with its object's size.
    """
    n, g, w = patches.shape
    flat = patches.reshape(n * g, w)
    rows = [r for r, c in enumerate(cells) for _ in c]
    index = [sample[r] * g + p for r, c in enumerate(cells) for p in c]
    if not rows:
        return patches.new_zeros(0, w)
    rows_t = torch.tensor(rows, device=patches.device)
    weights = torch.tensor([1.0 / len(cells[r]) for r in rows], device=patches.device, dtype=patches.dtype)
    picked = flat[torch.tensor(index, device=patches.device)] * weights[:, None]
    return patches.new_zeros(len(cells), w).index_add(0, rows_t, picked)


class RegionLoss(AuxLoss):
    """Align the mean of the patch tokens inside each object's box with the text of that object's name.

    Patch tokens are the output of the ViT's transformer in the same forward as the contrastive loss
    (a forward hook, no second pass), passed through ``ln_post`` and ``proj`` as open_clip does for
    the class token (``ln_post`` after pooling where the tower sets ``final_ln_after_pool``), then
    L2-normalised. A box ``[x, y, w, h]`` (sample json ``objects``, in the pixels of the image after
    the sample transforms) is mapped through the preprocess crop the image went through
    (:mod:`train.aux_losses.geometry`; for the rendered corpus the image is already at model size and
    only the ``RandomResizedCrop(scale=(0.9, 1))`` moves it) onto the patch grid; its region is the
    mean of the patches whose centre lies inside, at least the patch holding the box centre. Boxes
    that cannot be mapped (malformed, empty, unknown preprocess, less than ``min_visible`` inside the
    crop) are refused and counted.

    Each region is classified among the distinct object names of the global batch (all ranks),
    each embedded as the single-object caption ``make_caption([name], prompt)`` (default ``photo``:
    "a photo of a dog", the corpus's own wording, also a probe template), cross-entropy with the
    model's logit scale (detached), averaged over the global number of regions.

    Terms: ``<name>``, ``<name>/regions`` and ``<name>/refused`` (weight 0: per-rank counts).
    Towers other than open_clip's ``VisionTransformer`` with class-token or average pooling (ResNets,
    attention pooling, timm towers) and active patch dropout are refused when the module is built.
    """

    needs_meta = True

    def __init__(self, weight: float = 1.0, prompt: str = "photo", min_visible: float = 0.5,
                 name: str = "region") -> None:
        """
        Args:
            weight: Factor of the term in the training loss.
            prompt: Caption template id (``data_prep.captions.TEMPLATES``) naming one object.
            min_visible: Refuse a box with less than this share of its area inside the preprocess crop.
            name: Term name, logged as ``train/aux/<name>``.
        """
        super().__init__(weight)
        if prompt not in TEMPLATES:
            raise ValueError(f"prompt must be a caption template id ({', '.join(TEMPLATES)}), got {prompt!r}")
        if not 0.0 < min_visible <= 1.0:
            raise ValueError(f"min_visible must be in (0, 1], got {min_visible!r}")
        self.prompt, self.min_visible, self.name = prompt, float(min_visible), name
        self._tokens: Tensor | None = None

    def check_model(self, model: nn.Module) -> list[str]:
        visual = getattr(model, "visual", None)
        if not isinstance(visual, VisionTransformer):
            return [f"RegionLoss needs a ViT image tower (open_clip VisionTransformer) to pool patch tokens; "
                    f"this model's is {type(visual).__name__} (use a ViT model_name, or drop this loss)"]
        problems = []
        if getattr(visual, "attn_pool", None) is not None:
            problems.append("RegionLoss does not support attentional pooling (its tokens are not patches)")
        if getattr(visual, "pool_type", "tok") not in ("tok", "avg"):
            problems.append(f"RegionLoss needs pool_type 'tok' or 'avg', got {visual.pool_type!r}")
        if not isinstance(visual.patch_dropout, nn.Identity):
            problems.append("RegionLoss cannot map boxes when patch dropout removes tokens (set patch_dropout 0)")
        if visual.proj is None:
            problems.append("RegionLoss needs the tower's projection (visual.proj) into the joint space")
        return problems

    @contextmanager
    def capture(self, model: nn.Module) -> Iterator[None]:
        def keep(module: nn.Module, args, output: Tensor) -> None:
            self._tokens = output  # [N, 1 + grid, width], batch first

        handle = model.visual.transformer.register_forward_hook(keep)
        try:
            yield
        finally:
            handle.remove()

    def forward(self, batch: AuxBatch) -> Terms:
        tokens, self._tokens = self._tokens, None
        if tokens is None:
            raise RuntimeError("RegionLoss got no patch tokens: its capture() context was not active during the forward")
        visual = batch.model.visual
        patches = tokens[:, 1:]
        if not visual.final_ln_after_pool:
            patches = visual.ln_post(patches)
        sample, cells, names, refused = [], [], [], 0
        image_size = tuple(visual.image_size)
        for i, meta in enumerate(batch.meta):
            for obj in meta.get("objects") or ():
                box = map_box(obj.get("bbox"), meta.get("preprocess"), self.min_visible)
                if box is None or not obj.get("name"):
                    refused += 1
                    continue
                sample.append(i)
                cells.append(box_patches(box, image_size, tuple(visual.grid_size)))
                names.append(obj["name"])
        regions = pool_regions(patches, sample, cells)
        if visual.final_ln_after_pool:
            regions = visual.ln_post(regions)
        regions = F.normalize(regions @ visual.proj, dim=-1)
        vocab = sorted(set(batch.gather_objects(sorted(set(names)))))
        total = batch.all_sum(len(names))
        counts = {f"{self.name}/regions": (patches.new_tensor(float(len(names))), 0.0),
                  f"{self.name}/refused": (patches.new_tensor(float(refused)), 0.0)}
        if total == 0:
            return {self.name: patches.sum() * 0.0, **counts}
        texts = batch.encode_text([make_caption([n], self.prompt) for n in vocab]).to(regions.dtype)
        position = {n: k for k, n in enumerate(vocab)}
        target = torch.tensor([position[n] for n in names], device=regions.device, dtype=torch.long)
        logits = batch.logit_scale.detach() * regions @ texts.T
        loss = F.cross_entropy(logits, target, reduction="sum") if names else regions.sum() * 0.0 + texts.sum() * 0.0
        return {self.name: loss * batch.world_size / total, **counts}
