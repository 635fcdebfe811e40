"""The command line end to end (smoke preset), and every kind of bad input."""

import json
import math
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from mi_bench.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.slow  # an end-to-end smoke run (10-40 s): the slow lane
def test_run_smoke_end_to_end_json_then_cached(env):
    r1 = invoke("run", "preset=smoke", "--json", "--quiet")
    assert r1.exit_code == 0, r1.output
    rec = json.loads(r1.stdout)
    assert rec["trained"] == ["target", "evaluator", "judge-resnet", "judge-robust", "prior"]
    m = rec["metrics"]
    for k in ("target_acc", "eval_acc", "attack_acc", "attack_acc_top5", "knn_dist", "fid_eval"):
        assert m[k] is not None and math.isfinite(m[k]), k
    assert set(m["per_class"]) == {"0", "1", "2", "3", "4"} or set(m["per_class"]) == {0, 1, 2, 3, 4}
    # fid_inception: a number or None with its reason - never silently missing
    assert m["fid_inception"] is not None or ("fid_inception" in m["metric_errors"]
                                              or "fid_inception" in m["metric_absent"])
    assert rec["config"]["defense"]["name"] == "none" and rec["config"]["preset"] == "smoke"
    assert rec["protocol"]["data"]["protocol"] == "disjoint_samples"
    assert set(rec["artifacts"]) == {"target", "evaluator", "judge-resnet", "judge-robust", "prior"}
    assert all(len(a["sha256"]) == 64 for a in rec["artifacts"].values())
    assert {"torch", "mi_bench"} <= set(rec["versions"]) and rec["seed"] == 0
    assert os.path.isfile(rec["grid"]) and os.path.dirname(rec["grid"]) == rec["run_dir"]
    from mi_bench.runs import load_reconstructions
    images, classes = load_reconstructions(rec["run_dir"])
    assert classes == [0, 1, 2, 3, 4] and images.shape[:2] == (5, m["n_reconstructions"] // 5)
    assert 0.0 <= m["attack_acc_ci"][0] <= m["attack_acc"] <= m["attack_acc_ci"][1] <= 1.0
    assert (env / "results" / "mi_bench.sqlite").is_file()

    r2 = invoke("run", "preset=smoke", "--json", "--quiet")
    rec2 = json.loads(r2.stdout)
    assert rec2["trained"] == []
    assert all(a["cached"] for a in rec2["artifacts"].values())
    assert rec2["artifacts"]["target"]["key"] == rec["artifacts"]["target"]["key"]

    # changing only inversion settings reuses target, evaluator and GAN
    r3 = invoke("run", "preset=smoke", "attack.iterations=4", "attack.restarts=2", "--json", "--quiet")
    assert json.loads(r3.stdout)["trained"] == []
    # changing a prior setting retrains only the prior
    r4 = invoke("run", "preset=smoke", "attack.gan_steps=2", "--json", "--quiet")
    assert json.loads(r4.stdout)["trained"] == ["prior"]
    # a defense retrains the target only (GMI's prior is shared across targets)
    r5 = invoke("run", "preset=smoke", "defense=bido", "--json", "--quiet")
    assert json.loads(r5.stdout)["trained"] == ["target"]

    lb = invoke("leaderboard", "--format", "markdown")
    assert lb.exit_code == 0 and "| digits |" in lb.output and "bido[" in lb.output
    js = json.loads(invoke("leaderboard", "--format", "json").output)
    assert len(js) == 4  # r1 and r2 share a config; r3, r4, r5 differ
    csv_out = invoke("leaderboard", "--format", "csv").output
    assert csv_out.splitlines()[0].startswith("dataset,protocol,defense")
    r = invoke("leaderboard", "--format", "latex", "-o", "lb/board.tex", "--plot", "lb/tradeoff.png")
    assert r.exit_code == 0 and (env / "lb" / "tradeoff.png").stat().st_size > 1000
    assert r"\begin{tabular}" in (env / "lb" / "board.tex").read_text()
    assert "<table>" in invoke("leaderboard", "--format", "html").output


@pytest.mark.slow  # an end-to-end smoke run (10-40 s): the slow lane
def test_sweep_expands_and_skips_existing(env):
    r = invoke("sweep", "preset=smoke", "defense=bido", "defense.lambda_y=0.0,0.5", "seed=0", "--quiet")
    assert r.exit_code == 0, r.output
    from mi_bench.results import ResultStore
    assert len(ResultStore("results/mi_bench.sqlite").records()) == 2
    # one summary line per finished cell on stdout; nothing else there
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("[2/2] preset=smoke defense=bido defense.lambda_y=0.5 seed=0:")
    assert "attack acc" in lines[1] and "KID(E)" in lines[1] and "LPIPS-NN n/a" in lines[1]
    r = invoke("sweep", "preset=smoke", "defense=bido", "defense.lambda_y=0.0,0.5", "seed=0", "--quiet")
    assert len(ResultStore("results/mi_bench.sqlite").records()) == 2
    assert r.stdout == "" and "0 to run, 2 done" in r.stderr


@pytest.mark.slow  # an end-to-end smoke run (10-40 s): the slow lane
def test_run_table_goes_to_stdout_and_progress_to_stderr(env):
    """``mi-bench run ... > file`` puts the table in the file; ``--json`` stays pure JSON."""
    cmd = [sys.executable, "-m", "mi_bench.cli"]
    run_env = {**os.environ, "MI_BENCH_OFFLINE": "1"}
    with open(env / "result.txt", "w") as out:
        r = subprocess.run(cmd + ["run", "preset=smoke"], stdout=out, stderr=subprocess.PIPE, text=True,
                           env=run_env, cwd=env, timeout=300)
    assert r.returncode == 0, r.stderr
    table = (env / "result.txt").read_text()
    for row in ("attack acc (top-1)", "KNN dist", "LPIPS-NN", "FID (eval feats)", "KID (eval feats)",
                "KID (Inception)", "MI_BENCH_OFFLINE=1"):
        assert row in table, row
    assert "attack acc (top-1)" not in r.stderr and "train target" in r.stderr  # progress bars
    j = subprocess.run(cmd + ["run", "preset=smoke", "--json"], capture_output=True, text=True,
                       env=run_env, cwd=env, timeout=300)
    m = json.loads(j.stdout)["metrics"]  # stdout is the JSON and nothing else
    assert m["kid_eval"] is not None and m["lpips_nn"] is None
    # smoke keeps 2 reconstructions per class: too few to jackknife, so the SE is n/a with a reason
    assert m["kid_eval_se"] is None and "per class" in m["metric_absent"]["kid_eval_se"]
    assert "MI_BENCH_OFFLINE=1" in m["metric_absent"]["lpips_nn"] and "lpips_nn" not in m["metric_errors"]
    lb = invoke("leaderboard")
    # not a terminal: 200 columns, room for the KID column; one heading per dataset/protocol/attack
    assert "gmi on digits (disjoint_samples, preset smoke)" in lb.stdout and "KID (E)" in lb.stdout
    assert "preset smoke" not in lb.stderr


@pytest.mark.parametrize(
    "args,needle",
    [
        (["defense=bdo"], "unknown defense option 'bdo'. Did you mean 'bido'?"),
        (["attack=gmii"], "unknown attack option 'gmii'"),
        (["preset=fast"], "unknown preset option 'fast'"),
        (["dataset=mnits"], "Did you mean 'mnist'?"),
        (["defense=bido", "defense.lamda_x=0.1"], "unknown config key 'defense.lamda_x'"),
        (["attack.iteration=3"], "Did you mean 'attack.iterations'?"),
        (["seed=abc"], "wrong type for 'seed'"),
        (["defense=bido", "defense.lambda_x=high"], "wrong type for 'defense.lambda_x'"),
        (["target.epochs=0"], "target.epochs=0 is out of range"),
        (["defense=bido", "defense.measure=mi"], "choose one of hsic, coco"),
        (["dataset.protocol=mixed"], "choose one of disjoint_classes, disjoint_samples"),
        (["seed"], "overrides are key=value"),
    ],
)
@pytest.mark.parametrize("command", ["run", "show-config"])
def test_bad_input_exits_2_with_one_clear_line(env, args, needle, command):
    r = invoke(command, *args)
    assert r.exit_code == 2
    err = r.stderr.strip()
    assert needle in err.replace("\n", " ")
    assert err.startswith("error:")
    assert not (env / "results").exists()  # nothing started, nothing written


def test_missing_mnist_exits_2_saying_where_to_put_it(env):
    r = invoke("run", "dataset=mnist", "preset=smoke", f"data_root={env / 'nowhere'}",
               "dataset.download=false", "--quiet")
    assert r.exit_code == 2
    assert "MNIST not found under" in r.stderr and "MI_BENCH_DATA" in r.stderr
    assert not (env / "results").exists()


def test_show_config_resolves_groups_aliases_and_overrides(env):
    r = invoke("show-config", "defense=bido-coco", "seed=3", "attack.iterations=7")
    assert r.exit_code == 0
    import yaml
    cfg = yaml.safe_load(r.output)
    assert cfg["defense"]["name"] == "bido" and cfg["defense"]["measure"] == "coco"
    assert cfg["defense"]["lambda_y"] == 50.0 and cfg["seed"] == 3
    assert cfg["attack"]["iterations"] == 7 and cfg["preset"] == "quick"
    paper = yaml.safe_load(invoke("show-config", "preset=paper").output)
    assert paper["attack"]["gan_width"] == 64 and paper["attack"]["iterations"] == 1500
    assert paper["evaluator"]["epochs"] == 30


def test_list_shows_every_registered_plugin_with_its_paper(env):
    from mi_bench.registry import ATTACKS, DEFENSES
    r = invoke("list")
    assert r.exit_code == 0
    out = r.stdout  # the listing is the command's result
    for name in [*ATTACKS.names(), *DEFENSES.names(), "digits", "mnist", "mcnn", "scnn"]:
        assert name in out
    assert "Peng et al." in out and "CVPR 2020" in out


def test_console_script_is_installed_and_runs():
    r = subprocess.run([sys.executable, "-m", "mi_bench.cli", "show-config", "defense=bido"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "lambda_x: 0.05" in r.stdout
