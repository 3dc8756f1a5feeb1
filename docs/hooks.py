"""MkDocs hooks of the docs site: pages that are generated, never copied by hand.

- **Tutorials**: every ``notebooks/*.ipynb`` is a page of the site at ``notebooks/<name>/`` (rendered
  by mkdocs-jupyter from its committed outputs, ``execute: false``) and gets a nav entry titled by its
  first ``# heading``; a new notebook needs no edit here or in ``mkdocs.yml``.
- **API reference**: the pages of :mod:`tools.docs_api` (from ``quantizers.__all__``,
  ``qlayers.__all__`` and the public subpackages), generated in memory at every build.
- **Included sections**: a line ``<!-- include: PATH#Heading -->`` becomes the body of that
  section of the Markdown file PATH (relative to the repository root; the heading line itself is
  left out, sub-sections are kept); ``#Heading...`` also takes every section after it. So the README
  and ``benchmarks/README.md`` stay the one copy of what they say. Links to ``docs/...`` are made
  relative to the site; other repository paths become code.
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


_INCLUDE = re.compile(r"^<!-- include: (\S+?)#(.+?)(\.\.\.)? -->$", re.MULTILINE)
_HEADING = re.compile(r"^(#{1,6}) (.+?)\s*$")
_LINK = re.compile(r"\[([^\]]+)\]\((?!https?:|#|mailto:)([^)\s]+)\)")


def section(path: str, heading: str, following: bool = False) -> str:
    """The body of the section titled ``heading`` of the Markdown file ``path`` (repository-relative),
    up to the next heading of the same or a higher level (to the end with ``following``)."""
    lines = (ROOT / path).read_text().splitlines()
    fenced, start, level = False, None, None
    body = []
    for line in lines:
        fenced ^= line.startswith("```")
        match = None if fenced else _HEADING.match(line)
        if start is None:
            if match and match.group(2) == heading:
                start, level = True, len(match.group(1))
            continue
        if match and len(match.group(1)) <= level and not following:
            break
        body.append(line)
    if start is None:
        raise ValueError(f"{path} has no section {heading!r}")
    def link(m):
        target = m.group(2)
        return f"[{m.group(1)}]({target[len('docs/'):]})" if target.startswith("docs/") else f"{m.group(1)} (`{target}`)"
    return _LINK.sub(link, "\n".join(body).strip("\n"))


def on_page_markdown(markdown, page, config, files):
    def include(match):
        try:
            return section(match.group(1), match.group(2), bool(match.group(3)))
        except (OSError, ValueError) as error:
            log.warning("%s: cannot include %s#%s: %s", page.file.src_uri, match.group(1), match.group(2), error)
            return ""
    markdown = _INCLUDE.sub(include, markdown)
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
