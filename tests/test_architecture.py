"""The structure docs/architecture.md describes, held by tests: the layers import one way only,
the pure ones without the database driver, one YAML reader, no asserts in the product."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from exporter.settings import Settings
from exporter.targets import load_targets

PACKAGE = Path(__file__).resolve().parent.parent / "exporter"
PURE = ["mapping", "snapshot", "store", "selfmetrics", "exposition", "config", "errors"]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports, at run time or for type checking alike."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        out |= {n for n in names if n in known}
    return out


def test_no_import_cycle() -> None:
    modules = _modules()
    graph = {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}
    graph = {name: {d for d in deps if d != "exporter"} for name, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        assert state.get(name) != 1, "import cycle: " + " -> ".join([*trail, name])
        state[name] = 1
        for dep in sorted(graph.get(name, ())):
            visit(dep, [*trail, name])
        state[name] = 2

    for name in sorted(graph):
        visit(name, [])


def test_the_pure_layers_import_without_the_database_driver() -> None:
    code = (
        "import sys\n"
        + "".join(f"import exporter.{m}\n" for m in PURE)
        + "print('asyncpg' in sys.modules, 'aiohttp' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "False"]


def test_every_yaml_file_is_read_by_the_one_loader() -> None:
    root = PACKAGE.parent
    for path in [*PACKAGE.rglob("*.py"), *(root / "tools").rglob("*.py")]:
        if path.name == "yamlfile.py":
            continue
        text = path.read_text()
        for call in ("yaml.safe_load(", "yaml.load(", "yaml.full_load("):
            assert call not in text, f"{path.relative_to(root)} reads YAML itself: use read_yaml"


def test_no_assert_in_the_product() -> None:
    """`python -O` removes asserts: the product must not rely on one."""
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        asserts = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Assert)]
        assert not asserts, f"{path.name}: assert at lines {asserts}"


def test_one_database_is_a_list_of_one_named_target() -> None:
    (target,) = load_targets(Settings())
    assert target.name
    assert target.probed is False
