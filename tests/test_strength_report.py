"""results/bench/strength_report.py's goal lines (issue 23): a goal the runs cannot check says
"not checked" and why - one seed has no seed spread (its interval is the run's Wilson interval),
a setting without a `random` run has no margin over it - instead of a made-up met or MISSED."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "results" / "bench" / "strength_report.py"


def _report():
    spec = importlib.util.spec_from_file_location("strength_report", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(seeds, robust=0.484, ci=(0.42, 0.55)):
    return {"attack": "kedmi[lomma]", "seeds": seeds, "attack_acc": 0.581, "attack_acc_robust": robust,
            "attack_acc_robust_ci": ci, "human": None}


def test_one_seed_and_no_random_run_are_not_checked_not_met_or_missed():
    sr = _report()
    lines = sr.goals(("lfw", "disjoint_classes", "cpu"), [_row([0])], margins={})
    text = "\n".join(lines)
    assert "- not checked: the seed spread needs 2+ seeds (1 ran)" in lines
    assert "met: seed spread" not in text
    assert sum("not checked: margin over random" in x for x in lines) == 3 and "MISSED: margin" not in text
    assert "- MISSED: robust judge 48.4% (goal >= 60%)" in lines  # what one seed does check


def test_three_seeds_with_a_random_run_are_checked():
    sr = _report()
    key = ("lfw", "disjoint_classes", "cpu")
    margins = {(*key, "kedmi[lomma]"): {"margins": {"random": {
        "eval": {"margin": 0.40}, "resnet": {"margin": 0.05}, "robust": {"margin": 0.31}}}}}
    lines = sr.goals(key, [_row([0, 1, 2], robust=0.62, ci=(0.55, 0.69))], margins)
    assert "- met: seed spread of the robust judge +-7.0 points (95% interval over 3 seeds; goal +-10)" in lines
    assert "- met: margin over random on eval: +40.0 points (goal >= +30)" in lines
    assert "- MISSED: margin over random on resnet: +5.0 points (goal >= +30)" in lines


def test_copy_grids_copies_a_prior_shared_by_several_attacks_once(tmp_path, monkeypatch):
    sr = _report()
    recs = []
    for attack, prior in (("gmi", "p-gmi"), ("random", "p-gmi"), ("kedmi", "p-ked")):
        run = tmp_path / "runs" / attack
        run.mkdir(parents=True)
        (run / "grid.png").write_bytes(attack.encode())
        (run / "prior_grid.png").write_bytes(prior.encode())
        recs.append({"defense_label": "none", "seed": 0, "run_dir": str(run), "artifacts": {"prior": {"key": prior}},
                     "config": {"attack": {"name": attack}, "preset": "quick",
                                "dataset": {"name": "mnist", "protocol": "disjoint_classes"}}})
    monkeypatch.setattr(sr, "load_records", lambda path: recs)
    monkeypatch.setattr(sr, "current", lambda records: records)
    monkeypatch.setattr(sr, "ROOT", tmp_path)
    sr.copy_grids("records.jsonl")
    got = sorted(p.name for p in (tmp_path / sr.GRIDS).iterdir())
    assert got == ["mnist-quick-gmi-prior.png", "mnist-quick-gmi.png", "mnist-quick-kedmi-prior.png",
                   "mnist-quick-kedmi.png", "mnist-quick-random.png"]


def test_a_rescored_run_is_timed_by_the_run_it_rescores():
    sr = _report()
    first = {"run_id": "a", "wall_seconds": 1900.0}
    second = {"run_id": "b", "rescored_from": "a", "wall_seconds": 15.0}
    third = {"run_id": "c", "rescored_from": "b", "wall_seconds": 14.0}
    by_id = {r["run_id"]: r for r in (first, second, third)}
    assert sr.timing_source(third, by_id) is first and sr.timing_source(first, by_id) is first
    orphan = {"run_id": "d", "rescored_from": "gone", "wall_seconds": 12.0}  # its source not exported
    assert sr.timing_source(orphan, by_id) is orphan
