"""NegCLIP-style hard negatives: a caption with its own words reordered joins the text candidates of
its image only, so the model must tell word order apart (the opposite push of caption shuffling)."""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import Tensor

from data_prep.relations import OPPOSITE, rebuild_caption
from train.aux_losses.base import AuxBatch, AuxLoss, Terms
from train.mitigations import CaptionShuffle, _is_rendered, _mentioned

KINDS = ("swap_obj", "replace_rel", "swap_att", "swap_mentions")


def hard_negative(meta: dict, caption: str, rng: random.Random, shuffle: CaptionShuffle,
                  max_tries: int = 8) -> tuple[str, str] | None:
    """``(negative caption, kind)`` built from the caption's own spans, or None.

    Rendered relation captions: the two objects swapped (``swap_obj``) or the relation flipped
    (``replace_rel``), one of the two at random; attribute captions: the size words swapped
    (``swap_att``); rendered list captions: none (reordering a list keeps it true); free-form
    captions: two noun phrases swapped (``swap_mentions``, :class:`train.mitigations.CaptionShuffle`),
    redrawn up to ``max_tries`` times until it differs.
    """
    if _is_rendered(meta):
        kind = meta.get("caption_kind", "list")
        objects = meta["objects"]
        names = [objects[i]["name"] for i in _mentioned(objects)]
        if kind == "relation" and len(names) == 2:
            if rng.random() < 0.5:
                return rebuild_caption(meta, names[::-1]), "swap_obj"
            return rebuild_caption({**meta, "relation": OPPOSITE[meta["relation"]]}, names), "replace_rel"
        if kind == "attribute" and len(names) == 2:
            return rebuild_caption({**meta, "size_words": list(meta["size_words"])[::-1]}, names), "swap_att"
        return None
    for _ in range(max_tries):
        _, new, _ = shuffle.apply(None, caption, meta, rng)
        if new != caption:
            return new, "swap_mentions"
    return None


def hard_negative_sum(images: Tensor, texts_all: Tensor, negatives: Tensor, mask: Tensor, offset: int,
                      scale: Tensor) -> Tensor:
    """Summed image -> text cross-entropy of this rank's anchors (images with a negative).

    Anchor g's columns: every caption of the global batch, then its own negative; the target is its
    caption. ``images``/``negatives``/``mask``: this rank's ``[B, D]``, ``[B, D]``, ``[B]``; rows
    ``offset .. offset+B`` of ``texts_all`` ``[N, D]`` are its captions.
    """
    anchors = mask.nonzero().flatten()
    if anchors.numel() == 0:
        return (images.sum() + texts_all.sum() + negatives.sum()) * 0.0  # stay in the graph of the gather
    img = images[anchors]
    logits = torch.cat([img @ texts_all.T, (img * negatives[anchors]).sum(-1, keepdim=True)], dim=1) * scale
    return F.cross_entropy(logits, anchors + offset, reduction="sum")


class HardNegatives(AuxLoss):
    """Each caption with a hard negative (:func:`hard_negative`) gets it as one more candidate for its
    own image: ``-log p(caption | image)`` over the global batch's captions plus that negative,
    normalised by the global number of anchors. The temperature is the model's logit scale, detached.

    Draws are seeded by (run seed, ``name``, sample key, step). Terms: ``<name>`` and, weight 0,
    ``<name>/coverage`` (share of this rank's samples with a negative).
    """

    needs_meta = True

    def __init__(self, weight: float = 1.0, vocabulary: str = "open", max_tries: int = 8,
                 name: str = "hard_negatives") -> None:
        """
        Args:
            weight: Factor of the term in the training loss.
            vocabulary: Object names for free-form captions (``data_prep.mentions``).
            max_tries: Draws per free-form caption until a swap differs from it.
            name: Term name, logged as ``train/aux/<name>``.
        """
        super().__init__(weight)
        self.max_tries, self.name = max_tries, name
        self._shuffle = CaptionShuffle(p=1.0, vocabulary=vocabulary)

    def forward(self, batch: AuxBatch) -> Terms:
        txt, img = batch.text_features, batch.image_features
        b = txt.shape[0]
        captions = {}
        for i, meta in enumerate(batch.meta):
            got = hard_negative(meta, meta.get("caption", ""), batch.rng(self.name, i), self._shuffle, self.max_tries)
            if got is not None:
                captions[i] = got[0]
        mask, negatives, total = batch.encode_extra(captions)
        coverage = txt.new_tensor(len(captions) / max(b, 1))
        if total == 0:
            return {self.name: txt.sum() * 0.0, f"{self.name}/coverage": (coverage, 0.0)}
        loss = hard_negative_sum(img, batch.gather(txt), negatives, mask, batch.rank * b, batch.logit_scale.detach())
        return {self.name: loss * batch.world_size / total, f"{self.name}/coverage": (coverage, 0.0)}
