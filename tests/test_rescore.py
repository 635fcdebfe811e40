"""`mi-bench rescore`: stored runs scored again from their saved reconstructions."""

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mi_bench.cli import cli
from mi_bench.judges import NONE
from mi_bench.results import ResultStore, baseline_margins, current, leaderboard
from mi_bench.runs import RECONSTRUCTIONS, RECORD


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def rescore_json(*args):
    r = invoke("rescore", *args, "--json", "--quiet")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_rescore_of_an_unchanged_run_reproduces_every_metric(smoke_run, tmp_path):
    """Same judges (cached, nothing trained), same 8-bit images: the same predictions and numbers,
    in a new record with its own folder, the old artifacts and stage times, indexed in --db."""
    db = tmp_path / "r.sqlite"
    (new,) = rescore_json(smoke_run["run_dir"], "--db", db, f"results_dir={tmp_path / 'runs'}")
    old = smoke_run
    assert new["rescored_from"] == old["run_id"] != new["run_id"] and new["trained"] == []
    assert new["config_hash"] == old["config_hash"] and new["group_hash"] == old["group_hash"]
    m, o = new["metrics"], old["metrics"]
    assert set(m["judges"]) == set(o["judges"]) == {"eval", "resnet", "robust"}
    for j in o["judges"]:
        assert m["judges"][j]["predictions"] == o["judges"][j]["predictions"]
        assert m["judges"][j]["acc"] == o["judges"][j]["acc"]
    assert m["evaluator_predictions"] == o["evaluator_predictions"]
    for k in ("target_acc", "eval_acc", "attack_acc", "attack_acc_top5", "attack_acc_pixel_nn",
              "consensus_acc", "n_reconstructions", "collapsed_classes"):
        assert m[k] == o[k], k
    for k in ("knn_dist", "fid_eval", "kid_eval", "diversity_ratio"):
        assert m[k] == pytest.approx(o[k], rel=1e-6), k
    for kind in ("target", "prior", "evaluator", "judge-resnet", "judge-robust"):
        assert new["artifacts"][kind]["key"] == old["artifacts"][kind]["key"]
    for stage in ("target", "prior", "inversion"):
        assert new["stage_seconds"][stage] == old["stage_seconds"][stage]
    assert "scoring" in new["stage_seconds"] and new["wall_seconds"] < old["wall_seconds"] + 60
    assert new["rescore"]["target_acc"].startswith("recomputed with the cached target")
    assert "uint8" in new["rescore"]["reconstructions"]
    assert new["rescore"]["from_metrics"]["attack_acc"] == o["attack_acc"]
    folder = Path(new["run_dir"])
    assert folder.parent == tmp_path / "runs" and (folder / RECORD).is_file() and Path(new["grid"]).is_file()
    assert (folder / RECONSTRUCTIONS).read_bytes() == (Path(old["run_dir"]) / RECONSTRUCTIONS).read_bytes()
    assert json.loads((folder / RECORD).read_text()) == new
    assert [r["run_id"] for r in ResultStore(db).records()] == [new["run_id"]]


def test_rescore_follows_a_changed_judge_setting(smoke_run, tmp_path):
    """judge.none_fraction=0 (no reject option) with two judges: the judges are retrained, nothing
    is rejected any more, the config and the records say so; the target is not retrained."""
    db = tmp_path / "r.sqlite"
    (new,) = rescore_json(smoke_run["run_dir"], "--db", db, f"results_dir={tmp_path / 'runs'}",
                          "judge.none_fraction=0", "judges=[eval,robust]")
    o, m = smoke_run["metrics"], new["metrics"]
    assert new["trained"] == ["evaluator", "judge-robust"]
    assert new["config"]["judge"]["none_fraction"] == 0 and new["config"]["judges"] == ["eval", "robust"]
    assert new["config_hash"] != smoke_run["config_hash"]
    assert set(m["judges"]) == {"eval", "robust"} and m["consensus_judges"] == ["eval", "robust"]
    assert any(p == NONE for row in o["judges"]["eval"]["predictions"] for p in row)  # smoke judges reject
    for j in ("eval", "robust"):
        assert m["judges"][j]["rejected"] == 0
        assert all(p != NONE for row in m["judges"][j]["predictions"] for p in row)
        assert new["protocol"]["judges"][j]["reject"] == "none (no reject option)"
        assert new["protocol"]["judges"][j]["key"] != smoke_run["protocol"]["judges"][j]["key"]
    assert new["artifacts"]["target"] == smoke_run["artifacts"]["target"]


