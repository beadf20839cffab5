"""Text encoding at inference with each shared caption prefix computed once (a token trie).

With a causal mask, the text tower's activations at position ``i`` depend only on tokens
``0..i``. Captions that begin alike ("a photo of a dog, ..." and "a photo of a dog and ...")
therefore have the same activations, in every layer, over their common prefix. The probes' caption
sets are made of such captions (templates over permutations of object names): of the 38,833
token positions of the quickstart callback's 4,287 captions, 17,238 are distinct prefixes (44 %).

:func:`encode_prefix_trie` runs the tower once per *node* of the token trie of the rows (a node =
a distinct prefix) instead of once per (row, position): every per-token op (embeddings, layer
norms, the QKV, output and MLP projections) runs on the nodes, and each node's query attends once
to the keys and values of its own path from the root, which are exactly the positions ``0..i`` of
every row it belongs to. With the rows in lexicographic order, the first row holding a node owns
it, and a row owns a suffix of its positions (those past its common prefix with the previous row):
the attention runs per owning row, from its owned positions only. The last block is needed only at
the pooled positions: its queries, output projection and MLP run on those nodes alone (keys and
values on all). The result equals open_clip's ``encode_text`` up to float rounding (different GEMM
shapes and an unfused softmax; ~1e-7, ``tests/test_prefix_sharing.py``). Everything that depends on
the tokens only (the trie, the groups, the masks) is a :class:`TriePlan`, which
:class:`eval.model_access.ClipAdapter` builds once per token batch and reuses at every evaluation.

Used only where it is exact and cheap to check: inference (no autograd, eval mode) on a tower that
length trimming accepts (:func:`eval.text_encoding.trim_ineligibility`) whose blocks are plain
``ResidualAttentionBlock`` over ``nn.MultiheadAttention`` without extra key/value biases.
:class:`eval.model_access.ClipAdapter` uses it (``share_prefixes=True``) and otherwise falls back to
length-trimmed batches.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from eval.text_encoding import _fast_path_ready, _pooled, _tower

__all__ = ["prefix_sharing_ineligibility", "encode_prefix_trie", "trie_chunks", "trie_plan", "TriePlan"]


def prefix_sharing_ineligibility(model: nn.Module) -> str | None:
    """Why ``model``'s text cannot be encoded over a prefix trie right now; ``None`` if it can."""
    tower = _tower(model)
    if isinstance(tower, str):
        return tower
    if not len(tower.transformer.resblocks):
        return "a text tower without transformer blocks"
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


@dataclass
class AttentionGroup:
    """Rows of one length group, for the attention of the nodes they own.

    ``keys``: ``(g, L)`` node ids of each row's path (padded by its last node); ``query_nodes``:
    ``(g, S)`` the nodes whose queries run in this group (padded by repeating the last one);
    ``owned``: ``(g, S)`` which of them are real; ``hidden``: ``(g, S, L)`` key positions a query
    must not see (later than the query's own position, the padding included)."""

    keys: torch.Tensor
    query_nodes: torch.Tensor
    owned: torch.Tensor
    hidden: torch.Tensor

    def to(self, device: torch.device) -> "AttentionGroup":
        return AttentionGroup(*(t.to(device) for t in (self.keys, self.query_nodes, self.owned, self.hidden)))


@dataclass
class TriePlan:
    """Everything about a token batch that does not depend on the weights (cached by the adapter).

    ``tokens``/``depths``: per trie node; ``groups``: the attention of the blocks before the last,
    each node's query run once, by the first row (in sorted order) that holds it — a suffix of that
    row; ``last_groups``: the last block's, where only the pooled nodes are read (``ends``, once each);
    ``row_end``: per row, the index of its pooled node in ``ends``."""

    tokens: torch.Tensor
    depths: torch.Tensor
    groups: list[AttentionGroup]
    ends: torch.Tensor
    last_groups: list[AttentionGroup]
    row_end: torch.Tensor

    def to(self, device: torch.device) -> "TriePlan":
        return TriePlan(self.tokens.to(device), self.depths.to(device), [g.to(device) for g in self.groups],
                        self.ends.to(device), [g.to(device) for g in self.last_groups], self.row_end.to(device))


def _attention_groups(paths: list[list[int]], spans: list[tuple[int, int]], budget: int) -> list[AttentionGroup]:
    """Rows grouped for the attention, at most ``budget`` key positions (rows x longest path) a group:
    row i attends from its positions ``spans[i] = (first, last)`` to positions ``0..`` of its path.
    Rows are ordered by how many queries they run, then by length, so a group pads little."""
    order = sorted(range(len(paths)), key=lambda i: (spans[i][1] - spans[i][0], len(paths[i])))
    groups, start = [], 0
    while start < len(order):
        stop, length = start + 1, len(paths[order[start]])
        while stop < len(order) and (stop + 1 - start) * max(length, len(paths[order[stop]])) <= budget:
            length = max(length, len(paths[order[stop]]))
            stop += 1
        rows = order[start:stop]
        width = max(spans[i][1] - spans[i][0] + 1 for i in rows)
        keys = torch.tensor([paths[i] + [paths[i][-1]] * (length - len(paths[i])) for i in rows])
        first = torch.tensor([spans[i][0] for i in rows])
        count = torch.tensor([spans[i][1] - spans[i][0] + 1 for i in rows])
        offset = torch.arange(width)
        owned = offset[None, :] < count[:, None]
        position = first[:, None] + torch.minimum(offset[None, :], count[:, None] - 1)  # padding: the last query
        hidden = torch.arange(length)[None, None, :] > position[:, :, None]
        groups.append(AttentionGroup(keys, keys.gather(1, position), owned, hidden))
        start = stop
    return groups


