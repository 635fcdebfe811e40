"""Many writers, one results database and one artifact cache: nothing lost, duplicated, trained
twice or left half-written - also when a process is killed with SIGKILL."""

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from mi_bench.artifacts import ArtifactStore
from mi_bench.errors import NotWritable, ResultsError
from mi_bench.fsutil import HOST, check_writable, sweep_tmp
from mi_bench.results import ResultStore, load_records
from mi_bench.runs import write_record


def _record(run_id, seed=0, attack_acc=0.5):
    return {
        "run_id": run_id, "created_at": "2026-01-01T00:00:00+00:00", "config_hash": f"c{run_id}",
        "group_hash": "g", "defense_label": "none", "seed": seed,
        "config": {"dataset": {"name": "digits", "protocol": "disjoint_samples"},
                   "attack": {"name": "gmi"}, "preset": "smoke", "seed": seed},
        "metrics": {"target_acc": 0.9, "attack_acc": attack_acc, "per_class": {"0": 1.0}},
    }


WRITER = textwrap.dedent("""
    import sys
    from mi_bench.results import ResultStore
    from mi_bench.runs import write_record
    from pathlib import Path
    db, runs, w, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    Path(runs, f"ready-{w}").touch()
    while not Path(runs, "go").exists():
        pass
    store = ResultStore(db)
    for i in range(n):
        rid = f"w{w}-r{i:03d}"
        rec = {"run_id": rid, "created_at": f"2026-01-01T00:00:{i % 60:02d}", "config_hash": rid,
               "group_hash": "g", "defense_label": "none", "seed": i,
               "config": {"dataset": {"name": "digits", "protocol": "p"}, "attack": {"name": "gmi"},
                          "preset": "smoke", "seed": i},
               "metrics": {"target_acc": 0.5, "attack_acc": i / n}}
        write_record(runs / rid, rec)
        store.append(rec)
""")


@pytest.mark.slow  # an end-to-end smoke run (10-40 s): the slow lane
def test_eight_concurrent_writers_lose_nothing_and_rebuild_equals(tmp_path):
    db, runs = tmp_path / "r.sqlite", tmp_path / "runs"
    runs.mkdir()
    n = 25
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(runs), str(w), str(n)])
             for w in range(8)]
    deadline = time.time() + 60
    while len(list(runs.glob("ready-*"))) < 8 and time.time() < deadline:
        time.sleep(0.05)
    (runs / "go").touch()  # all eight start writing at once
    assert all(p.wait(timeout=120) == 0 for p in procs)
    store = ResultStore(db)
    rows = store.rows()
    ids = [r[0] for r in rows]
    assert len(ids) == 8 * n and len(set(ids)) == 8 * n
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert len(list(runs.glob("*/record.json"))) == 8 * n

    rebuilt = ResultStore(tmp_path / "rebuilt.sqlite")
    count, moved = rebuilt.rebuild(runs)
    assert count == 8 * n and moved is None
    assert rebuilt.rows() == rows  # every column of every row
    again = ResultStore(db)
    again.rebuild(runs)  # in place, idempotent
    assert again.rows() == rows


def test_rebuild_moves_a_broken_database_aside(tmp_path):
    runs = tmp_path / "runs"
    for i in range(3):
        write_record(runs / f"r{i}", _record(f"r{i}", seed=i))
    db = tmp_path / "r.sqlite"
    db.write_text("not a database, just text")
    n, moved = ResultStore(db).rebuild(runs)
    assert n == 3 and moved is not None and moved.read_text() == "not a database, just text"
    assert [r["run_id"] for r in ResultStore(db).records()] == ["r0", "r1", "r2"]


def test_sync_indexes_only_new_records_and_append_is_idempotent(tmp_path):
    runs = tmp_path / "runs"
    store = ResultStore(tmp_path / "r.sqlite")
    write_record(runs / "a", _record("a"))
    store.append(_record("a"))
    store.append(_record("a"))  # a retried index write: no duplicate
    write_record(runs / "b", _record("b"))
    assert store.sync(runs) == 1
    assert [r["run_id"] for r in store.records()] == ["a", "b"]


def test_load_records_reads_database_jsonl_and_folders_alike(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    for i in range(2):
        rec = _record(f"r{i}", seed=i)
        store.append(rec)
        write_record(tmp_path / "runs" / rec["run_id"], rec)
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in store.records()))
    a = load_records(tmp_path / "r.sqlite")
    assert a == load_records(tmp_path / "r.jsonl") == load_records(tmp_path / "runs")
    with pytest.raises(ResultsError, match="no results at"):
        load_records(tmp_path / "missing.jsonl")


def test_gzipped_records_read_like_plain_ones_and_a_corrupt_one_is_refused(tmp_path):
    import gzip

    recs = [_record(f"r{i}", seed=i) for i in range(2)]
    text = "".join(json.dumps(r) + "\n" for r in recs)
    (tmp_path / "r.jsonl").write_text(text)
    (tmp_path / "r.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    assert load_records(tmp_path / "r.jsonl.gz") == load_records(tmp_path / "r.jsonl")
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(text.encode())[:40])
    with pytest.raises(ResultsError, match="not a readable gzipped records file"):
        load_records(tmp_path / "cut.jsonl.gz")


def test_text_file_as_database_is_refused_with_one_line(tmp_path):
    db = tmp_path / "results.sqlite"
    db.write_text("hello")
    with pytest.raises(ResultsError, match=r"is not a usable SQLite database .*db rebuild") as err:
        ResultStore(db).check()
    assert "\n" not in str(err.value)


