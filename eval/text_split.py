"""Per-object caption splitting (paper section 7.12): an order-free text embedding of a caption.

Instead of encoding "a dog, a pizza and a car" as one sequence (where the text encoder favours
the first mention), each object phrase is encoded on its own, the L2-normalised phrase
embeddings are averaged and the mean is L2-normalised again. The result is invariant to the
order of the objects by construction, so TOR / ITM run on it show what remains of the bias once
the caption's word order is taken out of the text tower.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

__all__ = ["encode_split"]


def encode_split(
    adapter: Any, object_lists: Sequence[Sequence[str]], template: str = "{}", batch_size: int = 1024
) -> torch.Tensor:
    """Order-free caption embeddings: normalised mean of the normalised per-object phrase embeddings.

    Args:
        adapter: anything with ``tokenizer(list[str]) -> LongTensor`` and
            ``encode_text(tokens) -> Tensor [B, D]`` (e.g. ``eval.model_access.ClipAdapter``).
        object_lists: one list of object names per caption, e.g. ``[["dog", "pizza"], ...]``.
        template: format string turning a name into its phrase, e.g. ``"a photo of a {}"``.
        batch_size: phrases tokenised and encoded per call. Each distinct phrase is encoded once.

    Returns:
        float32 tensor ``[N, D]`` on the CPU, one unit-norm row per caption.
    """
    if "{}" not in template:
        raise ValueError(f"template={template!r} must contain '{{}}' where the object name goes")
    if len(object_lists) == 0:
        raise ValueError("object_lists is empty: nothing to encode")
    empty = [i for i, objs in enumerate(object_lists) if len(objs) == 0]
    if empty:
        raise ValueError(f"captions {empty[:5]} have no objects; each caption needs at least one name")

    phrases = list(dict.fromkeys(template.format(n) for objs in object_lists for n in objs))
    index = {p: i for i, p in enumerate(phrases)}
    chunks = []
    with torch.no_grad():
        for start in range(0, len(phrases), batch_size):
            tokens = adapter.tokenizer(phrases[start: start + batch_size])
            chunks.append(F.normalize(adapter.encode_text(tokens).float().cpu(), dim=-1))
    phrase_emb = torch.cat(chunks)

    # Mean per caption as a sparse-free matrix product: weights[i, j] = 1/n_i for phrase j in caption i.
    weights = torch.zeros(len(object_lists), len(phrases))
    for i, objs in enumerate(object_lists):
        for n in objs:
            weights[i, index[template.format(n)]] += 1.0 / len(objs)
    return F.normalize(weights @ phrase_emb, dim=-1)
