"""The terminal leaderboard (issue 11): it fits 80 columns without cutting a number, groups rows
under headings, counts seeds, tells n/a from failed, and filters; so do the other formats."""

import json
import re

import pytest
from boards import record, write_jsonl
from click.testing import CliRunner
from rich.console import Console

from mi_bench.cli import cli
from mi_bench.results import columns, leaderboard, missing_metrics, select, table_rows
from mi_bench.results.terminal import board

THREE_JUDGES = {"eval": [[0, 0], [1, 1], [2, 9], [3, 3], [4, 4]],
                "resnet": [[0, 0], [1, 7], [2, 2], [3, 3], [4, -1]],
                "robust": [[0, 5], [1, 1], [2, 2], [3, 3], [4, 4]]}


def _records():
    """Long labels, 3-seed groups (Student-t intervals), three judges, two attacks, two datasets."""
    recs = []
    for s, acc in enumerate([0.6, 0.9, 1.0]):
        recs.append(record(f"n{s}", seed=s, attack_acc=acc, target_acc=0.95 + 0.01 * s, judges=THREE_JUDGES))
        recs.append(record(f"b{s}", seed=s, defense="bido", label="bido[lambda_x=0.05,lambda_y=0.5]",
                           attack_acc=acc - 0.3, target_acc=0.93 + 0.02 * s, judges=THREE_JUDGES))
    recs.append(record("m0", defense="mid", label="mid[beta=0.01]", attack_acc=0.72, judges=THREE_JUDGES,
                       extra={"knn_dist": 12345.678}))
    recs.append(record("k0", attack="kedmi", attack_acc=0.44, judges=THREE_JUDGES))
    recs.append(record("q0", dataset="mnist", protocol="disjoint_classes", attack_acc=0.64))
    return recs


