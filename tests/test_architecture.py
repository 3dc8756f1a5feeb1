"""docs/architecture.md stays true: every file path it names exists, every library file has its
line, and every function named in its formula table is defined in the file that row names (the two
hops a newcomer takes)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
PATH = re.compile(r"`((?:quantizers|qlayers|benchmarks|tests|notebooks|docs)/[\w./-]*)`")


def _defined_names(path: Path) -> set:
    """Top-level functions and classes, and ``Class.method`` names, of a Python file."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names.update(f"{node.name}.{item.name}" for item in node.body if isinstance(item, ast.FunctionDef))
    return names


def test_every_path_named_exists():
    paths = set(PATH.findall(DOC.read_text()))
    assert len(paths) > 50
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_every_library_file_is_on_the_map():
    text = DOC.read_text()
    files = sorted(str(p.relative_to(ROOT)) for package in ("quantizers", "qlayers") for p in (ROOT / package).rglob("*.py"))
    missing = [f for f in files if f"`{f}`" not in text]
    assert not missing, f"docs/architecture.md has no line for {missing}"


def test_every_function_in_the_formula_table_is_defined_where_it_says():
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| ") and ".py`" in line]
    assert len(rows) >= 12
    for row in rows:
        _, files, functions = [cell.strip() for cell in row.strip("|").split("|")]
        defined = set().union(*(_defined_names(ROOT / f) for f in PATH.findall(files)))
        for name in re.findall(r"`([\w.]+)`", functions):
            if name in ("encode", "decode"):  # NumberFormat.encode / .decode, named after .quantize
                name = f"NumberFormat.{name}"
            assert name in defined, f"{name} is not defined in {files}"


def test_the_mx_shared_exponent_and_the_rounding_step_are_two_hops_away():
    text = DOC.read_text()
    for file, function in (("quantizers/scaling/block_scales.py", "mx_scale"),
                           ("quantizers/formats/rounding.py", "round_to_integer")):
        assert f"`{file}` | `{function}" in text
        assert function in _defined_names(ROOT / file)


def test_the_readme_links_it():
    assert "docs/architecture.md" in (ROOT / "README.md").read_text()
