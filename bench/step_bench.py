"""One training step of an open_clip CLIP, in process, for the profiler and the roofline line.

Shared by ``bench/profile_step.py`` and ``bench/roofline.py`` (import it with ``bench/`` on
``sys.path``; the scripts do). The step is the one ``CLIPModule.training_step`` + Lightning run:
:func:`train.loss.contrastive_loss` (text trimming on by default), backward, grad-norm clip,
AdamW from :func:`train.optim.adamw`, logit-scale clamp — without Lightning's loop, so the numbers
are the model's, not the trainer's.

:func:`clip_train_flops` counts a step's model FLOPs from the model's shapes (matmuls 2·m·n·k,
attention scores and weighted sum, backward = 2× forward); :func:`gemm_flops_per_s` measures the
fp32 GEMM rate of this process's threads. Their ratio is the CPU analogue of MFU.
"""
from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from typing import Callable

import torch

from data_prep.captions import make_caption, training_templates
from eval.text_encoding import pooled_positions, trim_ineligibility
from train.loss import build_loss, contrastive_loss
from train.models import build_model_and_transforms
from train.optim import adamw, param_groups

LOGIT_SCALE_MAX = 4.6052  # ln 100, as train.module
_NAMES = ["dog", "apple", "red car", "pizza", "umbrella", "teddy bear", "clock", "banana", "bicycle", "cat",
          "traffic light", "hair drier", "sandwich", "elephant", "laptop", "horse"]


def rendered_like_captions(n: int, seed: int = 0) -> list[str]:
    """Captions shaped like the rendered corpus's (1-4 objects, its training templates): 5-20 tokens."""
    rng = random.Random(seed)
    templates = training_templates()
    return [make_caption(rng.sample(_NAMES, rng.randint(1, 4)), rng.choice(templates)) for _ in range(n)]


@dataclass
class Step:
    """A ready training step: ``run()`` does forward, backward, clip, optimizer step, clamp."""

    model: torch.nn.Module
    images: torch.Tensor
    texts: torch.Tensor
    optimizer: torch.optim.Optimizer
    run: Callable[[], torch.Tensor]
    text_len: int  # tokens the text tower runs on (trimmed length, or the full context)
    batch: int


def make_step(model_name: str = "clip-tiny", batch: int = 128, *, trim_text: bool = True,
              optimizer_impl: str = "auto", bf16: bool = False, compile_model: bool = False,
              clip_grad: float | None = 1.0, seed: int = 0) -> Step:
    """A training step of ``model_name`` (random init, nothing downloaded) on a fixed batch.

    ``bf16``: CPU autocast to bfloat16 around the forward (changes numerics; off in training).
    ``compile_model``: ``torch.compile`` the model (changes numerics slightly; off in training).
    """
    torch.manual_seed(seed)
    model, _, _ = build_model_and_transforms(model_name)
    model.train()
    import open_clip

    tok = open_clip.get_tokenizer(model_name)
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    images = torch.randn(batch, 3, size, size)
    texts = tok(rendered_like_captions(batch, seed))
    text_len = texts.shape[1]
    if trim_text and trim_ineligibility(model) is None:
        text_len = int(pooled_positions(model, texts).max()) + 1
    loss_fn = build_loss("clip")
    opt = adamw(param_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, impl=optimizer_impl)
    fwd_model = torch.compile(model) if compile_model else model
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def run() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = contrastive_loss(fwd_model, images, texts, loss_fn, trim_text=trim_text)
        loss.backward()
        if clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
        return loss.detach()

    return Step(model, images, texts, opt, run, text_len, batch)


def time_steps(step: Step, n: int, warmup: int = 2) -> list[float]:
    """Wall seconds of each of ``n`` steps after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step.run()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step.run()
        times.append(time.perf_counter() - t0)
    return times


# ---------------------------------------------------------------------- FLOPs from shapes

def _mm(m: int, n: int, k: int) -> int:
    return 2 * m * n * k


def _block_flops(tokens: int, width: int, mlp_width: int) -> int:
    """One pre-norm transformer block on ``tokens`` tokens (per sample, forward): qkv, scores,
    weighted sum, out-projection, 2-layer MLP. Norms, softmax, GELU and adds are left out (<1 %)."""
    qkv = _mm(tokens, 3 * width, width)
    scores = _mm(tokens, tokens, width)  # all heads together: heads × (T × T × head_dim)
    weighted = _mm(tokens, width, tokens)
    out = _mm(tokens, width, width)
    mlp = _mm(tokens, mlp_width, width) + _mm(tokens, width, mlp_width)
    return qkv + scores + weighted + out + mlp


def clip_forward_flops(model: torch.nn.Module, text_len: int) -> dict[str, int]:
    """Forward FLOPs per sample of an open_clip ``CLIP`` with a ``VisionTransformer`` image tower and
    its own text transformer, the text tower running on ``text_len`` tokens (the trimmed length).

    The contrastive logits (2·batch·embed per sample) are left out: they depend on the batch and
    are < 0.1 % at these sizes.
    """
    v = model.visual
    conv = v.conv1
    patches = v.grid_size[0] * v.grid_size[1]
    v_tokens = patches + (1 if getattr(v, "class_embedding", None) is not None else 0)
    v_width = conv.out_channels
    v_blocks = v.transformer.resblocks
    v_mlp = v_blocks[0].mlp.c_fc.out_features
    vision = _mm(patches, v_width, conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1])
    vision += len(v_blocks) * _block_flops(v_tokens, v_width, v_mlp)
    if v.proj is not None:
        vision += _mm(1, v.proj.shape[1], v.proj.shape[0])  # pooled token only
    t_blocks = model.transformer.resblocks
    t_width = model.transformer.width
    t_mlp = t_blocks[0].mlp.c_fc.out_features
    text = len(t_blocks) * _block_flops(text_len, t_width, t_mlp)
    proj = model.text_projection
    if proj is not None:
        w = proj.weight if isinstance(proj, torch.nn.Linear) else proj
        text += _mm(1, w.shape[0] if isinstance(proj, torch.nn.Linear) else w.shape[1], t_width)
    return {"vision": vision, "text": text, "total": vision + text}


def clip_train_flops(model: torch.nn.Module, text_len: int) -> dict[str, int]:
    """Forward + backward FLOPs per sample: 3× the forward (backward = grads of inputs and weights),
    except the patch convolution, whose input (the image) needs no gradient: 2× for it."""
    fwd = clip_forward_flops(model, text_len)
    v = model.visual
    conv = v.conv1
    patches = v.grid_size[0] * v.grid_size[1]
    conv_fwd = _mm(patches, conv.out_channels, conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1])
    return {"vision": 3 * fwd["vision"] - conv_fwd, "text": 3 * fwd["text"],
            "total": 3 * fwd["total"] - conv_fwd}


def counted_train_flops(step: Step) -> float:
    """Forward + backward FLOPs of one step per sample by ``torch.utils.flop_counter.FlopCounterMode``.

    Attention runs on SDPA's math backend here: FlopCounterMode has no formula for the CPU flash
    kernel (``_scaled_dot_product_flash_attention_for_cpu``) and would count its FLOPs as 0.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    loss_fn = build_loss("clip")
    step.model.zero_grad(set_to_none=True)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        loss = contrastive_loss(step.model, step.images, step.texts, loss_fn, trim_text=step.text_len < step.texts.shape[1])
        loss.backward()
    step.model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / step.batch


def gemm_flops_per_s(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 ``torch.mm`` rate (FLOP/s) of ``n × n`` matrices with this process's thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up (allocations, thread pool)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best
