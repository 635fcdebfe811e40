"""Health verdicts (mi_bench.health): the checks on synthetic records, the thresholds as config keys
that leave every hash alone, the run table's warning lines, and the marks of the leaderboard,
its Markdown / CSV / terminal tables and the HTML report. One real smoke run (its judges are
trained for one epoch: the resnet judge is near chance) checks the whole path."""

from __future__ import annotations

import copy
import io
import json

import pytest
from boards import record as board_record
from click.testing import CliRunner

from mi_bench import health
from mi_bench.cli import cli
from mi_bench.config import compose, config_hash, to_dict


def healthy(run_id: str = "r0", **kw) -> dict:
    """A record shaped like the pipeline's with every classifier well above its thresholds:
    5 private classes out of a 10-class domain, judges eval/resnet/robust."""
    preds = [[c, c] for c in range(5)]
    rec = board_record(run_id, judges={"eval": preds, "resnet": preds, "robust": preds}, **kw)
    rec["config"].update(judges=["eval", "resnet", "robust"], preset="quick",
                         judge={"none_fraction": 0.25, "resnet": {"epochs": 4}, "robust": {"epochs": 4}},
                         evaluator={"epochs": 30})
    rec["config"]["target"].update(epochs=20, pretrained="", pretrain="")
    rec["protocol"]["judges"] = {
        name: {"test_acc": acc, "reject_rate_real": 0.0, "architecture": arch, "augmentation": "none",
               "adversarial": "none"}
        for name, acc, arch in (("eval", 0.98, "scnn"), ("resnet", 0.96, "resnet20"), ("robust", 0.97, "madrynet"))}
    for res in rec["metrics"]["judges"].values():
        res["rejected"] = 0.0
    return rec


def with_judge(rec: dict, name: str, acc: float, reject_real: float = 0.0) -> dict:
    rec = copy.deepcopy(rec)
    rec["protocol"]["judges"][name].update(test_acc=acc, reject_rate_real=reject_real)
    if name == "eval":
        rec["metrics"]["eval_acc"] = acc
    return rec


# -- the verdict --------------------------------------------------------------------------------

def test_a_healthy_run_has_no_problem():
    v = health.verdict(healthy())
    assert v["ok"] is True
    assert health.problems(v) == [] and health.lines(v) == [] and health.marks(v) == {}
    assert v["target"]["chance"] == pytest.approx(1 / 5)  # the target tells the 5 private classes apart
    assert v["eval"]["chance"] == pytest.approx(1 / 10)  # the judges the whole 10-class domain
    assert set(v["judges"]) == {"resnet", "robust"} and all(j["ok"] for j in v["judges"].values())


def test_a_judge_at_twice_chance_is_a_problem_naming_the_fix():
    v = health.verdict(with_judge(healthy(), "resnet", 0.2))  # 10 classes: 2x chance
    assert v["ok"] is False and v["judges"]["resnet"]["ok"] is False and v["judges"]["robust"]["ok"]
    (who, p), = health.problems(v)
    assert who == "resnet" and p["check"] == "accuracy"
    assert "judge resnet 20.0% test acc on 10 classes, 2.0x chance (10.0%)" in p["summary"]
    assert "under the 50% minimum" in p["summary"] and "under 3x chance" in p["summary"]
    line, = health.lines(v)
    assert line.startswith("warning: judge resnet") and "Fix:" in line
    for fix in ("more training images per class", "judge.resnet.pretrained=", "preset=paper",
                "judge.resnet.epochs (now 4)", "judges=[eval,robust]"):
        assert fix in line, fix
    # only the chance check, with the accuracy minimum off
    v = health.verdict(with_judge(healthy(), "resnet", 0.2), {"min_judge_acc": 0.0})
    (_, p), = health.problems(v)
    assert "under 3x chance" in p["summary"] and "minimum" not in p["summary"]
    # its numbers are marked: its own accuracy and the consensus, nothing else
    assert set(health.marks(v)) == {"attack_acc_resnet", "consensus_acc"}


