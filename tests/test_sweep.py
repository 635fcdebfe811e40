"""Sweeps (smoke preset): parallel workers and the submitit launcher train shared artifacts once,
failed cells are recorded and retried, --status / --dry-run; faults end with one clear line."""

import json
from pathlib import Path

import pytest

from mi_bench.results import ResultStore
from mi_bench.sweep import SweepState, expand, make_cells

from test_cli import invoke  # the same CLI call (the env fixture is conftest's)

DB = "results/mi_bench.sqlite"


def _trainings(records):
    """How many records trained each artifact (kind, key)."""
    out = {}
    for r in records:
        for kind, a in r["artifacts"].items():
            out.setdefault((kind, a["key"]), 0)
            out[(kind, a["key"])] += 0 if a["cached"] else 1
    return out


def test_sweep_defaults_to_three_seeds():
    assert [t[-1] for t in expand(["defense=none"])] == ["seed=0", "seed=1", "seed=2"]
    assert expand(["seed=4", "attack=gmi,kedmi"]) == [["seed=4", "attack=gmi"], ["seed=4", "attack=kedmi"]]
    r = invoke("sweep", "--help")
    assert "seeds 0, 1 and 2" in r.output.replace("\n  ", " ")


@pytest.mark.slow  # minute-long on the 2-core machine: the slow lane
def test_local_workers_run_cells_in_parallel_and_train_shared_artifacts_once(env):
    args = ("sweep", "preset=smoke", "defense=none,bido", "attack=gmi", "seed=0", "--quiet")
    dry = invoke(*args, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "TRAIN" in dry.output and "from cell #1" in dry.output and "0 of 2 cells have records" in dry.output
    r = invoke(*args, "--workers", "2")
    assert r.exit_code == 0, r.output
    recs = ResultStore(DB).records()
    assert len(recs) == 2 and len({x["run_id"] for x in recs}) == 2
    counts = _trainings(recs)
    assert all(n == 1 for n in counts.values()), counts  # evaluator and GMI prior shared: once
    assert len([k for k in counts if k[0] == "target"]) == 2
    assert all(x["machine"]["threads"] == 1 for x in recs)  # 1 thread per worker by default
    for x in recs:  # each record also sits in its run folder, identical
        assert json.loads((Path(x["run_dir"]) / "record.json").read_text()) == x
    status = invoke(*args, "--status")
    assert status.exit_code == 0 and "2 done of 2 cells" in status.output
    again = invoke(*args, "--dry-run")
    assert again.output.count("has record") == 2 and "would run and train 0 artifacts" in again.output
    logs = list(Path("results/sweeps").glob("*/logs/*.log"))
    assert len(logs) == 2  # one log per cell


@pytest.mark.slow  # an end-to-end smoke run (10-40 s): the slow lane
def test_failed_cell_is_recorded_the_sweep_goes_on_and_retry_reruns_it(env, monkeypatch):
    import mi_bench.pipeline as pipeline

    # a learning rate of 1e20 makes the loss NaN on the first step (BiDO's huge lambdas no longer
    # do: its official recipe is Adam, which is invariant to the loss scale)
    args = ("sweep", "preset=smoke", "defense=none", "target.lr=0.1,1e20", "seed=0", "--quiet")
    r = invoke(*args)
    assert r.exit_code == 1
    assert "1 of 2 cells failed" in r.stderr and "Traceback" not in r.output
    assert len(ResultStore(DB).records()) == 1  # the healthy cell ran
    cells = make_cells(args[1:5])
    state = SweepState.for_cells(cells)
    bad = next(c for c in cells if c.cfg.target.lr == 1e20)
    st = state.read(bad.hash)
    assert st["status"] == "failed" and st["error"].startswith("training diverged: ")
    assert st["config"]["target"]["lr"] == 1e20 and "FloatingPointError" in st["traceback"]
    status = invoke(*args, "--status")
    assert "failed" in status.output and "training diverged" in status.output

    assert invoke(*args).exit_code == 0  # failed cells are skipped without --retry-failed
    assert state.read(bad.hash)["attempts"] == 1

    # a transient failure (here: once) is retried and then succeeds
    good_cells = make_cells(("preset=smoke", "defense=bido", "defense.lambda_y=2.0,3.0", "seed=0"))
    real_run, calls = pipeline.Runner.run, []

    def flaky(self):
        calls.append(self.cfg.defense.lambda_y)
        if self.cfg.defense.lambda_y == 3.0 and calls.count(3.0) == 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real_run(self)

    monkeypatch.setattr(pipeline.Runner, "run", flaky)
    args2 = ("sweep", "preset=smoke", "defense=bido", "defense.lambda_y=2.0,3.0", "seed=0", "--quiet")
    assert invoke(*args2).exit_code == 1
    st = SweepState.for_cells(good_cells).read(good_cells[1].hash)
    assert st["status"] == "failed" and st["error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    r = invoke(*args2, "--retry-failed")
    assert r.exit_code == 0, r.output
    st = SweepState.for_cells(good_cells).read(good_cells[1].hash)
    assert st["status"] == "done" and st["attempts"] == 2
    assert len(ResultStore(DB).records()) == 3


@pytest.mark.slow  # minute-long on the 2-core machine: the slow lane
def test_submitit_launcher_runs_a_two_cell_job_array_locally_and_requeues_a_preempted_cell(env):
    import os
    import subprocess
    import sys
    import time

    from submitit.local.local import LocalJobEnvironment

    args = ("sweep", "preset=smoke", "defense=none,bido", "seed=0", "slurm.cluster=local",
            "slurm.time_min=10", "slurm.cpus=1", "--quiet")
    cells = make_cells(args[1:7])
    state = SweepState.for_cells(cells)
    launcher = subprocess.Popen([sys.executable, "-m", "mi_bench.cli", *args, "--launcher", "slurm", "--wait"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # preempt the first cell while it runs: submitit checkpoints it and the job is requeued
    deadline, seen = time.time() + 180, []
    while time.time() < deadline:
        st = state.read(cells[0].hash) or {}
        seen.append(st.get("status"))
        if st.get("status") == "running":
            os.kill(st["pid"], LocalJobEnvironment._usr_sig())
            break
        time.sleep(0.05)
    out = launcher.communicate(timeout=300)[0]
    assert "running" in seen, ("the first cell never showed as running", sorted(set(map(str, seen))), out)
    assert launcher.returncode == 0, out
    recs = ResultStore(DB).records()  # the workers wrote JSON only; the launcher indexed them
    assert sorted(x["config"]["defense"]["name"] for x in recs) == ["bido", "none"]
    for c in cells:
        st = state.read(c.hash)
        assert st["status"] == "done" and st["job_id"] and Path(st["log"]).is_file()  # a log per cell
    job_log = Path(state.read(cells[0].hash)["log"]).read_text()
    # preempted once, requeued, finished (the log says where the signal landed when it did not)
    assert state.read(cells[0].hash)["attempts"] == 2, (state.read(cells[0].hash), job_log[-4000:])
    assert "Calling checkpoint method" in job_log and "Requeued job" in job_log
    assert all(n == 1 for n in _trainings(recs).values())
    assert "2 done of 2 cells" in invoke(*args, "--status").output


def test_results_db_that_is_not_a_database_is_refused_before_training(env):
    Path("results").mkdir()
    Path(DB).write_text("these are my notes, not a database")
    r = invoke("run", "preset=smoke", "--quiet")
    assert r.exit_code == 2
    assert r.stderr.startswith("error:") and "is not a usable SQLite database" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (env / "cache" / "target").exists()  # refused before any training
    r = invoke("sweep", "preset=smoke", "seed=0", "--quiet")
    assert r.exit_code == 2 and "is not a usable SQLite database" in r.stderr


@pytest.mark.parametrize("override,needle", [
    ("results_dir=blocker/runs", "cannot write to results_dir=blocker/runs"),
    ("results_db=blocker/r.sqlite", "cannot write to the folder of results_db=blocker/r.sqlite"),
])
def test_unwritable_results_path_is_refused_before_training(env, override, needle):
    Path("blocker").write_text("a file where a folder should be")
    r = invoke("run", "preset=smoke", override, "--quiet")
    assert r.exit_code == 2 and needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (env / "cache" / "target").exists()


def test_full_disk_is_refused_before_training(env, monkeypatch):
    import mi_bench.fsutil as fsutil

    monkeypatch.setattr(fsutil.shutil, "disk_usage", lambda p: type("U", (), {"free": 2**20})())
    r = invoke("run", "preset=smoke", "--quiet")
    assert r.exit_code == 2 and "only 1 MB free" in r.stderr
    assert not (env / "cache" / "target").exists()


def test_nan_divergence_ends_with_one_line_and_nonzero_exit(env):
    r = invoke("run", "preset=smoke", "defense=none", "target.lr=1e20", "--quiet")
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith("error: training diverged: train target: loss became nan")
    assert "Traceback" not in r.output


@pytest.mark.slow  # an end-to-end smoke run (10-40 s): the slow lane
def test_db_rebuild_and_export_from_run_records(env):
    assert invoke("run", "preset=smoke", "--quiet").exit_code == 0
    assert invoke("run", "preset=smoke", "seed=1", "attack.iterations=2", "--quiet").exit_code == 0
    original = ResultStore(DB).rows()
    r = invoke("db", "rebuild", "--db", "rebuilt.sqlite", "--runs", "results/runs")
    assert r.exit_code == 0 and ResultStore("rebuilt.sqlite").rows() == original
    Path(DB).unlink()
    assert invoke("db", "rebuild").exit_code == 0 and ResultStore(DB).rows() == original
    assert invoke("db", "export", "-o", "out/records.jsonl").exit_code == 0
    lines = Path("out/records.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == ResultStore(DB).records()
    md_db = invoke("leaderboard", "--format", "markdown").output
    assert md_db == invoke("leaderboard", "--records", "out/records.jsonl", "--format", "markdown").output
    assert md_db == invoke("leaderboard", "--records", "results/runs", "--format", "markdown").output


def test_status_tells_running_from_interrupted_by_the_cell_lock(env):
    import subprocess
    import sys
    import time

    from mi_bench.fsutil import HOST
    from mi_bench.sweep import finished

    cells = make_cells(("preset=smoke", "defense=none,bido", "seed=0"))
    state = SweepState.for_cells(cells)
    state.write_manifest(cells, ())
    h = cells[0].hash
    state.write(h, status="running", host=HOST, pid=12345)
    assert state.status(h, set())[0] == "interrupted"  # nobody holds its lock
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from filelock import FileLock; l = FileLock(sys.argv[1]); l.acquire(); "
        "print('held', flush=True); time.sleep(60)"), str(state.folder / "cells" / f"{h}.lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert state.status(h, set())[0] == "running"
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert state.status(h, set())[0] == "interrupted"  # its process died: the OS freed the lock
    assert state.status(h, {h})[0] == "done"  # a record in the database wins
    # a worker killed before recording anything: the cell is failed with the reason
    assert finished(state, cells[1], -9, 1.0, 1, 2) == "failed"
    assert "signal 9" in state.read(cells[1].hash)["error"]


def test_grid_order_puts_one_cell_per_shared_artifact_first():
    from mi_bench.sweep import Cell, order_cells, pick_next

    cells = [Cell([f"c{i}"], None, f"c{i}") for i in range(4)]
    needs = {"c0": {"T0"}, "c1": {"T1", "E"}, "c2": {"T2", "E", "P"}, "c3": {"T3", "P"}}
    order = order_cells(cells, needs)
    assert [c.hash for c in order] == ["c1", "c2", "c0", "c3"]  # E by c1, P by c2, then the rest
    pending = list(order[1:])
    assert pick_next(pending, needs, building={"T1", "E"}).hash == "c0"  # needs nothing in progress


def test_a_cell_state_write_that_expects_an_older_state_leaves_a_newer_one(tmp_path):
    """A launcher marks a cell queued after submitting it; a job that started first and wrote
    'running' keeps its state (the race that left a running cell shown as queued, with no pid)."""
    state = SweepState(tmp_path / "sweep")
    before = state.read("abc") or {}
    state.write("abc", status="running", pid=123, attempts=1)  # the job, fast
    kept = state.write("abc", expect=before, status="queued", job_id="7_0")  # the launcher, late
    assert kept["status"] == "running" and state.read("abc")["pid"] == 123 and "job_id" not in kept
    before = state.read("abc")
    assert state.write("abc", expect=before, status="queued")["status"] == "queued"  # unchanged: written
    assert state.read("abc")["pid"] == 123  # fields merge

