"""MkDocs hooks of the docs site: pages that are generated, never copied by hand.

- **Tutorials**: every ``notebooks/*.ipynb`` is a page of the site at ``notebooks/<name>/`` (rendered
  by mkdocs-jupyter from its committed outputs, ``execute: false``) and gets a nav entry titled by its
  first ``# heading``; a new notebook needs no edit here or in ``mkdocs.yml``.
- **API reference**: the pages of :mod:`tools.docs_api` (from ``quantizers.__all__``,
  ``qlayers.__all__`` and the public subpackages), generated in memory at every build.
- **Dialect examples**: a line ``<!-- dialect: NAME -->`` in a page becomes the original config of
  :data:`DIALECT_EXAMPLES` beside what ``qlayers.compat.NAME.translate`` returns for it at build time.
"""
from __future__ import annotations

import json
import logging
import pprint
import re
import sys
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.docs_api import api_pages, page_markdown  # noqa: E402

NOTEBOOK_DIR = ROOT / "notebooks"
IMAGE_TYPES = ("image/png", "image/svg+xml", "image/jpeg")
log = logging.getLogger("mkdocs.hooks.qzoo")  # warnings under "mkdocs" fail a --strict build
_pages = []

#: Original configs of each dialect, as their users write them (Python literals), and the call of
#: ``qlayers.compat.<name>.translate`` that reads them.
DIALECT_EXAMPLES = {
    "amct": ("""{
    "batch_num": 4,
    "quant_cfg": {
        "weights": {"type": "mxfp4_e2m1"},
        "inputs": {"type": "hifloat8", "symmetric": True, "strategy": "tensor"},
    },
    "algorithm": {"minmax"},
    "skip_layers": ["lm_head"],
}""", lambda compat, cfg: compat.amct.translate(cfg)),
    "mqbench": ("""{
    "quant_dict": {"chip": "BM1688", "quantmode": "weight_activation", "strategy": "CNN"},
    "extra_qconfig_dict": {
        "w_observer": "MinMaxObserver",
        "a_observer": "EMAMinMaxObserver",
        "w_fakequantize": "E4M3FakeQuantize",
        "a_fakequantize": "E4M3FakeQuantize",
        "w_qscheme": {"bit": 8, "symmetry": True, "per_channel": True, "pot_scale": False},
        "a_qscheme": {"bit": 8, "symmetry": True, "per_channel": False, "pot_scale": False},
    },
}""", lambda compat, cfg: compat.mqbench.translate(cfg)),
    "coreai_opt": ("""{
    "dtype": "int4",
    "qscheme": "symmetric",
    "granularity": {"type": "per_block", "axis": 1, "block_size": 32},
}""", lambda compat, cfg: compat.coreai_opt.translate(cfg, "weight")),
}
_DIALECT = re.compile(r"^<!-- dialect: (\w+) -->$", re.MULTILINE)


def dialect_markdown(name: str) -> str:
    """Two columns: the dialect's original config and the qzoo config it translates to."""
    import ast

    from qlayers import compat

    source, translate = DIALECT_EXAMPLES[name]
    translated = pprint.pformat(translate(compat, ast.literal_eval(source)), sort_dicts=False, width=60)
    return "\n".join([
        '<div class="grid" markdown>', "", '<div markdown>', "", f"**{name} config**", "",
        "```python", source, "```", "", "</div>", '<div markdown>', "",
        f"**`qlayers.compat.{name}.translate`**", "", "```python", translated, "```", "", "</div>", "", "</div>",
    ])


def committed_images(path: Path) -> int:
    """How many image outputs the committed notebook at ``path`` holds."""
    return sum(any(t in output.get("data", {}) for t in IMAGE_TYPES)
               for cell in json.loads(path.read_text())["cells"] for output in cell.get("outputs", []))


def on_post_page(output, page, config):
    """A tutorial page must show its outputs: at least as many images as the notebook has committed,
    and some output at all (a notebook committed unexecuted fails the strict build)."""
    source = page.file.abs_src_path or ""
    if source.endswith(".ipynb"):
        path = Path(source)
        expected, shown = committed_images(path), output.count("data:image/")
        if shown < expected:
            log.warning("%s: %d image outputs committed, %d rendered", path.name, expected, shown)
        if not any(cell.get("outputs") for cell in json.loads(path.read_text())["cells"]):
            log.warning("%s has no outputs: refresh it with python -m tools.notebooks refresh %s", path.name, path.stem)
    return output


def on_page_markdown(markdown, page, config, files):
    return _DIALECT.sub(lambda match: dialect_markdown(match.group(1)), markdown)


def notebook_title(path: Path) -> str:
    """The text of the notebook's first ``# `` heading (its file stem if it has none)."""
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return path.stem


def _fill(nav, title, entries):
    for item in nav:
        if isinstance(item, dict) and title in item:
            item[title] = entries
            return
    nav.append({title: entries})


def on_config(config):
    _pages[:] = api_pages()
    nav = config["nav"]
    _fill(nav, "Tutorials", [{notebook_title(p): f"notebooks/{p.name}"} for p in sorted(NOTEBOOK_DIR.glob("*.ipynb"))])
    _fill(nav, "API reference", [{page.module: page.filename} for page in _pages])
    return config


@event_priority(100)  # before mkdocs-jupyter wraps the notebook files
def on_files(files, config):
    for path in sorted(NOTEBOOK_DIR.glob("*.ipynb")):
        # A real file (src_dir = the repository root) so mkdocs-jupyter's wrapper can read it.
        files.append(File(f"notebooks/{path.name}", src_dir=str(ROOT), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    for page in _pages:
        files.append(File.generated(config, page.filename, content=page_markdown(page, _pages)))
    return files
