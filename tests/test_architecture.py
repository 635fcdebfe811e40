"""The shape of the house, checked from the source (ast, nothing imported):

- plugins (attacks/, defenses/) import mi-bench only through ``mi_bench.api`` (besides each
  other's public names: GMI's pieces for the ``random`` baseline, LOMMA's for GMI and KED-MI);
- no module imports another module's private (``_name``) names;
- the package's module-level imports have no cycle;
- no module grows past 600 lines (split it: results/, sweep/ and face_images.py show how)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# mi_bench.attacks / mi_bench.defenses / mi_bench.configs are these folders (pyproject package-dir)
FOLDERS = {"mi_bench": REPO / "mi_bench", "mi_bench.attacks": REPO / "attacks",
           "mi_bench.defenses": REPO / "defenses"}
MAX_LINES = 600
# library support that lives beside the plugins and is re-exported by mi_bench.api
SUPPORT = {"mi_bench.attacks.common"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([pkg, *parts])] = path
    return out


MODULES = _modules()


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if path.name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, *, top_level_only: bool) -> list[tuple[str, list[str], int]]:
    """``(imported module, names, line)`` of a module's imports (``top_level_only``: the
    imports executed at import time, not those inside functions)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # also imports under module-level if/try (TYPE_CHECKING blocks excluded)
        extra = []
        for n in tree.body:
            if isinstance(n, ast.Try):
                extra += n.body + [h for x in n.handlers for h in x.body]
            if isinstance(n, ast.If) and "TYPE_CHECKING" not in ast.unparse(n.test):
                extra += n.body + n.orelse
        nodes = nodes + extra
    out = []
    for n in nodes:
        if isinstance(n, ast.ImportFrom):
            out.append((_resolve(module, path, n), [a.name for a in n.names], n.lineno))
        elif isinstance(n, ast.Import):
            out += [(a.name, [], n.lineno) for a in n.names]
    return out


def test_the_module_map_sees_the_package():
    assert {"mi_bench.api", "mi_bench.cli", "mi_bench.attacks.gmi", "mi_bench.defenses.bido",
            "mi_bench.results.leaderboard", "mi_bench.sweep.cells"} <= set(MODULES)


PLUGINS = sorted(m for m in MODULES if m.startswith(("mi_bench.attacks.", "mi_bench.defenses."))
                 and m not in SUPPORT)


@pytest.mark.parametrize("module", PLUGINS)
def test_plugins_import_mi_bench_only_through_the_api(module):
    bad = []
    for target, names, line in _imports(module, top_level_only=False):
        if not target.startswith("mi_bench"):
            continue
        if target == "mi_bench.api" or target.startswith(("mi_bench.attacks", "mi_bench.defenses")):
            continue
        if target == "mi_bench" and set(names) <= {"api"}:
            continue
        bad.append(f"{MODULES[module].name}:{line} imports {target}")
    assert not bad, "plugins use mi_bench.api (add what they need to its __all__): " + "; ".join(bad)


def test_no_module_imports_another_modules_private_names():
    bad = []
    for module in MODULES:
        for target, names, line in _imports(module, top_level_only=False):
            if not target.startswith("mi_bench") or target == module:
                continue
            bad += [f"{MODULES[module].relative_to(REPO)}:{line} imports {target}.{n}"
                    for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, "make the name public or move it: " + "; ".join(bad)


def test_module_level_imports_have_no_cycle():
    graph: dict[str, set[str]] = defaultdict(set)
    for module in MODULES:
        for target, names, _ in _imports(module, top_level_only=True):
            candidates = [target] + [f"{target}.{n}" for n in names]
            for c in candidates:
                if c in MODULES and c != module:
                    graph[module].add(c)
    # a package's __init__ importing its own submodules is not a cycle through them
    for module in list(graph):
        graph[module] = {t for t in graph[module] if not t.startswith(module + ".")}
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        seen[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if seen.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in seen:
                cycle = visit(t)
                if cycle:
                    return cycle
        stack.pop()
        seen[m] = 2
        return None

    for m in sorted(MODULES):
        if m not in seen:
            cycle = visit(m)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_past_the_size_limit(module):
    n = len(MODULES[module].read_text().splitlines())
    assert n <= MAX_LINES, f"{MODULES[module].relative_to(REPO)} has {n} lines (limit {MAX_LINES}): split it"
