"""Binomial proportions with 95 % Wilson score intervals (the probes' error bars)."""
from __future__ import annotations

from data_prep.stats import Z95, wilson_interval

__all__ = ["Z95", "proportion", "wilson_interval"]


def proportion(count: int, total: int, z: float = Z95) -> dict:
    """``{"share", "count", "total", "ci"}``; share and ci are ``None`` when ``total == 0``."""
    ci = wilson_interval(count, total, z)
    return {
        "share": (count / total) if total else None,
        "count": int(count),
        "total": int(total),
        "ci": list(ci) if ci is not None else None,
    }
