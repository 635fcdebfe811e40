"""Result records and the leaderboard: grouping over seeds, mean +- standard error, formats."""

import json
import math

import pytest

from mi_bench.results import ResultStore, json_safe, leaderboard, render


def _rec(run_id, seed, attack_acc, target_acc=0.99, fid=None, group="g1", defense="none"):
    return {
        "run_id": run_id, "created_at": f"2026-01-01T00:00:0{seed}", "config_hash": f"{group}-{seed}",
        "group_hash": group, "defense_label": defense,
        "config": {"dataset": {"name": "digits", "protocol": "disjoint_samples"},
                   "attack": {"name": "gmi"}, "preset": "quick", "seed": seed},
        "metrics": {"target_acc": target_acc, "attack_acc": attack_acc, "attack_acc_top5": 1.0,
                    "knn_dist": 50.0, "fid_eval": fid, "fid_inception": None, "eval_acc": 0.98,
                    "metric_errors": {"fid_inception": "weights not on disk"}},
    }


def test_leaderboard_groups_seeds_with_mean_and_standard_error(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    for i, a in enumerate([0.6, 0.8, 1.0]):
        store.append(_rec(f"r{i}", i, a, fid=10.0 + i))
    other = _rec("other", 0, 0.2, group="g2", defense="bido[lambda_x=0.1]")
    other["metrics"]["attack_acc_ci"] = [0.1, 0.35]
    store.append(other)
    rows = leaderboard(store.records())
    assert len(rows) == 2
    row = next(r for r in rows if r["defense"] == "none")
    assert row["seeds"] == [0, 1, 2] and row["runs"] == 3
    assert row["attack_acc"] == pytest.approx(0.8)
    assert row["attack_acc_se"] == pytest.approx(math.sqrt(0.04 / 3))
    # 95% Student-t interval over the three seeds: t(0.975, 2) * sd / sqrt(3), sd = 0.2
    half = 4.302653 * 0.2 / math.sqrt(3)
    assert row["attack_acc_ci"] == pytest.approx([0.8 - half, 1.0], rel=1e-6)  # clipped to 100%
    assert row["fid_inception"] is None and "fid_inception" in row["failed_metrics"]
    md = render(rows, "markdown")
    assert "80.0 [30, 100]" in md and "failed" in md and "evaluation model" in md
    one = next(r for r in rows if r["defense"] != "none")
    assert one["attack_acc_ci"] == [0.1, 0.35]  # a single run: its own (Wilson) interval
    assert "20.0 [10, 35]" in md
    assert json.loads(render(rows, "json"))[0]["dataset"] == "digits"
    assert "attack_acc_ci_low" in render(rows, "csv").splitlines()[0]


def test_a_repeated_seed_counts_once():
    recs = [_rec("a", 0, 0.6), _rec("b", 0, 0.8), _rec("c", 1, 1.0)]
    recs[1]["created_at"] = "2026-01-01T00:00:05"
    row = leaderboard(recs)[0]
    assert row["runs"] == 3 and row["seeds"] == [0, 1]
    assert row["attack_acc"] == pytest.approx(0.9)  # latest run of seed 0 (0.8) and seed 1 (1.0)


def _judged(run_id, seed, accs, n=100, attack="gmi", target="t", group=None, created=None):
    """A record with per-judge accuracies (predictions built to give exactly those counts)."""
    judges = {}
    for j, a in accs.items():
        k = round(a * n)
        judges[j] = {"acc": k / n, "predictions": [[0] * k + [1] * (n - k)]}
    rec = _rec(run_id, seed, judges["eval"]["acc"], group=group or f"{attack}-g")
    rec["created_at"] = created or f"2026-01-01T00:00:{seed:02d}"
    rec["config"]["attack"]["name"] = attack
    rec["metrics"].update(judges=judges, n_reconstructions=n)
    rec["artifacts"] = {"target": {"key": f"{target}{seed}"}}
    return rec


def test_baseline_margins_match_seeds_and_flag_attacks_not_beating_pixel():
    from mi_bench.results import baseline_margins
    from mi_bench.stats import mean_interval, newcombe_interval

    recs = [
        _judged("g0", 0, {"eval": 0.9, "robust": 0.50}), _judged("g1", 1, {"eval": 0.8, "robust": 0.56}),
        _judged("p0", 0, {"eval": 0.7, "robust": 0.25}, attack="pixel"),
        _judged("p1", 1, {"eval": 0.6, "robust": 0.30}, attack="pixel"),
        _judged("r0", 0, {"eval": 0.2, "robust": 0.10}, attack="random"),
        _judged("p9", 9, {"eval": 0.0, "robust": 0.0}, attack="pixel"),  # another target: unmatched
        _judged("k0", 0, {"eval": 0.95, "robust": 0.9}, attack="kedmi"),
    ]
    out = {e["attack"]: e for e in baseline_margins(recs)}
    assert set(out) == {"gmi", "kedmi"}
    g = out["gmi"]
    m = g["margins"]["pixel"]["robust"]
    assert m["seeds"] == [0, 1] and m["margin"] == pytest.approx(0.255)
    assert m["ci"] == pytest.approx(list(mean_interval([0.25, 0.26])[1:]))  # paired over seeds
    assert g["margins"]["random"]["eval"]["seeds"] == [0]  # only seed 0 has a random run
    d, lo, hi = newcombe_interval(90, 100, 20, 100)
    assert g["margins"]["random"]["eval"]["margin"] == pytest.approx(d)
    assert g["margins"]["random"]["eval"]["ci"] == pytest.approx([lo, hi])
    assert g["beats_pixel_robust"] is True and g["flag"] == ""
    k = out["kedmi"]  # one seed, 90% vs 25% under robust: clearly beats pixel
    assert k["beats_pixel_robust"] is True
    recs.append(_judged("k1", 0, {"eval": 0.95, "robust": 0.3}, attack="kedmi", group="k2"))
    k2 = next(e for e in baseline_margins(recs) if e["attack"] == "kedmi" and e["margins"]["pixel"]["robust"]["margin"] < 0.1)
    assert k2["beats_pixel_robust"] is False and "does not beat pixel" in k2["flag"]
    from mi_bench.results import margin_rows
    head, body = margin_rows(baseline_margins(recs))
    assert "vs pixel: robust" in head and any("does not beat pixel" in row[-1] for row in body)


def test_json_safe_makes_records_strict_json():
    rec = json_safe({"eps": float("inf"), "x": [float("nan"), 1.0], "n": {"m": -float("inf")}})
    assert rec == {"eps": "inf", "x": ["nan", 1.0], "n": {"m": "-inf"}}
    json.loads(json.dumps(rec, allow_nan=False))


def test_leaderboard_compares_by_kid_when_sample_counts_differ():
    def rec(run_id, group, n, kid, fid):
        r = _rec(run_id, 0, 0.9, fid=fid, group=group, defense=group)
        r["metrics"].update(n_reconstructions=n, kid_eval=kid, kid_eval_se=0.001, lpips_nn=0.123456)
        return r
    same = leaderboard([rec("a", "none", 25, 0.0123, 40.0), rec("b", "mid", 25, 0.0456, 60.0)])
    assert {r["compare_by"] for r in same} == {"fid"} and "compare them by KID" not in render(same, "markdown")
    rows = leaderboard([rec("a", "none", 25, 0.0123, 40.0), rec("b", "mid", 400, 0.0456, 20.0)])
    assert {r["compare_by"] for r in rows} == {"kid"}
    assert sorted(n for r in rows for n in r["n_reconstructions"]) == [25, 400]
    md = render(rows, "markdown")
    assert "Reconstruction counts differ" in md and "(25, 400)" in md and "by KID, not FID" in md
    assert "0.0123" in md and "0.123" in md  # KID and LPIPS-NN keep 3 significant digits
    assert "compare_by" in render(rows, "csv").splitlines()[0]
    # rows of another dataset do not trigger the note
    other = rec("c", "mnist-none", 100, 0.01, 30.0)
    other["config"]["dataset"]["name"] = "mnist"
    assert {r["compare_by"] for r in leaderboard([rec("a", "none", 25, 0.0123, 40.0), other])} == {"fid"}


# -- defense effect vs published and matched baselines ----------------------------------------

TARGET_SGD = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.5, "nesterov": True, "epochs": 8}
TARGET_ADAM = {"optimizer": "adam", "lr": 0.1, "momentum": 0.9, "nesterov": False, "epochs": 8}


