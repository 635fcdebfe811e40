"""Interval arithmetic shared by every table: Wilson intervals for proportions and Student-t
intervals for means over seeds.

* :func:`wilson_interval` - the 95% Wilson score interval of ``k`` successes in ``n`` trials
  (Wilson 1927). Unlike the normal approximation it stays inside [0, 1] and is sensible at
  ``k = 0`` or ``k = n``, which is where attack accuracy often sits.
* :func:`mean_interval` - mean and 95% Student-t interval of per-seed values.
* :func:`welch_interval` - difference of two means (e.g. a defense minus its baseline, over
  target seeds) with Welch's 95% t interval (unequal variances).
"""

from __future__ import annotations

import math
from typing import Sequence

from scipy import stats as _st

Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` for a proportion ``k / n``."""
    if n <= 0:
        raise ValueError("wilson_interval needs n >= 1 trials")
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval: k={k} successes is outside 0..n={n}")
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def wilson_half_width(p: float, n: int, z: float = Z95) -> float:
    """Half the width of the Wilson interval at an observed share ``p`` (planning sample sizes)."""
    lo, hi = wilson_interval(int(round(p * n)), n, z)
    return (hi - lo) / 2


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float | None, float | None]:
    """``(mean, low, high)`` with a Student-t interval over ``values``; no interval for one value."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_interval needs at least one value")
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    half = _st.t.ppf(0.5 + level / 2, len(vals) - 1) * sd / math.sqrt(len(vals))
    return mean, mean - half, mean + half


def welch_interval(a: Sequence[float], b: Sequence[float],
                   level: float = 0.95) -> tuple[float, float | None, float | None]:
    """``(mean(a) - mean(b), low, high)``: Welch's t interval for a difference of means with
    unequal variances (Welch-Satterthwaite degrees of freedom); no interval unless both sides
    have at least two values."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    if not a or not b:
        raise ValueError("welch_interval needs at least one value on each side")
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    diff = ma - mb
    if len(a) < 2 or len(b) < 2:
        return diff, None, None
    va = sum((v - ma) ** 2 for v in a) / (len(a) - 1) / len(a)
    vb = sum((v - mb) ** 2 for v in b) / (len(b) - 1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = _st.t.ppf(0.5 + level / 2, df) * se
    return diff, float(diff - half), float(diff + half)


def newcombe_interval(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> tuple[float, float, float]:
    """``(d, low, high)`` for the difference ``d = k1/n1 - k2/n2`` of two independent proportions:
    Newcombe's hybrid score interval (Newcombe 1998, method 10), built from the two Wilson
    intervals. Used for an attack's margin over a baseline in a single seed."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, z)
    l2, u2 = wilson_interval(k2, n2, z)
    d = p1 - p2
    return (d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))
