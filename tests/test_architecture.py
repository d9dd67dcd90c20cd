"""The structure docs/architecture.md describes, held by tests: the pure layers load without the
database driver, one YAML reader, no asserts in the product. Which module may import which (no
cycle, the pure layers, the command line on top, triage apart) is import-linter's contracts in
pyproject.toml, run as `lint-imports` by scripts/check.sh."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

from exporter.settings import Settings
from exporter.targets import load_targets

PACKAGE = Path(__file__).resolve().parent.parent / "exporter"
PYPROJECT = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
# The pure layers as the import-linter contract names them: one list, checked two ways.
PURE = next(
    c["source_modules"]
    for c in PYPROJECT["tool"]["importlinter"]["contracts"]
    if c["type"] == "forbidden" and "asyncpg" in c["forbidden_modules"]
)


def test_the_pure_layers_import_without_the_database_driver() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in PURE)
        + "print('asyncpg' in sys.modules, 'aiohttp' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert PURE
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
    assert target.in_targets_file is False
