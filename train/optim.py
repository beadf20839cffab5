"""AdamW parameter groups and the step → LR-multiplier schedule (a pure function, so resume is exact)."""
from __future__ import annotations

import math

import torch


def no_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Gains, biases, norms, embeddings of ndim < 2 and ``logit_scale``/``logit_bias`` get no weight decay."""
    return param.ndim < 2 or "bn" in name or "ln" in name or "norm" in name or name.endswith(".bias") or "logit_" in name


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weights and the exempt parameters (see :func:`no_decay`)."""
    decay, exempt = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (exempt if no_decay(name, p) else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": exempt, "weight_decay": 0.0},
    ]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """LR multiplier at optimizer step ``step``: linear warmup to 1, then cosine to ``min_lr_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
