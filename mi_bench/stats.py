"""Interval arithmetic shared by every table: Wilson intervals for proportions and Student-t
intervals for means over seeds.

* :func:`wilson_interval` - the 95% Wilson score interval of ``k`` successes in ``n`` trials
  (Wilson 1927). Unlike the normal approximation it stays inside [0, 1] and is sensible at
  ``k = 0`` or ``k = n``, which is where attack accuracy often sits.
* :func:`mean_interval` - mean and 95% Student-t interval of per-seed values.
* :func:`welch_interval` - difference of two means (e.g. a defense minus its baseline, over
  target seeds) with Welch's 95% t interval (unequal variances).
* :func:`paired_interval` - the mean of per-seed differences (defended minus baseline on the
  same target seed) with its Student-t interval: the paired design, tighter than Welch's when
  the seed moves both arms alike (the seed's share of the spread cancels in the difference).

Power (how many target seeds an effect needs; how small an effect the seeds run can see):

* :func:`t_power` - the power of the two-sided t test (unpaired: Student's two-sample test with
  ``n`` and ``n2`` seeds; paired: the one-sample test on ``n`` per-seed differences) to detect a
  true change ``delta`` when the seed-to-seed standard deviation is ``sd``: exact, from the
  noncentral t distribution (``P(|T| > t_crit)``, ``T ~ t'(df, delta / se)``).
* :func:`seeds_needed` - the smallest number of seeds per arm (paired: of pairs) whose power
  reaches ``power`` (80%) at ``alpha`` (0.05, two-sided), found by stepping ``n`` up from the
  normal approximation :func:`normal_seeds` (``n = k (z_{1-alpha/2} + z_{power})^2 sd^2 /
  delta^2``, ``k = 2`` unpaired, ``1`` paired), which never overshoots the t answer.
* :func:`min_detectable_effect` - the inverse: the smallest true change that ``n`` seeds detect
  with that power (MDE), the honest reading of a "no effect" verdict.
* :func:`pooled_sd` - the seed-to-seed standard deviation pooled over several configurations
  (each around its own mean), with its degrees of freedom.

Unpaired power uses Student's pooled-variance test with ``n + n2 - 2`` degrees of freedom: with
equal spreads and equal seeds per arm Welch's test has about the same power (its degrees of
freedom are at most ``n + n2 - 2``, so it is very slightly less powerful; the tests check both
by simulation). Values are in the metric's units: accuracies are fractions, 10 points = 0.10.
"""

from __future__ import annotations

import math
from typing import Sequence


def _scipy_stats():
    """``scipy.stats``, imported on first use (0.9 s: every command would pay it at start-up)."""
    from scipy import stats

    return stats

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
    half = _scipy_stats().t.ppf(0.5 + level / 2, len(vals) - 1) * sd / math.sqrt(len(vals))
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
    half = _scipy_stats().t.ppf(0.5 + level / 2, df) * se
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


def paired_interval(a: Sequence[float], b: Sequence[float],
                    level: float = 0.95) -> tuple[float, float | None, float | None]:
    """``(mean(a_i - b_i), low, high)``: the Student-t interval of the per-pair differences
    (``a[i]`` and ``b[i]`` measured on the same target seed); no interval for one pair."""
    if len(a) != len(b):
        raise ValueError(f"paired_interval needs as many values on each side ({len(a)} vs {len(b)})")
    if not a:
        raise ValueError("paired_interval needs at least one pair")
    return mean_interval([float(x) - float(y) for x, y in zip(a, b)], level)


def sample_sd(values: Sequence[float]) -> float | None:
    """The sample standard deviation (``n - 1`` in the denominator); None for under two values."""
    vals = [float(v) for v in values]
    if len(vals) < 2:
        return None
    m = sum(vals) / len(vals)
    return math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def pooled_sd(groups: Sequence[Sequence[float]]) -> tuple[float | None, int]:
    """``(sd, df)``: the standard deviation pooled over ``groups`` (each around its own mean,
    ``sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1))``) and its degrees of freedom; groups of one value
    add nothing. ``(None, 0)`` when no group has two values."""
    ss, df = 0.0, 0
    for g in groups:
        vals = [float(v) for v in g]
        if len(vals) < 2:
            continue
        m = sum(vals) / len(vals)
        ss += sum((v - m) ** 2 for v in vals)
        df += len(vals) - 1
    return (math.sqrt(ss / df), df) if df else (None, 0)