@pytest.mark.parametrize("case,needle", [
    ("unknown_id", "no run 'nope' in"),
    ("no_reconstructions", "reconstructions.safetensors does not exist"),
    ("no_dataset", "its dataset cannot be loaded - MNIST not found under"),
    ("not_scoring", "'attack.iterations' cannot be changed here"),
    ("group", "defense= cannot be changed here"),
    ("unknown_key", "unknown config key 'judge.noize'"),
    ("bad_value", "judge.noise_amplitude=2.0 is out of range"),
    ("nothing", "nothing to re-score"),
])
def test_rescore_refuses_bad_input_with_one_line_and_writes_nothing(smoke_run, tmp_path, case, needle):
    db = Path(smoke_run["config"]["results_db"])
    rows = ResultStore(db).rows()
    folder = tmp_path / "copy"
    folder.mkdir()
    src = Path(smoke_run["run_dir"])
    shutil.copy(src / RECORD, folder / RECORD)
    args = [folder]
    if case == "unknown_id":
        args = ["nope"]
    elif case == "no_dataset":
        shutil.copy(src / RECONSTRUCTIONS, folder / RECONSTRUCTIONS)
        rec = json.loads((folder / RECORD).read_text())
        rec["config"]["dataset"].update(name="mnist", download=False)
        rec["config"]["data_root"] = str(tmp_path / "nowhere")
        (folder / RECORD).write_text(json.dumps(rec))
    elif case != "no_reconstructions":
        shutil.copy(src / RECONSTRUCTIONS, folder / RECONSTRUCTIONS)
        args += {"not_scoring": ["attack.iterations=3"], "group": ["defense=bido"],
                 "unknown_key": ["judge.noize=1"], "bad_value": ["judge.noise_amplitude=2.0"],
                 "nothing": []}[case]
        if case == "nothing":
            args = []
    r = invoke("rescore", *args, "--db", db, f"results_dir={tmp_path / 'out'}", "--quiet")
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.startswith("error:") and needle in " ".join(err.split()), err
    assert len(err.splitlines()) <= 3  # one line, wrapped by the terminal width at most
    assert not (tmp_path / "out").exists() and ResultStore(db).rows() == rows


def _rec(run_id, group, seed, acc, rescored_from=None, attack="gmi", created="2026-01-01T00:00:00"):
    rec = {"run_id": run_id, "created_at": created, "config_hash": f"{group}-{seed}", "group_hash": group,
           "defense_label": "none",
           "config": {"dataset": {"name": "mnist", "protocol": "disjoint_classes"},
                      "attack": {"name": attack}, "defense": {"name": "none"}, "preset": "quick",
                      "seed": seed},
           "artifacts": {"target": {"key": f"t{seed}"}},
           "metrics": {"attack_acc": acc, "target_acc": 1.0, "n_reconstructions": 100,
                       "judges": {"eval": {"acc": acc, "predictions": [[0] * int(acc * 100) +
                                                                        [1] * (100 - int(acc * 100))]}}}}
    if rescored_from:
        rec["rescored_from"] = rescored_from
    return rec


def test_leaderboard_counts_a_rescored_run_once():
    """A run and its re-scored version hold the same reconstructions: the leaderboard and the
    baseline margins count only the re-scored one, whether it kept the config (same group) or
    changed a judge setting (another group)."""
    a = _rec("a", "g1", 0, 0.2)
    b = _rec("b", "g1", 1, 0.4)
    a2 = _rec("a2", "g2", 0, 0.6, rescored_from="a", created="2026-01-02T00:00:00")  # new judge setting
    b2 = _rec("b2", "g1", 1, 0.8, rescored_from="b", created="2026-01-02T00:00:00")  # same config
    recs = [a, b, a2, b2]
    assert [r["run_id"] for r in current(recs)] == ["a2", "b2"]
    rows = leaderboard(recs, labels=False)
    counted = [i for r in rows for i in r["run_ids"]]
    assert sorted(counted) == ["a2", "b2"]
    assert sum(r["runs"] for r in rows) == 2
    assert {r["group_hash"]: r["attack_acc"] for r in rows} == {"g1": 0.8, "g2": 0.6}
    pixel = [_rec("p", "gp", 0, 0.1, attack="pixel"), _rec("p2", "gp2", 0, 0.3, attack="pixel",
                                                           rescored_from="p", created="2026-01-02T00:00:00")]
    margins = baseline_margins([a, a2, *pixel])
    assert len(margins) == 1 and margins[0]["margins"]["pixel"]["eval"]["margin"] == pytest.approx(0.6 - 0.3)