def test_a_weak_target_is_a_problem_with_the_target_fixes():
    rec = healthy(target_acc=0.24)
    rec["config"]["dataset"] = {"name": "folder", "protocol": "disjoint_classes", "face": {"min_images": 15}}
    rec["protocol"]["data"].update(unit="identity", private_classes=list(range(50)), num_domain_classes=50,
                                   images_per_private_identity={"min": 15, "max": 22, "mean": 18.0})
    v = health.verdict(rec)
    (who, p), = health.problems(v)
    assert who == "target" and v["target"]["ok"] is False and v["eval"]["ok"]
    assert p["summary"] == ("target 24.0% test acc on 50 private classes, 12x chance (2.0%): "
                            "under the 50% minimum")
    for fix in ("more images per person", "dataset.face.min_images=N", "now 15", "18 per person",
                "target.pretrained=", "target.pretrain=public", "preset=paper"):
        assert fix in p["fix"], fix
    assert health.marks(v) == {"target_acc": [p["summary"]]}
    # a target already pretrained on the public data is not told to do it again
    rec["config"]["target"]["pretrain"] = "public"
    assert "target.pretrain=public" not in health.problems(health.verdict(rec))[0][1]["fix"]


def test_rejections_of_real_images_and_of_reconstructions():
    rec = with_judge(healthy(), "robust", 0.97, reject_real=0.3)
    rec["metrics"]["judges"]["resnet"]["rejected"] = 0.78
    v = health.verdict(rec)
    (who, p), = health.problems(v)  # rejecting real images is a problem ...
    assert who == "robust" and p["check"] == "reject_real" and "30.0% of real test images" in p["summary"]
    assert "judge.none_fraction (now 0.25)" in p["fix"]
    assert v["judges"]["resnet"]["ok"] is True  # ... rejecting reconstructions only a note
    assert v["judges"]["resnet"]["notes"] == [
        "judge resnet rejects 78.0% of the reconstructions ('none'): its attack accuracy counts them as failures"]
    assert health.lines(v)[-1].startswith("note: judge resnet rejects 78.0%")


def test_thresholds_from_the_config_change_the_verdict():
    weak = with_judge(healthy(target_acc=0.45), "resnet", 0.35)
    assert {who for who, _ in health.problems(health.verdict(weak))} == {"target", "resnet"}
    weak["config"]["health"] = {"min_target_acc": 0.4}  # the record's own section ...
    assert {who for who, _ in health.problems(health.verdict(weak))} == {"target", "resnet"}  # 2.25x chance
    weak["config"]["health"].update(min_judge_acc=0.3, min_chance_ratio=2)
    v = health.verdict(weak)
    assert v["ok"] is True and v["thresholds"]["min_target_acc"] == 0.4
    assert v["thresholds"]["max_reject_real"] == 0.1  # ... the defaults fill the rest
    strict = health.verdict(healthy(), compose(["health.min_judge_acc=0.99"]).health)
    assert {who for who, _ in health.problems(strict)} == {"eval", "resnet", "robust"}
    # the chance check is skipped where it cannot be met (two classes: 3x chance is 150%)
    two = healthy()
    two["protocol"]["data"].update(private_classes=[0, 1], num_domain_classes=2)
    assert health.verdict(two)["ok"] is True


def test_old_records_get_a_verdict_and_stored_ones_are_kept():
    old = healthy(target_acc=0.3)
    del old["protocol"]["judges"]  # a record from before the judges: only the evaluator's accuracy
    v = health.of(old)
    assert [who for who, _ in health.problems(v)] == ["target"] and v["eval"]["ok"] is True
    assert v["judges"]["resnet"]["ok"] is None  # scored, but nothing to judge its health by
    stored = healthy()
    stored["health"] = health.verdict(with_judge(stored, "resnet", 0.1))
    assert health.of(stored) is stored["health"]  # as the run judged it, with its thresholds
    minimal = {"run_id": "x", "metrics": {}, "config": {}}  # nothing to judge: no crash, no problem
    assert health.verdict(minimal)["ok"] is True and health.lines(health.verdict(minimal)) == []


# -- config keys, hashes ------------------------------------------------------------------------

# config_hash of these configs before the health section existed (computed on the tree without it)
HASHES_BEFORE = {(): ("8158ffc52f98542c", "48ad937879583dfc"),
                 ("preset=smoke",): ("bd5e4f0e8d84276f", "f6392123e3c56cc1"),
                 ("dataset=mnist", "preset=paper", "defense=bido"): ("eb4850079ae7d1ef", "19c5320d41a18df6")}


