"""Interval arithmetic against published/known values."""

import pytest

from mi_bench.stats import mean_interval, newcombe_interval, wilson_half_width, wilson_interval


def test_wilson_matches_known_values():
    # Reference values (Newcombe 1998, Table I; also statsmodels proportion_confint method="wilson")
    lo, hi = wilson_interval(81, 263)
    assert lo == pytest.approx(0.2553, abs=1e-4) and hi == pytest.approx(0.3662, abs=1e-4)
    lo, hi = wilson_interval(15, 148)
    assert lo == pytest.approx(0.0624, abs=1e-4) and hi == pytest.approx(0.1605, abs=1e-4)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    lo, hi = wilson_interval(20, 20)
    assert hi == 1.0 and lo == pytest.approx(0.8389, abs=1e-4)


def test_wilson_half_width_sets_the_sample_counts_the_presets_need():
    assert wilson_half_width(0.5, 100) <= 0.10 < wilson_half_width(0.5, 90)  # quick: 5 x 20
    assert wilson_half_width(0.5, 400) <= 0.05 < wilson_half_width(0.5, 350)  # paper: 5 x 80


def test_wilson_refuses_impossible_counts():
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_mean_interval_student_t():
    mean, lo, hi = mean_interval([0.6, 0.8, 1.0])
    assert mean == pytest.approx(0.8)
    # t(0.975, 2) = 4.302653; sd = 0.2; half = 4.302653 * 0.2 / sqrt(3)
    assert hi - mean == pytest.approx(4.302653 * 0.2 / 3 ** 0.5, rel=1e-6)
    assert mean_interval([0.5]) == (0.5, None, None)


def test_newcombe_difference_interval_matches_published_values():
    # Newcombe (1998), Stat Med 17:873, Table II, method 10 (hybrid score)
    d, lo, hi = newcombe_interval(56, 70, 48, 80)
    assert d == pytest.approx(0.2) and lo == pytest.approx(0.0524, abs=1e-4) and hi == pytest.approx(0.3339, abs=1e-4)
    d, lo, hi = newcombe_interval(5, 56, 0, 29)
    assert lo == pytest.approx(-0.0381, abs=1e-4) and hi == pytest.approx(0.1926, abs=1e-4)


def test_every_preset_has_enough_reconstructions_for_its_interval():
    """Issue 12: the 95% Wilson half-width at 50% is <= 10 points on quick and <= 5 on paper."""
    from mi_bench.config import compose
    from mi_bench.registry import ATTACKS

    for attack in ATTACKS.names():
        for dataset in ("digits", "mnist"):
            for preset, limit in (("quick", 0.10), ("paper", 0.05)):
                cfg = compose([f"attack={attack}", f"dataset={dataset}", f"preset={preset}"])
                n = cfg.dataset.private_classes * cfg.attack.samples_per_class
                assert wilson_half_width(0.5, n) <= limit, (attack, dataset, preset, n)