#: key positions (rows x length) per attention group: smaller groups pad less (measured fastest
#: on the callback's captions among 2k-16k)
ATTENTION_BUDGET = 4096


def trie_plan(text: torch.Tensor, ends: list[int], budget: int = ATTENTION_BUDGET) -> TriePlan:
    """The :class:`TriePlan` of ``text`` (``(rows, L)`` token ids) with pooled positions ``ends``;
    ``budget``: key positions per attention group.

    Rows in lexicographic order (of their tokens up to ``end``) share with the previous row exactly
    their common prefix, so each row adds the nodes past it: those it owns and runs the queries of."""
    rows = [r[:e + 1] for r, e in zip(text.tolist(), ends)]
    order = sorted(range(len(rows)), key=rows.__getitem__)
    tokens: list[int] = []
    depths: list[int] = []
    paths: list[list[int]] = [[] for _ in rows]
    owners, spans = [], []  # rows that own nodes, and the positions (first, last) they own
    previous: list[int] = []
    previous_path: list[int] = []
    for i in order:
        row = rows[i]
        common = 0
        for a, b in zip(row, previous):
            if a != b:
                break
            common += 1
        fresh = list(range(len(tokens), len(tokens) + len(row) - common))
        paths[i] = previous_path[:common] + fresh
        tokens += row[common:]
        depths += range(common, len(row))
        if fresh:
            owners.append(i)
            spans.append((common, len(row) - 1))
        previous, previous_path = row, paths[i]
    end_nodes = [paths[i][-1] for i in owners]
    slot = {node: k for k, node in enumerate(end_nodes)}
    owner_paths = [paths[i] for i in owners]
    return TriePlan(
        tokens=torch.tensor(tokens), depths=torch.tensor(depths),
        groups=_attention_groups(owner_paths, spans, budget),
        ends=torch.tensor(end_nodes),
        last_groups=_attention_groups(owner_paths, [(len(p) - 1, len(p) - 1) for p in owner_paths], budget),
        row_end=torch.tensor([slot[p[-1]] for p in paths]),
    )


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: AttentionGroup, heads: int) -> torch.Tensor:
    """Causal attention of ``group``'s queries (``q``: per query node, scaled) over its rows' keys:
    ``(g, S, width)``."""
    rows, length = group.keys.shape
    width = q.shape[-1]
    head = width // heads
    q = q[group.query_nodes].view(rows, -1, heads, head).transpose(1, 2)
    k = k[group.keys].view(rows, length, heads, head).transpose(1, 2)
    v = v[group.keys].view(rows, length, heads, head).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2)).masked_fill_(group.hidden[:, None], float("-inf"))
    return (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(rows, -1, width)


def _attention(block: nn.Module, h: torch.Tensor, groups: list[AttentionGroup]) -> torch.Tensor:
    """``block.attn`` (causal self-attention) with q/k/v and the output projection computed once per
    node and each node's query attending once, in the row that owns it."""
    attn = block.attn
    heads, width = attn.num_heads, h.shape[-1]
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).view(-1, 3, width)
    q, k, v = qkv[:, 0] * (width // heads) ** -0.5, qkv[:, 1], qkv[:, 2]
    out = torch.empty_like(h)
    for group in groups:
        out[group.query_nodes[group.owned]] = _attend(q, k, v, group, heads)[group.owned]
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


def _last_block(block: nn.Module, x: torch.Tensor, plan: TriePlan) -> torch.Tensor:
    """The last ``ResidualAttentionBlock`` on the pooled nodes only (``plan.ends``, in that order):
    keys and values from every node, queries, output projection and MLP from the pooled ones."""
    attn = block.attn
    heads, width = attn.num_heads, x.shape[-1]
    h = block.ln_1(x)
    w, b = attn.in_proj_weight, attn.in_proj_bias
    kv = F.linear(h, w[width:], None if b is None else b[width:]).view(-1, 2, width)
    # the pooled nodes' queries, indexed as the groups index nodes: scatter into a node-sized buffer
    q = torch.empty_like(h)
    q[plan.ends] = F.linear(h[plan.ends], w[:width], None if b is None else b[:width]) * (width // heads) ** -0.5
    out = torch.empty_like(h)
    for group in plan.last_groups:
        out[group.query_nodes[group.owned]] = _attend(q, kv[:, 0], kv[:, 1], group, heads)[group.owned]
    x = x[plan.ends] + block.ls_1(F.linear(out[plan.ends], attn.out_proj.weight, attn.out_proj.bias))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def encode_prefix_trie(model: nn.Module, text: torch.Tensor, budget: int = ATTENTION_BUDGET,
                       plan: TriePlan | None = None) -> torch.Tensor:
    """``model.encode_text(text)`` (unnormalised) for an eligible model at inference, each distinct
    token prefix of the rows computed once (:func:`prefix_sharing_ineligibility` must be None).
    ``plan``: :func:`trie_plan` of ``text`` (built here if not given; it depends on the tokens only)."""
    tower = _tower(model)
    device = text.device
    if plan is None:
        plan = trie_plan(text, _pooled(tower, text).tolist(), budget).to(device)
    cast_dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(plan.tokens).to(cast_dtype) + tower.positional_embedding[plan.depths].to(cast_dtype)
    *blocks, last = tower.transformer.resblocks
    for block in blocks:  # ResidualAttentionBlock.forward, per node
        x = x + block.ls_1(_attention(block, block.ln_1(x), plan.groups))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    x = tower.ln_final(_last_block(last, x, plan)[plan.row_end])
    if tower.text_projection is not None:
        x = tower.text_projection(x) if isinstance(tower.text_projection, nn.Linear) else x @ tower.text_projection
    return x
