"""The docs site's generated parts (docs/hooks.py), without building the site: the tutorials and
API nav, sections included from the READMEs, and the dialect examples. `mkdocs build --strict`
in .ci/run checks the rendered site (links, API objects, notebook plots)."""
from __future__ import annotations

import importlib.util
import json

import pytest

from tools import docs_api

ROOT = docs_api.ROOT
pytest.importorskip("mkdocs")


@pytest.fixture(scope="module")
def hooks():
    spec = importlib.util.spec_from_file_location("qzoo_docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nav_lists_every_notebook_and_api_page(hooks):
    config = {"nav": [{"Tutorials": []}, {"API reference": []}]}
    hooks.on_config(config)
    tutorials = config["nav"][0]["Tutorials"]
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert [list(item.values())[0] for item in tutorials] == [f"notebooks/{p.name}" for p in notebooks]
    for item, path in zip(tutorials, notebooks):  # titled by the notebook's first '# ' heading
        first = json.loads(path.read_text())["cells"][0]
        assert "".join(first["source"]).startswith("# " + list(item)[0])
    api = [list(item.values())[0] for item in config["nav"][1]["API reference"]]
    assert api[:2] == ["api/quantizers.md", "api/qlayers.md"]


def test_included_section_is_the_body_up_to_the_next_heading(hooks, tmp_path, monkeypatch):
    monkeypatch.setattr(hooks, "ROOT", tmp_path)
    (tmp_path / "R.md").write_text(
        "# T\n\nintro\n\n## A\n\nsee [the map](docs/architecture.md) and [bench](benchmarks/README.md)\n"
        "```bash\n# not a heading\n```\n### A.1\n\nsub\n\n## B\n\nb text\n")
    assert hooks.section("R.md", "A") == (
        "see [the map](architecture.md) and bench (`benchmarks/README.md`)\n"
        "```bash\n# not a heading\n```\n### A.1\n\nsub")
    assert hooks.section("R.md", "A", following=True).endswith("## B\n\nb text")
    with pytest.raises(ValueError, match="no section 'C'"):
        hooks.section("R.md", "C")


def test_every_included_section_and_dialect_example_resolves(hooks):
    for page in (ROOT / "docs").rglob("*.md"):
        for match in hooks._INCLUDE.finditer(page.read_text()):
            assert hooks.section(match.group(1), match.group(2), bool(match.group(3))).strip(), (page, match.group(0))
        for match in hooks._DIALECT.finditer(page.read_text()):
            assert "qlayers.compat" in hooks.dialect_markdown(match.group(1))
