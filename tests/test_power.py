"""Power and the paired design (issue 24): seeds needed for a change (against textbook values, the
normal approximation and a simulation), the minimum detectable effect, the paired interval by
target seed in the defense-effect table, and ``mi-bench sweep seeds=N``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as st
from test_cli import invoke  # the same CLI call (the env fixture is conftest's)

from mi_bench.errors import ConfigError
from mi_bench.stats import (
    min_detectable_effect,
    normal_seeds,
    paired_interval,
    pooled_sd,
    seeds_needed,
    t_power,
)

# -- seeds needed, power, MDE ------------------------------------------------------------------

@pytest.mark.parametrize("d,unpaired,paired", [(0.5, 64, 34), (0.8, 26, 15), (1.0, 17, 10)])
def test_seeds_needed_matches_textbook_tables(d, unpaired, paired):
    """Cohen (1988) Table 2.4.1 / G*Power: two-sided alpha 0.05, power 0.80, n per group for
    standardised effect d (two-sample t) and pairs for d_z (paired t)."""
    assert seeds_needed(d, 1.0) == unpaired
    assert seeds_needed(d, 1.0, paired=True) == paired
    # scale-free: a 10-point change with a 20-point sd is d = 0.5
    assert seeds_needed(0.1 * d, 0.1) == unpaired
    # the smallest such n: one seed fewer falls short of 80%
    assert t_power(d, 1.0, unpaired) >= 0.8 > t_power(d, 1.0, unpaired - 1)
    assert t_power(d, 1.0, paired, paired=True) >= 0.8 > t_power(d, 1.0, paired - 1, paired=True)


def test_seeds_needed_is_the_normal_formula_plus_the_t_correction():
    z = st.norm.ppf(0.975) + st.norm.ppf(0.8)
    for d in (0.3, 0.5, 1.0):
        n_z = 2 * (z / d) ** 2  # statsmodels NormalIndPower / the textbook n = 2((z_a + z_b) sd / delta)^2
        assert normal_seeds(d, 1.0) == pytest.approx(n_z)
        assert normal_seeds(d, 1.0, paired=True) == pytest.approx(n_z / 2)
        # the t test needs a little more than the normal formula: at most 2 seeds per arm here
        assert math.ceil(n_z) <= seeds_needed(d, 1.0) <= math.ceil(n_z) + 2
    # large n: the two agree to within one seed
    assert abs(seeds_needed(0.1, 1.0) - math.ceil(normal_seeds(0.1, 1.0))) <= 1
    assert seeds_needed(0.2, 0.0) == 2  # no spread: the minimum for an interval


def test_computed_seeds_reach_80_percent_power_in_simulation():
    """Monte Carlo with a fixed seed: at the computed n the t tests reject ~80% of the time."""
    rng = np.random.default_rng(24)
    reps, sd, delta = 20000, 0.15, 0.15  # d = 1: 17 seeds per arm
    n = seeds_needed(delta, sd)
    a = rng.normal(0.5, sd, (reps, n))
    b = rng.normal(0.5 - delta, sd, (reps, n))
    student = float(np.mean(st.ttest_ind(a, b, axis=1).pvalue < 0.05))
    welch = float(np.mean(st.ttest_ind(a, b, axis=1, equal_var=False).pvalue < 0.05))
    se = math.sqrt(0.8 * 0.2 / reps)
    assert student == pytest.approx(t_power(delta, sd, n), abs=4 * se)
    assert student >= 0.8 - 3 * se and welch >= 0.8 - 4 * se  # Welch: a shade less powerful

    # paired: each seed moves both arms alike (a seed effect of sd 0.2), the rest is noise of 0.05
    sd_seed, sd_noise, delta = 0.2, 0.05, 0.1
    sd_diff = math.sqrt(2) * sd_noise
    n = seeds_needed(delta, sd_diff, paired=True)
    seed_fx = rng.normal(0, sd_seed, (reps, n))
    base = 0.6 + seed_fx + rng.normal(0, sd_noise, (reps, n))
    dfd = 0.6 - delta + seed_fx + rng.normal(0, sd_noise, (reps, n))
    paired = float(np.mean(st.ttest_rel(dfd, base, axis=1).pvalue < 0.05))
    unpaired = float(np.mean(st.ttest_ind(dfd, base, axis=1, equal_var=False).pvalue < 0.05))
    assert paired == pytest.approx(t_power(delta, sd_diff, n, paired=True), abs=4 * se)
    assert paired >= 0.8 - 3 * se
    assert unpaired < 0.3  # the same seeds analysed unpaired: the seed effect swamps the change
    assert seeds_needed(delta, math.hypot(sd_seed, sd_noise)) > 5 * n


def test_minimum_detectable_effect_inverts_the_power():
    for n, paired in ((3, False), (3, True), (5, True), (10, False)):
        mde = min_detectable_effect(0.1, n, paired=paired)
        assert t_power(mde, 0.1, n, paired=paired) == pytest.approx(0.8, abs=1e-6)
    # the seeds needed for a change detect it; the MDE shrinks with more seeds
    n = seeds_needed(0.1, 0.08)
    assert min_detectable_effect(0.08, n) <= 0.1 < min_detectable_effect(0.08, n - 1)
    assert min_detectable_effect(1.0, 3, n2=5) < min_detectable_effect(1.0, 3) < min_detectable_effect(1.0, 2)
    # by simulation: 5 pairs with sd 0.1 detect the MDE 80% of the time
    rng = np.random.default_rng(7)
    mde = min_detectable_effect(0.1, 5, paired=True)
    diffs = rng.normal(mde, 0.1, (20000, 5))
    assert float(np.mean(st.ttest_1samp(diffs, 0, axis=1).pvalue < 0.05)) == pytest.approx(0.8, abs=0.012)
    assert min_detectable_effect(0.1, 1, paired=True) is None  # one pair: no t test
    assert min_detectable_effect(0.1, 1, n2=1) is None
    assert min_detectable_effect(0.0, 3) == 0.0


def test_paired_interval_matches_a_hand_computation():
    a, b = [0.25, 0.35, 0.30], [0.27, 0.58, 0.40]
    d = [-0.02, -0.23, -0.10]
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)  # 0.10599
    half = 4.302653 * sd / math.sqrt(3)  # t(0.975, 2)
    got = paired_interval(a, b)
    assert got[0] == pytest.approx(mean) and mean == pytest.approx(-0.116667, abs=1e-6)
    assert got[1] == pytest.approx(mean - half, rel=1e-6) and got[2] == pytest.approx(mean + half, rel=1e-6)
    ref = st.ttest_rel(a, b).confidence_interval()
    assert [got[1], got[2]] == pytest.approx([ref.low, ref.high])
    assert paired_interval([0.5], [0.4]) == pytest.approx((0.1, None, None))
    with pytest.raises(ValueError):
        paired_interval([0.1, 0.2], [0.1])


def test_pooled_sd_over_configurations():
    sd, df = pooled_sd([[0.1, 0.3], [0.5, 0.6, 0.7], [0.9]])
    assert df == 3
    assert sd == pytest.approx(math.sqrt((0.02 + 0.02) / 3))
    assert pooled_sd([[0.1], []]) == (None, 0)


# -- the paired design in the defense-effect table ----------------------------------------------

TARGET = {"optimizer": "sgd", "lr": 0.1, "epochs": 8}


def _rec(defense, seed, acc, created="2026-01-01T00:00:00"):
    cfg = {"dataset": {"name": "mnist", "protocol": "disjoint_classes"}, "attack": {"name": "gmi"},
           "preset": "quick", "seed": seed, "recipe": "", "target": TARGET,
           "defense": {"name": defense}, "evaluator": {"model": "scnn"}}
    group = json.dumps([defense, TARGET], sort_keys=True)
    return {"run_id": f"{group}-{seed}-{created}", "created_at": created,
            "config_hash": f"{group}-{seed}", "group_hash": group, "defense_label": defense,
            "config": cfg, "metrics": {"attack_acc": acc, "target_acc": 0.99}}


def _effect(recs):
    from mi_bench.results import defense_effects

    (row,) = defense_effects(recs)
    return row


def test_paired_interval_is_narrower_when_the_seed_moves_both_arms():
    # seed effects shared by defended and baseline targets (+-20 points), defense: -6 points
    seed_fx = [0.20, -0.15, 0.05, -0.10, 0.00]
    noise = [0.01, -0.01, 0.0, 0.015, -0.005]
    recs = [_rec("none", s, 0.6 + fx) for s, fx in enumerate(seed_fx)]
    recs += [_rec("ls", s, 0.54 + fx + e) for s, (fx, e) in enumerate(zip(seed_fx, noise))]
    row = _effect(recs)
    m = row["matched"]
    assert row["matched_is_published"] and m["design"] == "paired" and m["pairs"] == [0, 1, 2, 3, 4]
    (plo, phi), (wlo, whi) = m["paired_ci"], m["welch_ci"]
    assert m["delta_ci"] == m["paired_ci"] and m["delta"] == pytest.approx(-0.06 + sum(noise) / 5)
    assert phi - plo < (whi - wlo) / 5
    assert phi < 0 < whi  # detected paired, missed by Welch's test across the same runs
    assert row["verdict"] == "holds"
    ref = st.ttest_rel([r["metrics"]["attack_acc"] for r in recs[5:]],
                       [r["metrics"]["attack_acc"] for r in recs[:5]]).confidence_interval()
    assert m["paired_ci"] == pytest.approx([ref.low, ref.high])
    assert m["mde"] == pytest.approx(min_detectable_effect(float(np.std(noise, ddof=1)), 5, paired=True))


def test_pairing_keys_on_the_target_seed_and_falls_back_to_welch():
    from mi_bench.results.effects import paired_seeds

    base = [_rec("none", s, 0.6 + 0.01 * s) for s in (1, 2, 3, 5)]
    defended = [_rec("ls", s, 0.5 + 0.01 * s) for s in (0, 1, 2, 3)]
    # a repeated run of seed 2: the latest one counts, as in the leaderboard
    defended.append(_rec("ls", 2, 0.9, created="2026-02-01T00:00:00"))
    pairs = paired_seeds(defended, base)
    assert [p[0] for p in pairs] == [1, 2, 3]
    assert pairs[1] == (2, 0.9, pytest.approx(0.62))
    row = _effect(base + defended)
    assert row["matched"]["design"] == "paired" and row["matched"]["pairs"] == [1, 2, 3]

    # one shared seed: no paired interval, Welch over all seeds
    base = [_rec("none", s, 0.6 + 0.02 * s) for s in (0, 1, 2)]
    defended = [_rec("ls", s, 0.5 - 0.03 * s) for s in (2, 3, 4)]
    m = _effect(base + defended)["matched"]
    assert m["design"] == "welch" and m["pairs"] == [2] and m["paired_ci"] is None
    ref = st.ttest_ind([0.44, 0.41, 0.38], [0.60, 0.62, 0.64], equal_var=False).confidence_interval()
    assert m["delta_ci"] == pytest.approx([ref.low, ref.high]) == m["welch_ci"]
    sd, _ = pooled_sd([[0.44, 0.41, 0.38], [0.60, 0.62, 0.64]])
    assert m["mde"] == pytest.approx(min_detectable_effect(sd, 3, n2=3))


def test_effect_table_states_the_design_and_the_mde_of_no_effect():
    from mi_bench.results import effects_rows, render_effects

    recs = [_rec("none", s, v) for s, v in enumerate([0.6, 0.7, 0.5])]
    recs += [_rec("ls", s, v) for s, v in enumerate([0.62, 0.66, 0.55])]
    row = _effect(recs)
    assert row["verdict"] == "no effect"
    head, body = effects_rows([row])
    cells = dict(zip(head, body[0]))
    assert cells["design"] == "paired by target seed, 3 pairs"
    mde = row["matched"]["mde"]
    assert cells["verdict"] == f"no effect (MDE {100 * mde:.1f} pp)" and mde > 0.05
    assert "80% power" in render_effects([row])
    # unpaired seeds: Welch, stated
    recs = [_rec("none", s, v) for s, v in enumerate([0.6, 0.7, 0.5])]
    recs += [_rec("ls", s + 10, v) for s, v in enumerate([0.62, 0.66, 0.55])]
    head, body = effects_rows([_effect(recs)])
    assert dict(zip(head, body[0]))["design"] == "Welch, unpaired"


# -- mi-bench sweep seeds=N --------------------------------------------------------------------

def test_seeds_n_expands_into_seeds_0_to_n_minus_1():
    from mi_bench.sweep import expand

    assert [t[0] for t in expand(["seeds=5", "defense=none"])] == [f"seed={s}" for s in range(5)]
    cells = expand(["defense=none,ls", "seeds=4"])
    assert len(cells) == 8 and sorted({c[1] for c in cells}) == [f"seed={s}" for s in range(4)]
    assert expand(["seeds=1"]) == [["seed=0"]]
    assert [t[-1] for t in expand(["defense=none"])] == ["seed=0", "seed=1", "seed=2"]  # default 3


@pytest.mark.parametrize("bad,needle", [(["seeds=3", "seed=0,1"], "not both"),
                                        (["seeds=0"], "positive number"), (["seeds=two"], "positive number"),
                                        (["seeds=2", "seeds=3"], "once")])
def test_seed_count_errors(bad, needle):
    from mi_bench.sweep import expand

    with pytest.raises(ConfigError, match=needle):
        expand(bad)


def test_sweep_seeds_dry_run_and_conflict_is_one_line_exit_2(env):  # noqa: F811
    r = invoke("sweep", "preset=smoke", "seeds=2", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "seed=0" in r.output and "seed=1" in r.output and "0 of 2 cells have records" in r.output
    r = invoke("sweep", "preset=smoke", "seeds=2", "seed=0", "--dry-run")
    assert r.exit_code == 2
    assert r.output.strip().count("\n") == 0 and "seeds=2 and seed=0" in r.output


def test_committed_power_table_is_what_the_records_give():
    """results/bench/power.md is power.py's output for the committed records (regenerate:
    python results/bench/power.py)."""
    import importlib.util
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "results" / "bench"
    spec = importlib.util.spec_from_file_location("bench_power", bench / "power.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = mod.render()
    assert "seeds for 10 pp" in text and "pairs for 10 pp" in text
    assert text == (bench / "power.md").read_text(), "regenerate: python results/bench/power.py"


def test_equal_paired_differences_do_not_give_a_zero_width_interval():
    """Accuracy moves in steps, so with few seeds every pair can differ by the same amount: the
    paired sd is 0 and its interval would be a point. The comparison falls back to Welch (its
    across-run spread), and without any spread it says there is no interval, not 'certain'."""
    from mi_bench.results.effects import _compare

    def recs(vals):
        return [{"config": {"seed": s}, "created_at": f"2026-01-0{s + 1}", "metrics": {"attack_acc": v}}
                for s, v in enumerate(vals)]

    out = _compare(recs([0.50, 0.60, 0.70]), recs([0.51, 0.61, 0.71]), "attack_acc")
    assert out["design"] == "welch" and "paired_degenerate" in out
    lo, hi = out["delta_ci"]
    assert lo < out["delta"] < hi and hi - lo > 0.1 and out["mde"] > 0
    flat = _compare(recs([0.5, 0.5, 0.5]), recs([0.6, 0.6, 0.6]), "attack_acc")
    assert flat["delta_ci"] is None and flat["mde"] is None and "spread" in flat["no_interval"]