def _effect_rec(defense, label, target, seed, acc, recipe="", attack="gmi"):
    cfg = {"dataset": {"name": "mnist", "protocol": "disjoint_classes"}, "attack": {"name": attack},
           "preset": "quick", "seed": seed, "recipe": recipe, "target": target,
           "defense": {"name": defense}, "evaluator": {"model": "scnn"}, "threads": seed + 1}
    group = json.dumps([label, attack, target], sort_keys=True)
    return {"run_id": f"{group}-{seed}", "created_at": "2026-01-01", "config_hash": f"{group}-{seed}",
            "group_hash": group, "defense_label": label, "config": cfg,
            "metrics": {"attack_acc": acc, "target_acc": 0.99}}


def test_defense_effects_against_published_and_matched_baselines():
    from scipy import stats

    from mi_bench.results import defense_effects, render_effects

    recs = []
    for s, (b, c, m, q) in enumerate([(0.25, 0.56, 0.27, 0.50), (0.35, 0.60, 0.58, 0.58),
                                       (0.30, 0.58, 0.40, 0.54)]):
        recs.append(_effect_rec("bido", "bido[measure=coco]", TARGET_ADAM, s, b))
        recs.append(_effect_rec("none", "none", TARGET_SGD, s, c))
        recs.append(_effect_rec("none", "none[recipe=bido]", TARGET_ADAM, s, m, recipe="bido"))
        recs.append(_effect_rec("qad", "qad", TARGET_SGD, s, q))
    recs.append(_effect_rec("mid", "mid", TARGET_SGD, 0, 0.9, attack="kedmi"))  # no baseline there
    eff = {(r["attack"], r["defense"]): r for r in defense_effects(recs)}
    assert set(eff) == {("gmi", "bido[measure=coco]"), ("gmi", "qad"), ("kedmi", "mid")}

    bido = eff[("gmi", "bido[measure=coco]")]
    assert bido["published"]["defense"] == "none" and bido["matched"]["defense"] == "none[recipe=bido]"
    assert bido["value"] == pytest.approx(0.30) and bido["seeds"] == [0, 1, 2]
    # the same target seeds on both sides: paired by seed (Student-t of the per-seed differences);
    # Welch's interval is kept beside it
    pub = stats.ttest_rel([0.25, 0.35, 0.30], [0.56, 0.60, 0.58]).confidence_interval()
    assert bido["published"]["delta"] == pytest.approx(0.30 - 0.58)
    assert bido["published"]["design"] == "paired" and bido["published"]["pairs"] == [0, 1, 2]
    assert bido["published"]["delta_ci"] == pytest.approx([pub.low, pub.high])
    welch = stats.ttest_ind([0.25, 0.35, 0.30], [0.56, 0.60, 0.58], equal_var=False).confidence_interval()
    assert bido["published"]["welch_ci"] == pytest.approx([welch.low, welch.high])
    mat = stats.ttest_rel([0.25, 0.35, 0.30], [0.27, 0.58, 0.40]).confidence_interval()
    assert bido["matched"]["delta_ci"] == pytest.approx([mat.low, mat.high])
    assert pub.high < 0 < mat.high
    assert bido["verdict"] == "vanishes vs matched" and not bido["matched_is_published"]

    qad = eff[("gmi", "qad")]  # trained with the baseline's recipe: matched = published
    assert qad["matched_is_published"] and qad["matched"] == qad["published"]
    q_ci = stats.ttest_rel([0.50, 0.58, 0.54], [0.56, 0.60, 0.58]).confidence_interval()
    assert qad["published"]["delta_ci"] == pytest.approx([q_ci.low, q_ci.high])
    assert q_ci.low < 0 < q_ci.high and qad["verdict"] == "no effect"  # -4 points, 3 seeds: not clear of 0
    assert eff[("kedmi", "mid")]["verdict"] == "n/a: no published baseline"
    assert eff[("kedmi", "mid")]["published"] is None

    one_seed = [r for r in recs if r["config"]["seed"] == 0]
    assert defense_effects(one_seed)[0]["verdict"] == "n/a: needs >= 2 target seeds on each side"

    md = render_effects(defense_effects(recs))
    assert "| Δ vs matched (pp) |" in md and "**vanishes vs matched**" in md
    assert "(= published)" in md and "Welch" in md and "| paired by target seed, 3 pairs |" in md
    rows = leaderboard(recs)
    full = render(rows, "markdown", effects=defense_effects(recs))
    assert full.index("## Defense effect vs baselines") > full.index("evaluation model")
    assert "Defense effect" not in render(rows, "markdown")


