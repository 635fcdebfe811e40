"""Golden tests: every committed benchmark's records render to its committed Markdown and CSV
leaderboards, byte for byte (the tables in results/ are what the code makes of the records).

After a deliberate change to the leaderboard, regenerate them with ``bash results/bench/report.sh``
and review the diff."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mi_bench.cli import cli

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "results" / "bench"


def _benchmarks() -> list[tuple[str, Path]]:
    out = []
    for rec in sorted(BENCH.glob("*.records.jsonl")) + sorted(BENCH.glob("*.records.jsonl.gz")):
        name = rec.name.split(".records.jsonl")[0]
        out.append((name, rec))
    return out


BENCHMARKS = _benchmarks()


def test_there_are_committed_benchmarks_to_check():
    names = {n for n, _ in BENCHMARKS}
    assert {"fidelity", "faces", "attacks", "defenses"} <= names, names


def _render(rec: Path, fmt: str, out: Path) -> str:
    r = CliRunner().invoke(cli, ["leaderboard", "--records", str(rec), "--format", fmt, "-o", str(out)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out.read_text()


@pytest.mark.parametrize("name,rec", BENCHMARKS, ids=[n for n, _ in BENCHMARKS])
@pytest.mark.parametrize("fmt,suffix", [("markdown", ".md"), ("csv", ".csv")])
def test_committed_records_render_to_the_committed_tables(name, rec, fmt, suffix, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # labels and paths in the records are relative to the repository
    # a benchmark with its own report (faces.md, strength.md: <name>_report.py) keeps its
    # leaderboard beside it as <name>_leaderboard.md (report.sh)
    stem = f"{name}_leaderboard" if (fmt == "markdown" and (BENCH / f"{name}_leaderboard.md").is_file()) else name
    committed = BENCH / f"{stem}{suffix}"
    if not committed.is_file():
        pytest.fail(f"{rec.name} is committed without {committed.name}: run bash results/bench/report.sh {name}")
    got = _render(rec, fmt, tmp_path / f"out{suffix}")
    want = committed.read_text()
    if got != want:
        import difflib
        diff = "".join(list(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                                 f"committed {committed.name}", "rendered now"))[:60])
        pytest.fail(f"{committed.name} is not what its records render to "
                    f"(regenerate: bash results/bench/report.sh {name}):\n{diff}")
