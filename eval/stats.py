"""Binomial proportions with 95 % Wilson score intervals (the probes' error bars), and the 95 %
intervals of the summary indices built from them.

- :func:`lead_index_interval`: ``share(first) − mean share(others)`` of a multinomial (the
  retrieval indices ``order_bias``, ``size_bias`` and their ``_conditional``/``_own`` forms).
- :func:`difference_interval`: ``p1 − p2`` of two independent proportions (the ITM gap, Claim 1).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from data_prep.stats import Z95, wilson_interval

__all__ = ["MIN_ITEMS", "Z95", "difference_interval", "difference_items_needed", "gated_entry", "lead_index_interval",
           "lead_index_items_needed", "mean_interval", "proportion", "wilson_interval"]

#: fewest items behind a reported number of the real-data and benchmark probes (zero-shot,
#: word order, SugarCrepe, COCO bias): below it the value is ``None`` and the denominator reads
#: ``n/a (N = k)``; counts are kept
MIN_ITEMS = 20


def proportion(count: int, total: int, z: float = Z95) -> dict:
    """``{"share", "count", "total", "ci"}``; share and ci are ``None`` when ``total == 0``."""
    ci = wilson_interval(count, total, z)
    return {
        "share": (count / total) if total else None,
        "count": int(count),
        "total": int(total),
        "ci": list(ci) if ci is not None else None,
    }


def mean_interval(scores: Sequence[float], z: float = Z95) -> tuple[float, float] | None:
    """Normal 95 % interval of the mean of per-item ``scores`` (sample variance, n − 1); ``None``
    for fewer than 2 items. For indices whose items differ in size (COCO images with 2..k
    categories), where :func:`lead_index_interval`'s fixed n does not apply."""
    n = len(scores)
    if n < 2:
        return None
    mean = sum(scores) / n
    var = sum((x - mean) ** 2 for x in scores) / (n - 1)
    half = z * math.sqrt(var / n)
    return mean - half, mean + half


def gated_entry(value: float | None, n: int, ci: Sequence[float] | None = None, min_items: int = MIN_ITEMS,
                unit: str = "N") -> dict:
    """A summary entry ``{"value", "denominator", "ci"}`` built on ``n`` items; below ``min_items``
    the value and interval are ``None`` and the denominator says ``n/a (N = k)``."""
    if n < min_items or value is None:
        return {"value": None, "denominator": f"n/a ({unit} = {n}, fewer than {min_items})", "ci": None}
    return {"value": float(value), "denominator": f"{unit}={n}", "ci": None if ci is None else [float(c) for c in ci]}


def lead_index_interval(counts: Sequence[int], total: int, z: float = Z95) -> tuple[float, float] | None:
    """95 % normal interval of ``share(first) − mean share(others)`` over ``total`` items.

    ``counts[k]`` items have outcome k (k = 0 the first position/role, 1..n−1 the others); the
    remaining ``total − sum(counts)`` items have an outcome outside them ("none"). Each item scores

        X = 1{outcome 0} − (1/(n−1)) · Σ_{k≥1} 1{outcome k}

    so the index is the mean of X. The outcomes are exclusive, hence with p_k = counts[k]/total

        E[X]  = p_0 − (1/(n−1)) Σ_{k≥1} p_k            (the index)
        E[X²] = p_0 + (1/(n−1)²) Σ_{k≥1} p_k
        Var(index) = (E[X²] − E[X]²) / total

    (the exact multinomial variance of the plug-in index, = the delta method, which is exact for a
    linear function of the shares). Returns ``index ± z·sqrt(Var)`` clipped to X's range
    ``[−1/(n−1), 1]``; ``None`` if ``total == 0`` or n < 2. Like any Wald interval it collapses to
    a point when every item has the same outcome (e.g. all at position 1).
    """
    n = len(counts)
    if total <= 0 or n < 2:
        return None
    if any(c < 0 for c in counts) or sum(counts) > total:
        raise ValueError(f"need counts >= 0 summing to <= total, got counts={list(counts)}, total={total}")
    p = [c / total for c in counts]
    w = 1.0 / (n - 1)
    mean = p[0] - w * sum(p[1:])
    second = p[0] + w * w * sum(p[1:])
    half = z * math.sqrt(max(0.0, second - mean * mean) / total)
    return max(-w, mean - half), min(1.0, mean + half)


def difference_interval(count1: int, total1: int, count2: int, total2: int,
                        z: float = Z95) -> tuple[float, float] | None:
    """Newcombe's hybrid score interval of ``p1 − p2`` for two independent proportions.

    With Wilson intervals ``[l_i, u_i]`` of ``p_i``: ``[d − sqrt((p1−l1)² + (u2−p2)²),
    d + sqrt((u1−p1)² + (p2−l2)²)]``, d = p1 − p2 (Newcombe 1998, method 10; unlike the Wald
    difference interval it stays sensible at shares 0 and 1). ``None`` if either total is 0.
    """
    a, b = wilson_interval(count1, total1, z), wilson_interval(count2, total2, z)
    if a is None or b is None:
        return None
    p1, p2 = count1 / total1, count2 / total2
    d = p1 - p2
    lo = d - math.sqrt((p1 - a[0]) ** 2 + (b[1] - p2) ** 2)
    hi = d + math.sqrt((a[1] - p1) ** 2 + (p2 - b[0]) ** 2)
    return max(-1.0, lo), min(1.0, hi)


def lead_index_items_needed(shares: Sequence[float], half_width: float = 0.05, z: float = Z95) -> int:
    """Items N for a 95 % half-width <= ``half_width`` of :func:`lead_index_interval` at ``shares``
    (first, others...; any remainder is "none"): ``ceil(z² · Var(X) / half_width²)``."""
    n = len(shares)
    if n < 2 or any(s < 0 for s in shares) or sum(shares) > 1 + 1e-12 or half_width <= 0:
        raise ValueError(f"need >= 2 shares >= 0 summing to <= 1 and half_width > 0, got {list(shares)}, {half_width}")
    w = 1.0 / (n - 1)
    mean = shares[0] - w * sum(shares[1:])
    var = shares[0] + w * w * sum(shares[1:]) - mean * mean
    return math.ceil(z * z * var / half_width ** 2 - 1e-9)


def difference_items_needed(p1: float, p2: float, half_width: float = 0.05, z: float = Z95) -> int:
    """Pairs per sample (equal sizes) for a 95 % half-width <= ``half_width`` of ``p1 − p2`` (Wald
    approximation of :func:`difference_interval`): ``ceil(z² (p1(1−p1) + p2(1−p2)) / half_width²)``."""
    return math.ceil(z * z * (p1 * (1 - p1) + p2 * (1 - p2)) / half_width ** 2 - 1e-9)
