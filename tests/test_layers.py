"""The house rules of ARCHITECTURE.md, read from the code: no import circle, nothing below the CLI
imports it or click, every import goes down the layers, and no class grows past 250 lines.

Imports are read with ``ast`` (module level and inside functions alike), leaving out those under
``if TYPE_CHECKING:``, which never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "hpo_infer"

# Highest first; an import may go to its own layer or any below it, never up.
LAYERS = [
    ("cli",),
    ("agent", "reporting"),
    ("study", "trial", "db"),
    ("spec",),
    ("engines",),
    ("measurement", "errors", "storage_url", "hardware", "workload", "model_source", "recorded", "roofline"),
]


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        if "migrations" in p.parts:
            continue
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def _runtime_imports(path: Path, modules: dict[str, Path] | None = None) -> list[tuple[str, int]]:
    """(module, line) of every import that can run: TYPE_CHECKING blocks left out. ``from a.b
    import c`` where ``a.b.c`` is a module counts as an import of that module only."""
    modules = modules or {}
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for b in node.body for n in ast.walk(b)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
            if len(subs) < len(node.names):
                out.append((node.module, node.lineno))
            out += [(m, node.lineno) for m in subs]
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {
        name: {m for m, _ in _runtime_imports(p, mods) if m in mods and m != name and m != "hpo_infer"}
        for name, p in mods.items()
    }


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # hpo_infer itself, hpo_infer.__main__
    for rank, names in enumerate(LAYERS):
        if parts[1] in names:
            return rank
    return None


def test_no_import_circle() -> None:
    graph = _graph()
    seen: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        seen[v] = 1
        path.append(v)
        for w in sorted(graph[v]):
            if seen.get(w) == 1:
                cycles.append(path[path.index(w) :] + [w])
            elif w not in seen:
                visit(w)
        path.pop()
        seen[v] = 2

    for v in sorted(graph):
        if v not in seen:
            visit(v)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_nothing_below_the_cli_imports_it_or_click() -> None:
    bad = []
    for name, path in _modules().items():
        if name.startswith("hpo_infer.cli") or name == "hpo_infer.__main__":
            continue
        for mod, line in _runtime_imports(path):
            if mod == "click" or mod.startswith(("click.", "hpo_infer.cli")):
                bad.append(f"{path.relative_to(PKG.parent)}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


def test_imports_go_down_the_layers() -> None:
    graph, bad = _graph(), []
    for name, deps in graph.items():
        mine = _layer(name)
        assert mine is not None or name in ("hpo_infer", "hpo_infer.__main__"), (
            f"{name} is in no layer of ARCHITECTURE.md"
        )
        for dep in deps:
            theirs = _layer(dep)
            if mine is not None and theirs is not None and theirs < mine:
                bad.append(f"{name} (layer {mine}) imports {dep} (layer {theirs})")
    assert not bad, "\n".join(sorted(bad))


def test_no_package_circle() -> None:
    """Packages in one layer may use each other one way only (agent uses reporting's notes, not back)."""
    edges = {
        (a.split(".")[1], b.split(".")[1])
        for a, deps in _graph().items()
        for b in deps
        if len(a.split(".")) > 1 and len(b.split(".")) > 1 and a.split(".")[1] != b.split(".")[1]
    }
    both = sorted({tuple(sorted(e)) for e in edges if (e[1], e[0]) in edges})
    assert not both, f"packages importing each other: {both}"


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_no_class_over_250_lines(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            n = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            assert n <= 250, f"{path.name}: class {node.name} is {n} lines"


PRIVATE = ("._trial_id", "._storage", "storages._heartbeat", "storages._rdb", '"fixed_params"')


def test_optuna_privates_in_one_module() -> None:
    """Optuna's private API is reached through hpo_infer.study.optuna_api only: an upgrade is read there."""
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        if path.name == "optuna_api.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if any(p in line for p in PRIVATE):
                bad.append(f"{path.relative_to(PKG.parent)}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)
