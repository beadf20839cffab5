"""Statistics across training seeds: the mean of a per-seed value with its 95 % t-interval, and
the paired difference of two configurations run with the same seeds.

With k seeds the interval is ``mean ± t(0.975, k−1) · sd / √k`` (Student's t: with 3 seeds the
multiplier is 4.30, not 1.96). Fewer than 2 values give no interval ("n/a (N = k)"), never one
built on a single run. Pairing uses only the seeds both configurations have; a seed shares the
model init, data order and mitigation draws between them, so the paired difference removes the
init-to-init spread that an unpaired comparison would carry.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t975(df: int) -> float:
    """Two-sided 95 % Student-t quantile for ``df`` >= 1 (table to 30, then a 1/df expansion)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class SeedMean:
    """Mean of ``n`` per-seed values and its 95 % t-interval (``lo``/``hi`` None when n < 2)."""

    mean: float | None
    lo: float | None
    hi: float | None
    n: int

    @property
    def beyond_noise(self) -> bool:
        """True when the 95 % interval excludes 0."""
        return self.lo is not None and (self.lo > 0 or self.hi < 0)

    def text(self, signed: bool = True) -> str:
        """``+0.123 [+0.010, +0.236]``, ``+0.123 (interval n/a, N = 1)`` or ``n/a (N = 0)``."""
        if self.mean is None:
            return f"n/a (N = {self.n})"
        f = (lambda x: f"{x:+.3f}") if signed else (lambda x: f"{x:.3f}")
        if self.lo is None:
            return f"{f(self.mean)} (interval n/a, N = {self.n})"
        return f"{f(self.mean)} [{f(self.lo)}, {f(self.hi)}]"


def seed_mean(values: Sequence[float | None]) -> SeedMean:
    """Mean and 95 % t-interval of the defined values (None entries are left out and not counted)."""
    xs = [float(v) for v in values if v is not None]
    n = len(xs)
    if n == 0:
        return SeedMean(None, None, None, 0)
    mean = sum(xs) / n
    if n < 2:
        return SeedMean(mean, None, None, n)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return SeedMean(mean, mean - half, mean + half, n)


def paired_difference(treated: Mapping[int, float | None], baseline: Mapping[int, float | None]) -> SeedMean:
    """Mean over common seeds of ``treated[seed] − baseline[seed]``, with its 95 % t-interval."""
    seeds = sorted(s for s in treated if s in baseline and treated[s] is not None and baseline[s] is not None)
    return seed_mean([treated[s] - baseline[s] for s in seeds])
