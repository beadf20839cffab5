"""Exact image↔text retrieval recall over a whole validation set (pair i ↔ i is the only match)."""
from __future__ import annotations

import torch


def retrieval_recall(
    image_features: torch.Tensor, text_features: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """R@k both ways for N paired, L2-normalised embeddings.

    The rank of the true partner is the number of candidates scoring strictly higher, so ties count
    in the query's favour only if exact. Returns ``{"i2t_R@1": ..., "t2i_R@1": ..., ...}``.
    """
    if image_features.shape != text_features.shape:
        raise ValueError(f"image/text features differ in shape: {tuple(image_features.shape)} vs {tuple(text_features.shape)}")
    sim = image_features.float() @ text_features.float().T
    true = sim.diagonal()
    i2t_rank = (sim > true[:, None]).sum(dim=1)
    t2i_rank = (sim > true[None, :]).sum(dim=0)
    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_R@{k}"] = (i2t_rank < k).float().mean().item()
        out[f"t2i_R@{k}"] = (t2i_rank < k).float().mean().item()
    return out
