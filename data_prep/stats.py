"""Binomial proportions' 95 % Wilson score intervals, shared by data_prep's analyses and eval's probes
(eval imports data_prep, never the reverse)."""
from __future__ import annotations

import math

#: two-sided 95 % standard-normal quantile
Z95 = 1.959963984540054


def wilson_interval(count: int, total: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for ``count`` successes out of ``total`` trials.

    Args:
        count: number of successes, ``0 <= count <= total``.
        total: number of trials; ``0`` gives ``None`` (no interval exists).
        z: normal quantile (default: 95 % two-sided).
    """
    if count < 0 or total < 0 or count > total:
        raise ValueError(f"need 0 <= count <= total, got count={count}, total={total}")
    if total == 0:
        return None
    p = count / total
    z2 = z * z
    denom = 1.0 + z2 / total
    centre = (p + z2 / (2 * total)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total))
    return max(0.0, centre - half), min(1.0, centre + half)
