"""Text encoding at inference with each shared caption prefix computed once (a token trie).

With a causal mask, the text tower's activations at position ``i`` depend only on tokens
``0..i``. Captions that begin alike ("a photo of a dog, ..." and "a photo of a dog and ...")
therefore have the same activations, in every layer, over their common prefix. The probes' caption
sets are made of such captions (templates over permutations of object names): of the 38,833
token positions of the quickstart callback's 4,287 captions, 17,238 are distinct prefixes (44 %).

:func:`encode_prefix_trie` runs the tower once per *node* of the token trie of the rows (a node =
a distinct prefix) instead of once per (row, position): every per-token op (embeddings, layer
norms, the QKV, output and MLP projections) runs on the nodes, and each node's query attends to the
keys and values of its own path from the root, which are exactly the positions ``0..i`` of every
row it belongs to. The result equals open_clip's ``encode_text`` up to float rounding (a different
GEMM shape and an unfused softmax; ~1e-7, ``tests/test_prefix_sharing.py``).

Used only where it is exact and cheap to check: inference (no autograd, eval mode) on a tower that
length trimming accepts (:func:`eval.text_encoding.trim_ineligibility`) whose blocks are plain
``ResidualAttentionBlock`` over ``nn.MultiheadAttention`` without extra key/value biases.
:class:`eval.model_access.ClipAdapter` uses it (``share_prefixes=True``) and otherwise falls back to
length-trimmed batches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eval.text_encoding import _fast_path_ready, _pooled, _tower

__all__ = ["prefix_sharing_ineligibility", "encode_prefix_trie", "trie_chunks"]


def prefix_sharing_ineligibility(model: nn.Module) -> str | None:
    """Why ``model``'s text cannot be encoded over a prefix trie right now; ``None`` if it can."""
    tower = _tower(model)
    if isinstance(tower, str):
        return tower
    if not _fast_path_ready(tower.transformer):
        return "not plain inference (autograd on, train mode, or blocks other than ResidualAttentionBlock)"
    odd = [b for b in tower.transformer.resblocks
           if not b.attn._qkv_same_embed_dim or b.attn.bias_k is not None or b.attn.add_zero_attn]
    if odd:
        return "attention with separate q/k/v weights, extra key/value biases or zero attention"
    return None


def trie_chunks(rows: torch.Tensor, lengths: torch.Tensor, budget: int) -> list[int]:
    """Sizes of consecutive chunks of lexicographically sorted ``rows`` (``lengths``: tokens used per
    row) whose tries hold at most ``budget`` nodes each (a longer single row makes its own chunk).

    In sorted order a row adds ``length - (common prefix with the previous row)`` nodes to its
    chunk's trie; a chunk's first row adds all of its ``length``."""
    if rows.shape[0] == 0:
        return []
    same = rows[1:] == rows[:-1]
    width = rows.shape[1]
    # common prefix length with the previous row: first position where they differ
    differs = torch.where(~same, torch.arange(width).expand_as(same), torch.full_like(same, width, dtype=torch.long))
    lcp = torch.minimum(differs.min(dim=1).values, torch.minimum(lengths[1:], lengths[:-1]))
    new = (lengths[1:] - lcp).tolist()
    full = lengths.tolist()
    sizes, count, nodes = [], 1, full[0]
    for i, added in enumerate(new, start=1):
        if nodes + added <= budget:
            count, nodes = count + 1, nodes + added
        else:
            sizes.append(count)
            count, nodes = 1, full[i]
    sizes.append(count)
    return sizes


def _trie(rows: list[list[int]], ends: list[int]) -> tuple[list[int], list[int], list[list[int]]]:
    """The token trie of ``rows`` (each up to its pooled position ``end``): ``(token, depth)`` per node
    and each row's node ids, padded to the longest row by repeating its last node (the causal mask
    hides the padding from every position that is read)."""
    index: dict[tuple[int, int], int] = {}
    tokens, depths, paths = [], [], []
    length = max(ends) + 1
    for row, end in zip(rows, ends):
        parent, path = -1, []
        for depth in range(end + 1):
            key = (parent, row[depth])
            node = index.get(key)
            if node is None:
                node = index[key] = len(tokens)
                tokens.append(row[depth])
                depths.append(depth)
            path.append(node)
            parent = node
        paths.append(path + [parent] * (length - end - 1))
    return tokens, depths, paths


def _groups(ends: list[int], paths: torch.Tensor, budget: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Rows grouped by length for the attention: ``(row node ids (n, L_g), real positions (n, L_g))``
    per group, rows sorted by length, each group cut to its longest row, at most ``budget`` tokens."""
    order = sorted(range(len(ends)), key=ends.__getitem__)
    groups, start = [], 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (stop + 1 - start) * (ends[order[stop]] + 1) <= budget:
            stop += 1
        length = ends[order[stop - 1]] + 1
        rows = torch.tensor(order[start:stop])
        real = torch.arange(length)[None, :] <= torch.tensor([ends[r] for r in order[start:stop]])[:, None]
        groups.append((paths[rows, :length], real))
        start = stop
    return groups


def _attention(block: nn.Module, h: torch.Tensor, groups: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``block.attn`` (causal self-attention) with q/k/v and the output projection computed once per
    node; the attention itself runs on the rows, grouped by length, each node's output written back
    from a row that holds it (every row holding a node gives it the same value)."""
    attn = block.attn
    heads, width = attn.num_heads, h.shape[-1]
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)
    out = torch.empty_like(h)
    scale = (width // heads) ** -0.5
    longest = max(nodes.shape[1] for nodes, _ in groups)
    future = torch.ones(longest, longest, dtype=torch.bool, device=h.device).triu_(1)
    for nodes, real in groups:
        rows, length = nodes.shape
        q, k, v = qkv[nodes].view(rows, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        scores = (q * scale) @ k.transpose(-1, -2)  # (rows, heads, L, L); torch's CPU SDPA kernels are
        o = scores.masked_fill_(future[:length, :length], float("-inf")).softmax(dim=-1) @ v  # slower here
        out[nodes[real]] = o.transpose(1, 2)[real].reshape(-1, width)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


def encode_prefix_trie(model: nn.Module, text: torch.Tensor, budget: int = 8192) -> torch.Tensor:
    """``model.encode_text(text)`` (unnormalised) for an eligible model at inference, each distinct
    token prefix of the rows computed once (:func:`prefix_sharing_ineligibility` must be None)."""
    tower = _tower(model)
    ends = _pooled(tower, text).tolist()
    tokens, depths, paths = _trie(text.tolist(), ends)
    device = text.device
    row_nodes = torch.tensor(paths)
    groups = [(nodes.to(device), real.to(device)) for nodes, real in _groups(ends, row_nodes, budget)]
    row_end = row_nodes[torch.arange(len(ends)), torch.tensor(ends)].to(device)
    cast_dtype = tower.transformer.get_cast_dtype()
    x = (tower.token_embedding(torch.tensor(tokens, device=device)).to(cast_dtype)
         + tower.positional_embedding[torch.tensor(depths, device=device)].to(cast_dtype))
    for block in tower.transformer.resblocks:  # ResidualAttentionBlock.forward, per node
        x = x + block.ls_1(_attention(block, block.ln_1(x), groups))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    x = tower.ln_final(x[row_end])
    if tower.text_projection is not None:
        x = tower.text_projection(x) if isinstance(tower.text_projection, nn.Linear) else x @ tower.text_projection
    return x
