"""Order-invariant text objective: a mention-permuted caption as a second positive for its image."""
from __future__ import annotations

import random
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from data_prep.checks import is_int
from train.aux_losses.base import AuxBatch, AuxLoss, Terms
from train.mitigations import CaptionShuffle

Mode = Literal["multi_positive", "pull"]


def multi_positive_sums(
    images: Tensor, texts_all: Tensor, perms_all: Tensor, mask_all: Tensor, images_all: Tensor,
    offset: int, scale: Tensor,
) -> tuple[Tensor, Tensor]:
    """Summed losses over this rank's anchors (samples with a permuted caption).

    Columns: every caption of the (global) batch, then every permuted caption (``perms_all[mask_all]``).
    - image -> text, two positives, SupCon's L_out form (mean of log-probabilities over positives):
      ``-(log p(t_g | i_g) + log p(p_g | i_g)) / 2``, softmax over all columns;
    - permuted text -> image: ``-log p(i_g | p_g)``, softmax over every image of the batch.

    Args:
        images: ``[B, D]`` this rank's image embeddings; rows ``offset .. offset+B`` of the global batch.
        texts_all, perms_all: ``[N, D]`` global captions and permuted captions (rows without one: any value).
        mask_all: ``[N]`` bool, which samples have a permuted caption.
        images_all: ``[N, D]`` global image embeddings.
        scale: the logit scale (exp'd).
    """
    n, b = texts_all.shape[0], images.shape[0]
    cols = torch.cat([texts_all, perms_all[mask_all]])
    perm_col = torch.cumsum(mask_all.long(), 0) - 1 + n  # column of sample g's permuted caption
    local = torch.arange(offset, offset + b, device=images.device)
    anchors = local[mask_all[local]]
    if anchors.numel() == 0:
        # Every gathered tensor must stay in the graph: their backward is a collective that every
        # rank has to join, also a rank without anchors of its own (else DDP hangs).
        zero = (images.sum() + texts_all.sum() + perms_all.sum() + images_all.sum()) * 0.0
        return zero, zero
    logp = F.log_softmax(scale * images[anchors - offset] @ cols.T, dim=-1)
    rows = torch.arange(anchors.numel(), device=images.device)
    i2t = -(logp[rows, anchors] + logp[rows, perm_col[anchors]]) / 2
    p2i = F.cross_entropy(scale * perms_all[anchors] @ images_all.T, anchors, reduction="none")
    return i2t.sum(), p2i.sum()


class OrderInvariantText(AuxLoss):
    """Each caption naming >= 2 objects gets a mention-permuted twin that must match the image as well.

    The twin comes from :class:`train.mitigations.CaptionShuffle` (rendered samples: rebuilt from
    ``objects`` with the sample's template; free-form captions: the noun phrases found by
    ``data_prep.mentions`` permuted in place), redrawn until it differs from the caption (up to
    ``max_tries``). Draws are seeded by (run seed, ``name``, sample key, step): same seed, same run.

    ``mode="multi_positive"`` (default): image -> {caption, twin} as two positives against every
    caption and twin of the (global) batch, in SupCon's L_out form, plus twin -> image against every
    image (:func:`multi_positive_sums`); averaged, normalised by the global number of twins. Chosen
    over ``"pull"`` (``1 - cos(caption, twin)``) because (a) it targets what the ITM probe measures,
    the image's similarity to a caption regardless of its order, and its optimum gives both orders
    equal probability; (b) the twin stays contrastive, so the text tower cannot satisfy it by
    shrinking the differences between all captions; (c) it trains the image tower too. ``pull`` is
    the cheap switch (no gather, text tower only). The temperature is the model's logit scale,
    detached: this term never moves the shared temperature.

    Terms: ``<name>`` and ``<name>/coverage`` (weight 0: share of this rank's samples with a twin).
    Compare with data-side shuffling (``configs/mitigation/caption_shuffle.yaml``), which replaces
    the caption instead of adding an objective.
    """

    needs_meta = True

    def __init__(self, weight: float = 1.0, mode: Mode = "multi_positive", vocabulary: str = "open",
                 max_tries: int = 8, name: str = "order_invariant") -> None:
        """
        Args:
            weight: Factor of the term in the training loss.
            mode: ``multi_positive`` (twin as a second positive) or ``pull`` (1 - cosine of caption and twin).
            vocabulary: Object names for free-form captions (``data_prep.mentions``: ``open``, ``default``,
                ``coco``, ``rendered`` or a TSV path).
            max_tries: Permutations drawn per caption until one differs from it; none: no twin.
            name: Term name, logged as ``train/aux/<name>``.
        """
        super().__init__(weight)
        if mode not in ("multi_positive", "pull"):
            raise ValueError(f"mode must be 'multi_positive' or 'pull', got {mode!r}")
        if not is_int(max_tries) or max_tries < 1:
            raise ValueError(f"max_tries must be an int >= 1, got {max_tries!r}")
        self.mode, self.max_tries, self.name = mode, max_tries, name
        self._shuffle = CaptionShuffle(p=1.0, vocabulary=vocabulary)

    def twin(self, caption: str, meta: dict, rng: random.Random) -> str | None:
        """A mention-permuted version of ``caption`` that differs from it, or None."""
        for _ in range(self.max_tries):
            _, new, _ = self._shuffle.apply(None, caption, meta, rng)
            if new != caption:
                return new
        return None

    def forward(self, batch: AuxBatch) -> Terms:
        txt, img = batch.text_features, batch.image_features
        b = txt.shape[0]
        captions = {}
        for i, meta in enumerate(batch.meta):
            new = self.twin(meta.get("caption", ""), meta, batch.rng(self.name, i))
            if new is not None:
                captions[i] = new
        mask, perms, total = batch.encode_extra(captions)
        coverage = txt.new_tensor(len(captions) / max(b, 1))
        if total == 0:
            return {self.name: txt.sum() * 0.0, f"{self.name}/coverage": (coverage, 0.0)}
        if self.mode == "pull":
            loss = (1 - (txt * perms).sum(-1))[mask].sum()
        else:
            i2t, p2i = multi_positive_sums(
                img, batch.gather(txt), batch.gather(perms), batch.gather_nograd(mask.to(torch.uint8)).bool(), batch.gather(img),
                batch.rank * b, batch.logit_scale.detach())
            loss = (i2t + p2i) / 2
        return {self.name: loss * batch.world_size / total, f"{self.name}/coverage": (coverage, 0.0)}