@pytest.mark.parametrize("tokens", list(HASHES_BEFORE), ids=lambda t: " ".join(t) or "default")
def test_the_health_section_leaves_config_hashes_unchanged(tokens):
    cfg = to_dict(compose(list(tokens)))
    assert cfg["health"] == {"min_target_acc": 0.5, "min_judge_acc": 0.5, "min_chance_ratio": 3.0,
                             "max_reject_real": 0.1, "max_reject_recon": 0.5}
    stripped = {k: v for k, v in cfg.items() if k != "health"}
    assert config_hash(cfg) == config_hash(stripped) == HASHES_BEFORE[tokens][0]
    assert config_hash(cfg, drop=("seed",)) == HASHES_BEFORE[tokens][1]
    changed = to_dict(compose([*tokens, "health.min_judge_acc=0.2", "health.min_chance_ratio=5"]))
    assert changed["health"]["min_judge_acc"] == 0.2 and config_hash(changed) == config_hash(cfg)


def test_health_keys_are_checked_and_rescore_may_set_them():
    from mi_bench.errors import ConfigError
    from mi_bench.rescore import SCORING_KEYS

    with pytest.raises(ConfigError, match="health.min_judge_acc=1.5 is out of range"):
        compose(["health.min_judge_acc=1.5"])
    with pytest.raises(ConfigError, match="Did you mean 'health.min_judge_acc'"):
        compose(["health.min_judge_ac=0.3"])
    assert "health.*" in SCORING_KEYS


# -- the run table ------------------------------------------------------------------------------

def full_record(rec: dict) -> dict:
    """``rec`` with what the run table reads besides the metrics."""
    rec = copy.deepcopy(rec)
    rec["config"]["dataset"].setdefault("protocol", "disjoint_samples")
    rec["config"]["eval"] = {"lpips_net": "alex"}
    m = rec["metrics"]
    m.update(attack_acc_ci=[0.6, 0.9], consensus_acc_ci=[0.6, 0.9], consensus_judges=list(m["judges"]),
             per_class={str(c): 1.0 for c in range(5)}, kid_eval_se=0.001, kid_inception_se=None)
    rec.update(trained=["target"], wall_seconds=1.0, stage_seconds={"target": 1.0}, grid=None)
    return rec