def test_defense_effects_match_records_written_before_a_hash_neutral_field_existed():
    """A defended entry recorded before `amp`/`tf32`/`compile` existed still finds the matched
    baseline recorded after (at their defaults they do not change what a run computes)."""
    from mi_bench.results import defense_effects

    recs = []
    for s, (b, c, m) in enumerate([(0.25, 0.56, 0.27), (0.35, 0.60, 0.58), (0.30, 0.58, 0.40)]):
        recs.append(_effect_rec("bido", "bido[measure=coco]", TARGET_ADAM, s, b))
        for rec in (_effect_rec("none", "none", TARGET_SGD, s, c),
                    _effect_rec("none", "none[recipe=bido]", TARGET_ADAM, s, m, recipe="bido")):
            rec["config"].update(amp="off", tf32=True, compile="off")
            recs.append(rec)
    (bido,) = defense_effects(recs)
    assert bido["matched"]["defense"] == "none[recipe=bido]"
    assert bido["verdict"] == "vanishes vs matched"


def test_effect_verdicts_cover_drops_rises_and_missing_baselines():
    from mi_bench.results import verdict

    def cmp(lo, hi):
        return {"delta": (lo + hi) / 2, "delta_ci": [lo, hi]}

    assert verdict(cmp(-0.3, -0.1), cmp(-0.2, -0.05)) == "holds"
    assert verdict(cmp(-0.3, -0.1), cmp(-0.1, 0.05)) == "vanishes vs matched"
    assert verdict(cmp(-0.1, 0.1), cmp(-0.3, -0.1)) == "only vs matched"
    # MID on MNIST quick: the defended target leaks more than its matched baseline
    assert verdict(cmp(0.15, 0.45), cmp(0.17, 0.43)) == "raises vs matched"
    assert verdict(cmp(-0.1, 0.1), cmp(-0.1, 0.1)) == "no effect"
    assert verdict(None, cmp(-0.1, 0.1)) == "n/a: no published baseline"
    assert verdict(cmp(-0.1, 0.1), None) == "n/a: no matched baseline"
    assert verdict({"delta": 0.0, "delta_ci": None}, cmp(-0.1, 0.1)).startswith("n/a: needs")


def test_attack_options_that_change_a_run_are_in_its_leaderboard_label():
    from mi_bench.config import compose, to_dict
    from mi_bench.record import attack_label
    from mi_bench.results import select

    assert attack_label(to_dict(compose(["attack=gmi"]))["attack"]) == "gmi"
    assert attack_label(to_dict(compose(["attack=gmi", "attack.lomma=true"]))["attack"]) == "gmi[lomma]"
    capped = to_dict(compose(["attack=kedmi", "attack.max_latents=80"]))["attack"]
    assert attack_label(capped) == "kedmi[max_latents=80]"
    assert attack_label({"name": "not-installed", "x": 1}) == "not-installed"
    rows = [{"attack": "gmi[lomma]"}, {"attack": "gmi"}, {"attack": "kedmi"}]
    assert select(rows, attack=["gmi"]) == rows[:2] and select(rows, attack=["gmi[lomma]"]) == rows[:1]