# -- artifact cache -----------------------------------------------------------------------------

BUILDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    from mi_bench.artifacts import ArtifactStore
    root, log = Path(sys.argv[1]), Path(sys.argv[2])
    def build():
        with open(log, "a") as f:
            f.write("trained\\n")
        time.sleep(2.0)  # a slow trainer: the other process arrives while this one holds the lock
        return {"w": torch.arange(4.0)}, {"note": "x"}
    tensors, meta, cached = ArtifactStore(root).load_or_build("prior-gmi", "k", build)
    print(meta["sha256"], cached, float(tensors["w"].sum()))
""")


@pytest.mark.slow  # an end-to-end smoke run (10-40 s): the slow lane
def test_two_processes_needing_one_artifact_train_it_once(tmp_path):
    log = tmp_path / "trainings.log"
    procs = [subprocess.Popen([sys.executable, "-c", BUILDER, str(tmp_path / "cache"), str(log)],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert log.read_text().count("trained") == 1
    assert outs[0][0] == outs[1][0]  # same artifact (sha256)
    assert sorted(o[1] for o in outs) == ["False", "True"]  # one built it, the other loaded it
    assert {o[2] for o in outs} == {"6.0"}


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    import mi_bench.artifacts as art
    root, marker = Path(sys.argv[1]), Path(sys.argv[2])
    def slow_save(tensors, path):
        Path(path).write_bytes(b"partial tensor bytes")
        marker.touch()
        time.sleep(60)  # killed here, in the middle of writing the artifact
    art.save_file = slow_save
    art.ArtifactStore(root).load_or_build("target", "k", lambda: ({"w": torch.ones(3)}, {}))
""")


def test_kill_9_during_artifact_write_then_rerun(tmp_path):
    root, marker = tmp_path / "cache", tmp_path / "writing"
    p = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(root), str(marker)])
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists()
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    d = root / "target" / "k"
    assert [f.name for f in d.iterdir() if f.name.endswith(".tmp")]  # the killed write's leftover
    store = ArtifactStore(root)
    assert not store.exists("target", "k")
    lock = store.lock("target", "k")
    lock.acquire(timeout=5)  # the dead holder's lock is free again (OS lock), no waiting
    lock.release()
    tensors, meta, cached = store.load_or_build("target", "k", lambda: ({"w": torch.ones(3)}, {}))
    assert not cached and torch.equal(tensors["w"], torch.ones(3))
    assert not [f for f in d.iterdir() if f.name.endswith(".tmp")]
    assert store.load("target", "k")[1]["sha256"] == meta["sha256"]


def test_corrupt_cached_artifact_is_moved_aside_and_rebuilt(tmp_path, caplog):
    store = ArtifactStore(tmp_path)
    store.save("evaluator", "k", {"w": torch.zeros(3)}, {})
    f = tmp_path / "evaluator" / "k" / "tensors.safetensors"
    f.write_bytes(f.read_bytes()[:-4] + b"junk")
    builds = []

    def build():
        builds.append(1)
        return {"w": torch.ones(3)}, {}

    with caplog.at_level(logging.WARNING):
        tensors, _, cached = store.load_or_build("evaluator", "k", build)
    assert builds == [1] and not cached and torch.equal(tensors["w"], torch.ones(3))
    aside = [p for p in (tmp_path / "evaluator").iterdir() if p.name.startswith("k.corrupt-")]
    assert len(aside) == 1 and (aside[0] / "tensors.safetensors").read_bytes().endswith(b"junk")
    assert "checksum mismatch" in caplog.text and "moved it aside" in caplog.text
    assert store.load_or_build("evaluator", "k", build)[2] is True and builds == [1]

    (tmp_path / "evaluator" / "k" / "meta.json").write_text("{not json")  # unreadable meta
    assert store.load_or_build("evaluator", "k", build)[2] is False and builds == [1, 1]


def test_sweep_tmp_removes_only_files_of_dead_writers(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "run1" / f".grid.png.{HOST}-{dead.pid}.abc123.tmp"
    live = tmp_path / "run2" / f".grid.png.{HOST}-{os.getpid()}.def456.tmp"
    other_host = tmp_path / "run2" / f".grid.png.elsewhere-{dead.pid}.ghi789.tmp"
    for p in (stale, live, other_host):
        p.parent.mkdir(exist_ok=True)
        p.write_text("x")
    assert sweep_tmp(tmp_path, depth=2) == [stale]
    assert live.exists() and other_host.exists()  # another host's process cannot be checked
    old = time.time() - 2 * 24 * 3600
    os.utime(other_host, (old, old))
    assert sweep_tmp(tmp_path, depth=2) == [other_host]


def test_check_writable_names_a_blocked_path_and_a_full_disk(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotWritable, match=r"cannot write to results_dir=x .*is a file, not a folder"):
        check_writable(tmp_path / "file" / "runs", "results_dir=x")
    check_writable(tmp_path / "new" / "deeper", "results_dir=y")  # need not exist; nothing created
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    import mi_bench.fsutil as fsutil

    monkeypatch.setattr(fsutil.shutil, "disk_usage", lambda p: type("U", (), {"free": 5 * 2**20})())
    with pytest.raises(NotWritable, match=r"only 5 MB free .*needs at least 100 MB"):
        check_writable(tmp_path, "results_dir=x")