def test_the_run_table_prints_one_warning_line_per_problem(monkeypatch):
    from rich.console import Console

    from mi_bench.tables import health_lines, run_table

    ok = full_record(healthy())
    assert health_lines(ok) == []
    bad = full_record(with_judge(healthy(target_acc=0.24), "resnet", 0.2))
    lines = health_lines(bad)
    assert len(lines) == 2 and lines[0].startswith("warning: target 24.0%") and "judge resnet" in lines[1]
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(run_table(bad))
    assert "2 problems" in console.export_text()
    # mi-bench run: the table, then the lines, each whole on one line of stdout
    import mi_bench.cli as cli_mod

    monkeypatch.setattr(cli_mod, "_run_one", lambda cfg, quiet: bad)
    r = CliRunner().invoke(cli, ["run", "preset=smoke"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = r.stdout.splitlines()
    assert lines[0] in out and lines[1] in out
    assert out.index(lines[0]) > max(i for i, line in enumerate(out) if "health" in line and "│" in line)


# -- the leaderboard and the report ---------------------------------------------------------------

def unhealthy_board() -> list[dict]:
    good = healthy("good", defense="none")
    bad = with_judge(healthy("bad", defense="bido", label="bido[lambda_x=0.1]"), "resnet", 0.05)
    return [good, bad]


def test_the_leaderboard_marks_the_cells_of_an_unhealthy_judge():
    from mi_bench.results import leaderboard, render

    rows = {r["defense"]: r for r in leaderboard(unhealthy_board(), labels=False)}
    assert rows["none"]["health"] == {}
    reason = "judge resnet 5.0% test acc on 10 classes, 0.5x chance (10.0%): under the 50% minimum and under 3x chance"
    assert rows["bido[lambda_x=0.1]"]["health"] == {"attack_acc_resnet": [reason], "consensus_acc": [reason]}
    md = render(list(rows.values()), "markdown")
    bad_line = next(line for line in md.splitlines() if line.startswith("| digits") and "bido" in line)
    good_line = next(line for line in md.splitlines() if line.startswith("| digits") and "| none |" in line)
    assert bad_line.count("⚠1") == 2 and "⚠" not in good_line
    assert f"- ⚠1 {reason}" in md and "health.*" in md
    csv_text = render(list(rows.values()), "csv")
    assert csv_text.splitlines()[0].endswith(",health") and reason in csv_text
    html = render(list(rows.values()), "html")
    assert "⚠1" in html and reason in html


def test_a_number_from_a_judge_near_chance_is_never_shown_without_its_mark():
    """Every cell of the unhealthy judge's column, in every text format and the terminal board."""
    from mi_bench.results import leaderboard, render
    from mi_bench.results.terminal import board

    recs = unhealthy_board() + [with_judge(healthy("bad2", seed=1, defense="bido", label="bido[lambda_x=0.1]"),
                                           "resnet", 0.05)]
    rows = leaderboard(recs, labels=False)
    md = render(rows, "markdown")
    head = next(line for line in md.splitlines() if line.startswith("| dataset"))
    col = [h.strip() for h in head.strip("|").split("|")].index("resnet judge %")
    for line in md.splitlines():
        if line.startswith("| digits") and "bido" in line:
            assert "⚠" in line.strip("|").split("|")[col]
    from rich.console import Console

    console = Console(width=250, record=True, file=io.StringIO())
    parts, _ = board(rows, width=250, wide=True)
    for p in parts:
        console.print(p)
    text = console.export_text()
    assert "⚠¹" in text and "health warning" in text and "judge resnet 5.0% test acc" in text


def test_the_report_marks_the_cells_and_says_why(tmp_path):
    from mi_bench.results import leaderboard
    from mi_bench.results.report import build_report

    recs = unhealthy_board()
    html = build_report(recs, leaderboard(recs, labels=False))
    assert '<span class="warn"' in html and "health warning" in html
    assert "judge resnet 5.0% test acc on 10 classes" in html
    healthy_html = build_report([recs[0]], leaderboard([recs[0]], labels=False))
    assert "health warning" not in healthy_html


def test_committed_faces_leaderboard_marks_its_judges():
    """LFW at the cpu preset: the resnet and robust judges are under 50% test accuracy."""
    from pathlib import Path

    md = (Path(__file__).resolve().parents[1] / "results" / "bench" / "faces_leaderboard.md").read_text()
    assert "⚠1 judge resnet 36.6% test acc on 62 classes" in md and "judge robust" in md


# -- a real run ---------------------------------------------------------------------------------

@pytest.mark.slow  # an end-to-end smoke run (10-40 s): the slow lane
def test_a_smoke_run_records_its_verdict_and_warns(tmp_path, monkeypatch):
    """preset=smoke trains the resnet judge for one epoch: near chance, and the run says so."""
    monkeypatch.setenv("MI_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MI_BENCH_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["run", "preset=smoke", "--json", "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    v = rec["health"]
    assert set(v) >= {"thresholds", "target", "eval", "judges", "ok"}
    assert v == health.verdict(rec)  # stored as computed from the record itself
    assert v["judges"]["resnet"]["ok"] is False, v["judges"]["resnet"]
    lb = CliRunner().invoke(cli, ["leaderboard", "--format", "markdown"], catch_exceptions=False)
    assert "⚠1 judge resnet" in lb.stdout
    from mi_bench.tables import health_lines

    assert any(line.startswith("warning: judge resnet") for line in health_lines(rec))
    # re-scored with the thresholds off: the same hash (they only change how the run is read)
    r = CliRunner().invoke(cli, ["rescore", rec["run_dir"], "--db", "results/mi_bench.sqlite", "--json", "--quiet",
                                 "health.min_judge_acc=0", "health.min_chance_ratio=0",
                                 "health.max_reject_real=1", "health.min_target_acc=0"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    (new,) = json.loads(r.stdout)
    assert new["config_hash"] == rec["config_hash"] and new["health"]["ok"] is True
    assert new["health"]["thresholds"]["min_judge_acc"] == 0.0