def _render(rows, width=80, wide=False):
    parts, need = board(rows, width=width, wide=wide)
    con = Console(width=max(width, need), record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    for p in parts:
        con.print(p)
    con.file.close()
    return con.export_text(), need


def test_narrow_layout_fits_80_columns_and_cuts_no_number():
    rows = leaderboard(_records())
    text, need = _render(rows)
    assert need == 80
    table_lines = [ln for ln in text.splitlines() if ln.strip()]
    assert all(len(ln) <= 80 for ln in table_lines), max(table_lines, key=len)
    # one heading per dataset / protocol / attack / preset, and no column repeating them
    for title in ("gmi on digits (disjoint_samples, preset quick)", "kedmi on digits (disjoint_samples, preset quick)",
                  "gmi on mnist (disjoint_classes, preset quick)"):
        assert title in text
    assert "dataset" not in text.split("\n\n")[1] and "disjoint_samples  " not in text
    # the first columns are there, each cell whole on one line
    left_out = re.search(r"Left out at 80 columns: (.*?) \(a wider", text.replace("\n", " "))
    hidden = left_out.group(1) if left_out else ""
    cols = columns(rows)
    for row, cells in zip(rows, table_rows(rows)):
        for (key, pct, header), cell in zip(cols, cells):
            if pct is None or cell in ("-", "n/a", "failed"):
                continue
            if key in ("target_acc", "attack_acc", "consensus_acc"):
                assert cell in text, (key, cell)
            elif cell not in text:  # a column left out must be named as such
                assert hidden, (key, cell)
    # the long number of a column that fits shows whole or its column is left out
    assert "12345.68" in text or "KNN dist" in hidden
    # a defense label wraps between its strength fields, never inside one
    assert "lambda_x=0.05" in text and "lambda_y=0.5" in text
    # rich itself would have cut these cells at 80 columns: our widths avoided it
    assert "…" not in text


def test_wide_shows_every_column_and_the_seed_list():
    rows = leaderboard(_records())
    text, need = _render(rows, wide=True)
    assert need > 80
    for cells in table_rows(rows):
        for cell in cells[6:]:
            assert cell in text, cell
    assert "3 (0,1,2)" in text and "seeds: n (list)" in text
    assert "bido[lambda_x=0.05,lambda_y=0.5]" in text


def test_seeds_column_shows_the_count():
    rows = leaderboard(_records())
    text, _ = _render([r for r in rows if r["attack"] == "gmi" and r["dataset"] == "digits"], width=120)
    header = next(ln for ln in text.splitlines() if "seeds" in ln)
    start = header.index("seeds")
    counts = {ln.split()[0]: ln[start:start + 5].strip() for ln in text.splitlines()
              if ln.split() and ln.split()[0] in ("none", "bido", "mid")}
    assert counts == {"none": "3", "bido": "3", "mid": "1"}


def test_na_versus_failed_with_footnotes(tmp_path):
    recs = _records()
    mid = next(r for r in recs if r["run_id"] == "m0")
    mid["metrics"]["lpips_nn"] = None
    mid["metrics"]["metric_errors"]["lpips_nn"] = "RuntimeError: LPIPS exploded (test)"
    legacy = recs[-1]  # mi-bench < 0.2 recorded missing Inception weights as an error
    legacy["metrics"]["metric_errors"]["fid_inception"] = (
        "FileNotFoundError: Inception-v3 FID weights not on disk (/x.pth); download it")
    del legacy["metrics"]["metric_absent"]["fid_inception"]
    rows = leaderboard(recs)
    row = next(r for r in rows if r["defense"] == "mid[beta=0.01]")
    assert row["failed_metrics"] == ["lpips_nn"] and "fid_inception" in row["absent_metrics"]
    old = next(r for r in rows if r["dataset"] == "mnist")
    assert old["failed_metrics"] == [] and "older mi-bench" in old["absent_reasons"]["fid_inception"]
    assert missing_metrics({"metric_errors": {"knn_dist": "ValueError: x"}}) == ({"knn_dist": "ValueError: x"}, {})
    text, _ = _render(rows, wide=True)
    flat = " ".join(text.split())
    assert "failed, LPIPS-NN: RuntimeError: LPIPS exploded (test)" in flat
    assert "n/a (absent by design), FID (Inc.), KID (Inc.): Inception-v3 FID weights" in flat
    assert "failed, FID (Inc.)" not in flat  # the legacy record's missing weights are n/a too
    marks = set(re.findall(r"(?:n/a|failed)([¹²³⁴⁵⁶⁷⁸⁹]+)", text))
    assert len(marks) == 3  # Inception (new wording), Inception (legacy wording), the LPIPS failure
    assert re.search(r"failed[¹²³]", text) and "0.432" in text  # the other rows keep their value
    # narrow: a column without any value collapses into one line, its footnote kept
    narrow, _ = _render(rows)
    assert re.search(r"In every row: .*FID \(Inc\.\) n/a", narrow)
    # markdown keeps its wide table and says n/a / failed
    path = write_jsonl(tmp_path / "r.jsonl", recs)
    md = CliRunner().invoke(cli, ["leaderboard", "--records", str(path), "--format", "markdown"]).output
    assert "| failed |" in md and "| n/a |" in md


def test_select_by_dataset_attack_defense_and_preset():
    rows = leaderboard(_records())
    assert {r["defense"] for r in select(rows, defense=["bido"])} == {"bido[lambda_x=0.05,lambda_y=0.5]"}
    assert {r["defense"] for r in select(rows, defense=["mid[beta=0.01]", "none"])} == {"mid[beta=0.01]", "none"}
    assert {r["attack"] for r in select(rows, attack=["kedmi"])} == {"kedmi"}
    assert {r["dataset"] for r in select(rows, dataset=["mnist"])} == {"mnist"}
    assert select(rows, preset=["paper"]) == []
    assert len(select(rows)) == len(rows)


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv", "json", "latex", "html"])
def test_cli_filters_apply_to_every_format(fmt, tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", _records())
    r = CliRunner().invoke(cli, ["leaderboard", "--records", str(path), "--format", fmt,
                                 "--dataset", "digits", "--attack", "gmi", "--defense", "bido,mid"])
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "bido" in out and "mid" in out
    assert "kedmi" not in out and "mnist" not in out
    if fmt == "json":
        assert {e["defense"] for e in json.loads(out)} == {"bido[lambda_x=0.05,lambda_y=0.5]", "mid[beta=0.01]"}
    elif fmt in ("markdown", "csv", "html", "latex"):
        assert not re.search(r"(^|\|) ?none ?[|,&]", out, re.M)
    else:  # the terminal table: one heading, no "none" row
        assert out.count("gmi on digits") == 1 and not re.search(r"^none ", out, re.M)


def test_cli_table_reads_several_record_files_and_fits_columns(tmp_path, monkeypatch):
    a = write_jsonl(tmp_path / "a.jsonl", _records()[:6])
    b = write_jsonl(tmp_path / "b.jsonl", _records()[5:])  # one record in both: counted once
    monkeypatch.setenv("COLUMNS", "80")
    r = CliRunner().invoke(cli, ["leaderboard", "--records", str(a), "--records", str(b)])
    assert r.exit_code == 0, r.output
    assert max(len(ln) for ln in r.stdout.splitlines()) <= 80
    assert "kedmi on digits" in r.stdout and "gmi on mnist" in r.stdout
    wide = CliRunner().invoke(cli, ["leaderboard", "--records", str(a), "--records", str(b), "--wide"])
    assert "3 (0,1,2)" in wide.stdout and "KID (E)" in wide.stdout


def test_entries_with_one_label_but_different_configs_say_how_they_differ():
    a, b, c = record("a"), record("b"), record("c", defense="mid", label="mid[beta=0.1]")
    a["config"]["attack"]["restarts"], b["config"]["attack"]["restarts"] = 2, 3
    a["config"]["results_db"], b["config"]["results_db"] = "x.sqlite", "y.sqlite"  # not a difference
    b["group_hash"] = "other"
    rows = leaderboard([a, b, c])
    assert sorted(r["variant"] for r in rows) == ["", "attack.restarts=2", "attack.restarts=3"]
    text, _ = _render(rows)
    assert "(attack.restarts=2)" in text and "(attack.restarts=3)" in text and "results_db" not in text
    # only non-semantic keys differ (records hashed by an older mi-bench): those are named
    b["config"]["attack"]["restarts"] = 2
    assert {r["variant"] for r in leaderboard([a, b])} == {"results_db=x.sqlite", "results_db=y.sqlite"}
