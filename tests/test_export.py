"""`mi-bench db export` over an existing records file: it never drops records unseen. A database
that lacks some of the file's records (rebuilt on a new machine, or holding only new cells) is an
error naming --merge and --replace, and the file is left as it was."""

import json
from pathlib import Path

from test_cli import invoke  # the same CLI call (the env fixture is conftest's)


def _rec(run_id: str, created: str, config_hash: str) -> dict:
    return {"run_id": run_id, "created_at": created, "config_hash": config_hash, "metrics": {}}


def _write(path: str, recs: list[dict]) -> Path:
    p = Path(path)
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return p


def _ids(path: Path) -> list[str]:
    return [json.loads(x)["run_id"] for x in path.read_text().splitlines()]


def test_export_over_a_file_with_records_the_database_lacks_fails_and_keeps_the_file(env):
    committed = _write("committed.jsonl", [_rec("a", "2026-01-01", "h1"), _rec("b", "2026-01-02", "h2")])
    before = committed.read_text()
    _write("new.jsonl", [_rec("c", "2026-01-03", "h3")])  # the "database": one new cell only
    r = invoke("db", "export", "--db", "new.jsonl", "-o", "committed.jsonl")
    assert r.exit_code != 0
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "holds 2 record(s) the database does not (e.g. run a)" in r.stderr
    assert "--merge" in r.stderr and "--replace" in r.stderr
    assert committed.read_text() == before


def test_merge_keeps_the_files_records_and_a_new_run_of_the_same_config_replaces_its_old_one(env):
    _write("committed.jsonl", [_rec("a", "2026-01-01", "h1"), _rec("b", "2026-01-02", "h2")])
    _write("new.jsonl", [_rec("b2", "2026-01-04", "h2"), _rec("c", "2026-01-03", "h3")])
    r = invoke("db", "export", "--db", "new.jsonl", "-o", "committed.jsonl", "--merge")
    assert r.exit_code == 0, r.output
    assert _ids(Path("committed.jsonl")) == ["a", "c", "b2"]  # by creation time; b superseded


def test_replace_drops_them_a_superset_needs_no_flag_and_both_flags_are_refused(env):
    _write("committed.jsonl", [_rec("a", "2026-01-01", "h1"), _rec("b", "2026-01-02", "h2")])
    _write("all.jsonl", [_rec("a", "2026-01-01", "h1"), _rec("b", "2026-01-02", "h2"), _rec("c", "2026-01-03", "h3")])
    assert invoke("db", "export", "--db", "all.jsonl", "-o", "committed.jsonl").exit_code == 0
    assert _ids(Path("committed.jsonl")) == ["a", "b", "c"]
    _write("new.jsonl", [_rec("d", "2026-01-05", "h4")])
    both = invoke("db", "export", "--db", "new.jsonl", "-o", "committed.jsonl", "--merge", "--replace")
    assert both.exit_code != 0 and "not both" in both.stderr and _ids(Path("committed.jsonl")) == ["a", "b", "c"]
    assert invoke("db", "export", "--db", "new.jsonl", "-o", "committed.jsonl", "--replace").exit_code == 0
    assert _ids(Path("committed.jsonl")) == ["d"]


def test_an_export_to_gz_is_gzipped_and_reads_back(env):
    import gzip

    from mi_bench.results.store import load_records

    _write("all.jsonl", [_rec("a", "2026-01-01", "h1"), _rec("b", "2026-01-02", "h2")])
    assert invoke("db", "export", "--db", "all.jsonl", "-o", "out.records.jsonl.gz").exit_code == 0
    raw = Path("out.records.jsonl.gz").read_bytes()
    assert [json.loads(x)["run_id"] for x in gzip.decompress(raw).decode().splitlines()] == ["a", "b"]
    assert [r["run_id"] for r in load_records("out.records.jsonl.gz", upgrade=False)] == ["a", "b"]
    assert invoke("db", "export", "--db", "all.jsonl", "-o", "out.records.jsonl.gz").exit_code == 0
    assert Path("out.records.jsonl.gz").read_bytes() == raw  # the same records, the same bytes