def _se_df(sd: float, n: int, n2: int | None, paired: bool) -> tuple[float, int]:
    if paired:
        if n2 is not None and n2 != n:
            raise ValueError("a paired design has as many seeds on each side")
        return sd / math.sqrt(n), n - 1
    n2 = n if n2 is None else n2
    return sd * math.sqrt(1 / n + 1 / n2), n + n2 - 2


def t_power(delta: float, sd: float, n: int, *, n2: int | None = None, paired: bool = False,
            alpha: float = 0.05) -> float:
    """Power of the two-sided level-``alpha`` t test to detect a true change ``delta``.

    Unpaired: ``n`` seeds in one arm and ``n2`` (default ``n``) in the other, each with
    seed-to-seed standard deviation ``sd`` (Student's two-sample test, ``n + n2 - 2`` degrees of
    freedom). Paired: ``n`` pairs whose differences have standard deviation ``sd`` (one-sample
    test, ``n - 1`` degrees of freedom). Exact under normal seeds (noncentral t)."""
    if sd < 0:
        raise ValueError("t_power: sd must be >= 0")
    se, df = _se_df(sd, n, n2, paired)
    if df < 1:
        raise ValueError(f"t_power: {'pairs' if paired else 'seeds'} too few for a t test (df={df})")
    if se == 0:
        return 1.0 if delta != 0 else alpha
    _st = _scipy_stats()
    crit = _st.t.ppf(1 - alpha / 2, df)
    ncp = abs(delta) / se
    upper = float(_st.nct.sf(crit, df, ncp))
    lower = float(_st.nct.cdf(-crit, df, ncp))  # the wrong-sign tail; scipy gives NaN when it is ~0
    return upper + (lower if math.isfinite(lower) else 0.0)


def normal_seeds(delta: float, sd: float, *, paired: bool = False, alpha: float = 0.05,
                 power: float = 0.8) -> float:
    """The normal-approximation sample size (per arm, or pairs), not rounded:
    ``k ((z_{1-alpha/2} + z_{power}) sd / delta)^2`` with ``k = 2`` unpaired, ``1`` paired (the
    textbook formula, e.g. statsmodels' ``NormalIndPower``). It ignores that ``sd`` is estimated,
    so it is slightly below the t answer (:func:`seeds_needed`)."""
    if delta == 0:
        raise ValueError("normal_seeds: a zero change needs infinitely many seeds")
    _st = _scipy_stats()
    z = _st.norm.ppf(1 - alpha / 2) + _st.norm.ppf(power)
    return (1 if paired else 2) * (z * sd / delta) ** 2


def seeds_needed(delta: float, sd: float, *, paired: bool = False, alpha: float = 0.05,
                 power: float = 0.8, max_n: int = 100_000) -> int:
    """The smallest number of target seeds per arm (paired: of pairs) whose two-sided t test at
    ``alpha`` detects a true change ``delta`` with at least ``power``, given the seed-to-seed
    standard deviation ``sd`` (paired: of the per-seed differences). Stepped up from the normal
    approximation; at least 2 (a t interval needs two seeds a side). ValueError past ``max_n``."""
    if delta == 0:
        raise ValueError("seeds_needed: a zero change needs infinitely many seeds")
    if sd == 0:
        return 2
    n = max(2, math.floor(normal_seeds(delta, sd, paired=paired, alpha=alpha, power=power)))
    while t_power(delta, sd, n, paired=paired, alpha=alpha) < power:
        n += 1
        if n > max_n:
            raise ValueError(f"seeds_needed: more than {max_n} seeds (sd={sd}, delta={delta})")
    return n


def min_detectable_effect(sd: float, n: int, *, n2: int | None = None, paired: bool = False,
                          alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest true change (in ``sd``'s units, > 0) that ``n`` seeds (``n2`` in the other
    arm; paired: ``n`` pairs) detect with ``power`` by the two-sided t test at ``alpha``; None
    when there are too few seeds for a t test (one pair, or one seed on each side). A "no
    effect" verdict rules out changes of about this size, not smaller ones."""
    _, df = _se_df(1.0, n, n2, paired)
    if df < 1:
        return None
    if sd == 0:
        return 0.0
    def f(d: float) -> float:
        return t_power(d, sd, n, n2=n2, paired=paired, alpha=alpha) - power

    hi = sd
    while f(hi) < 0:
        hi *= 2
    from scipy.optimize import brentq

    return float(brentq(f, 0.0, hi, xtol=1e-10 * sd))
