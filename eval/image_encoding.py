"""Image encoding at inference: open_clip's ViT forward, its blocks on torch's fused kernel and the
last block on the class token only.

open_clip's ``VisionTransformer`` pools the class token (``pool_type='tok'``), so of the last
block only the class token's row is read: its query, output projection and MLP run on that row
alone (keys and values on all tokens). The blocks before it run through
``torch._transformer_encoder_layer_fwd`` (the kernel of ``nn.TransformerEncoderLayer``'s inference
fast path: pre-norm attention + exact-GELU MLP in one call) where a block has that exact form.
The embeddings equal ``model.encode_image`` up to float rounding (~1e-7,
``tests/test_image_encoding.py``).

Used only at inference (no autograd, eval mode) on the plain form (:func:`fast_image_ineligibility`);
:class:`eval.model_access.ClipAdapter` falls back to ``model.encode_image`` otherwise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.transformer import ResidualAttentionBlock, Transformer, VisionTransformer
from torch import nn

__all__ = ["fast_image_ineligibility", "encode_image_fast"]


def fast_image_ineligibility(model: nn.Module) -> str | None:
    """Why ``model``'s images cannot take :func:`encode_image_fast` right now; ``None`` if they can."""
    if not isinstance(model, (CLIP, CustomTextCLIP)) or type(model).encode_image not in (
            CLIP.encode_image, CustomTextCLIP.encode_image):
        return "not an open_clip CLIP with its own encode_image"
    visual = model.visual
    if type(visual) is not VisionTransformer:
        return f"image tower is {type(visual).__name__}, not open_clip's VisionTransformer"
    if visual.attn_pool is not None or visual.pool_type != "tok" or visual.output_tokens:
        return "pooling other than the class token"
    transformer = visual.transformer
    if torch.is_grad_enabled() or visual.training:
        return "not plain inference (autograd on or train mode)"
    if type(transformer) is not Transformer or not transformer.batch_first or not len(transformer.resblocks):
        return "not open_clip's batch-first Transformer with blocks"
    for b in transformer.resblocks:
        attn = getattr(b, "attn", None)
        if (type(b) is not ResidualAttentionBlock or hasattr(b, "ln_1_kv") or type(attn) is not nn.MultiheadAttention
                or not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn
                or not attn.batch_first):
            return "blocks other than ResidualAttentionBlock over plain nn.MultiheadAttention"
    return None


def _fusable(block: ResidualAttentionBlock, x: torch.Tensor) -> bool:
    """The block is exactly ``nn.TransformerEncoderLayer(norm_first=True, activation=gelu)``."""
    mlp = block.mlp
    norms = (block.ln_1, block.ln_2)
    linears = (mlp.c_fc, mlp.c_proj, block.attn.out_proj)
    return (isinstance(block.ls_1, nn.Identity) and isinstance(block.ls_2, nn.Identity)
            and list(mlp) == [mlp.c_fc, mlp.gelu, mlp.c_proj] and type(mlp.gelu) is nn.GELU
            and mlp.gelu.approximate == "none"
            and all(isinstance(n, nn.LayerNorm) and n.weight is not None and n.bias is not None
                    and n.eps == block.ln_1.eps and n.normalized_shape == (x.shape[-1],) for n in norms)
            and all(type(lin) in (nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear)
                    and lin.bias is not None for lin in linears)
            and block.attn.in_proj_bias is not None and x.dtype == torch.float32)


def _fused_block(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    attn, mlp = block.attn, block.mlp
    return torch._transformer_encoder_layer_fwd(
        x, attn.embed_dim, attn.num_heads, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight,
        attn.out_proj.bias, True, True, block.ln_1.eps, block.ln_1.weight, block.ln_1.bias, block.ln_2.weight,
        block.ln_2.bias, mlp.c_fc.weight, mlp.c_fc.bias, mlp.c_proj.weight, mlp.c_proj.bias, None, None)


def _class_token_block(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """``block(x)[:, 0]``: the class token's row of the block's output, ``(N, width)``."""
    attn = block.attn
    n, length, width = x.shape
    heads = attn.num_heads
    h = block.ln_1(x)
    w, b = attn.in_proj_weight, attn.in_proj_bias
    q = F.linear(h[:, 0], w[:width], None if b is None else b[:width]).view(n, heads, 1, width // heads)
    k, v = F.linear(h, w[width:], None if b is None else b[width:]).view(n, length, 2, heads, width // heads).unbind(2)
    o = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2)).reshape(n, width)
    x0 = x[:, 0] + block.ls_1(F.linear(o, attn.out_proj.weight, attn.out_proj.bias))
    return x0 + block.ls_2(block.mlp(block.ln_2(x0)))


def encode_image_fast(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``model.encode_image(images)`` (unnormalised) for an eligible model at inference
    (:func:`fast_image_ineligibility` must be None)."""
    visual = model.visual
    x = visual._embeds(images)
    *blocks, last = visual.transformer.resblocks
    for block in blocks:
        x = _fused_block(block, x) if _fusable(block, x) else block(x)
    x = visual.ln_post(_class_token_block(last, x))  # ln_post is per token: pooling before it is the same
    return x @ visual.proj if visual.proj is not None else x
