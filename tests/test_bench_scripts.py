"""Every benchmark script still fits the code it measures: each Python script's imports resolve
(executed alone, nothing run), each one with a command line answers ``--help``, each shell
script parses, and every ``mi-bench`` subcommand a shell script calls exists."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mi_bench.cli import cli

REPO = Path(__file__).resolve().parents[1]
PY = sorted((REPO / "results").rglob("*.py"))
SH = sorted((REPO / "results").rglob("*.sh"))


def test_the_scripts_are_found():
    assert len(PY) >= 8 and len(SH) >= 8, (PY, SH)


@pytest.mark.parametrize("script", PY, ids=[p.name for p in PY])
def test_python_script_imports_resolve(script, monkeypatch):
    tree = ast.parse(script.read_text(), str(script))
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert imports, f"{script.name} imports nothing?"
    monkeypatch.syspath_prepend(str(script.parent))  # scripts import their siblings
    for node in imports:
        if isinstance(node, ast.ImportFrom) and node.level:
            continue
        code = compile(ast.Module(body=[node], type_ignores=[]), str(script), "exec")
        try:
            exec(code, {"__name__": "bench_import_check"})
        except ImportError as exc:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mi_bench"):
                raise AssertionError(f"{script.relative_to(REPO)}:{node.lineno}: {exc}") from None
            pytest.skip(f"{script.name} needs {exc.name}, not installed here")


WITH_CLI = [p for p in PY if "argparse" in p.read_text()]


@pytest.mark.slow  # a subprocess each (torch import): about 40 s together
@pytest.mark.parametrize("script", WITH_CLI, ids=[p.name for p in WITH_CLI])
def test_python_script_answers_help(script):
    r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert r.returncode == 0 and "usage" in r.stdout.lower(), r.stderr[-2000:]


@pytest.mark.parametrize("script", SH, ids=[p.name for p in SH])
def test_shell_script_parses_and_calls_existing_commands(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    commands = set(cli.commands)
    for m in re.finditer(r"\bmi-bench\s+([a-z][a-z-]*)", script.read_text()):
        name = m.group(1)
        assert name in commands, f"{script.name} calls 'mi-bench {name}', which does not exist"
        if isinstance(cli.commands[name], type(cli)):  # a group (db ...): its subcommand exists
            rest = script.read_text()[m.end():].split()
            if rest and not rest[0].startswith(("-", "$", '"')):
                assert rest[0] in cli.commands[name].commands, f"{script.name}: mi-bench {name} {rest[0]}"
    assert CliRunner().invoke(cli, ["--help"]).exit_code == 0
