"""Execute the tutorial notebooks in place and check that their committed outputs are current.

Notebooks are committed *executed*: a reader of the repository or of the docs site sees every
value table and plot without running anything. This module is the one way to produce those
outputs and the one way to check them::

    python -m tools.notebooks refresh [NAME ...]   # execute and save in place (none = all)
    python -m tools.notebooks check [NAME ...]     # execute, compare, print what is stale

``NAME`` is a file name, a stem or a number prefix (``02``). Both commands run each notebook in a
fresh ``python3`` kernel with ``notebooks/`` as the working directory and the repository root first
on ``PYTHONPATH`` (the checkout, not an installed copy), under a fixed environment (:data:`KERNEL_ENV`):
``QZOO_COMPILE=0`` keeps the kernels eager, so no background compile of the ``"auto"`` policy can
log into whichever cell happens to be running (compiled and eager results are bit-identical, so
only such log lines could differ), ``PYTHONHASHSEED=0`` and ``TQDM_DISABLE=1``.

``check`` (and ``tests/test_notebooks.py``) compares, cell by cell, the text a cell printed
(stdout, stderr), its ``text/plain`` results and its error name and message, after :func:`normalise`
has masked what varies between runs of the same code: durations and rates, lines starting with
``timing``, progress bars, memory addresses, absolute paths and line numbers. Floats (numbers with
a ``.`` or an exponent) match within a relative tolerance of :data:`FLOAT_RTOL`, integers exactly.
Images are not compared (a PNG's bytes change with the matplotlib build), but a cell that has an
image committed must still draw one. A cell tagged ``volatile`` is only checked for running.
The run-time budget of one notebook is :data:`BUDGET_S` seconds; ``refresh`` fails above it.
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
#: Seconds one notebook may take, executed by this module on the 2-core CI machine.
BUDGET_S = 90.0
#: Seconds one cell may run before the execution is abandoned.
CELL_TIMEOUT_S = 300
#: Relative tolerance of float tokens (``|a - b| <= FLOAT_RTOL * max(|a|, |b|)``).
FLOAT_RTOL = 1e-3
#: Environment of the executing kernel (on top of the caller's), identical for refresh and check.
KERNEL_ENV = {"QZOO_COMPILE": "0", "PYTHONHASHSEED": "0", "TQDM_DISABLE": "1"}
#: Cell tag that exempts a cell's text from the comparison.
VOLATILE_TAG = "volatile"
REFRESH_COMMAND = "python -m tools.notebooks refresh"

IMAGE_TYPES = ("image/png", "image/svg+xml", "image/jpeg")

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_PROGRESS = re.compile(r"\d+%\|| \d+/\d+ \[|\[\d+:\d+<|\bit/s\]|\bs/it\]")
_NUMBER = r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?"
_DURATION = re.compile(
    rf"(?<![\w.]){_NUMBER}\s?(?:s|sec|secs|seconds?|ms|us|µs|μs|ns|min|mins|minutes?)(?![\w/])")
_RATE = re.compile(rf"(?<![\w.]){_NUMBER}\s?(?:it/s|s/it|[A-Za-z]+/s)(?!\w)")
_TIMING_LINE = re.compile(r"^(\s*)timing\b.*$", re.IGNORECASE | re.MULTILINE)
_SITE_PACKAGES = re.compile(r"[^\s\"']*?[/\\\\](lib[/\\\\]python\d+\.\d+[/\\\\]site-packages)")
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{9,}\b")
_CELL_FILE = re.compile(r"(?:<tmp>[/\\\\])?ipykernel_\d+[/\\\\]\d+\.py")
_LINE_NO = re.compile(r"(\.pyx?|\.ipynb|>)(:|\", line )\d+")
_TOKEN = re.compile(_NUMBER)


def _path_replacements() -> List[Tuple[str, str]]:
    """Absolute paths that differ between machines, longest first, with their placeholders."""
    places = {
        str(ROOT): "<repo>",
        sys.prefix: "<env>",
        sys.base_prefix: "<python>",
        tempfile.gettempdir(): "<tmp>",
        os.path.expanduser("~"): "<home>",
    }
    places = {path: name for path, name in places.items() if path and path not in ("/", ".")}
    return sorted(places.items(), key=lambda item: -len(item[0]))


def normalise(text: str) -> str:
    """``text`` with what varies between runs of the same code masked (see the module docstring).

    ANSI colours are removed, a ``\\r`` keeps only what was written after it on its line,
    progress-bar lines are dropped, a duration (``12.3 s``, ``4ms``) becomes ``<time>``, a rate
    (``3.2 it/s``, ``5 GB/s``) ``<rate>``, a line starting with ``timing`` keeps only that word,
    an address ``0x7f3a...`` (9+ hex digits) ``0x<addr>``, the repository, environment, home and
    temporary directories ``<repo>``, ``<env>``, ``<home>``, ``<tmp>``, the file of a cell
    (``ipykernel_<pid>/<hash>.py``) ``<cell>``, and a line number in a
    file reference (``x.py:12:``, ``", line 12``) ``<n>``. Trailing spaces and blank lines go.
    """
    text = _ANSI.sub("", text.replace("\r\n", "\n"))
    lines = []
    for line in text.split("\n"):
        line = line.rsplit("\r", 1)[-1]
        if _PROGRESS.search(line):
            continue
        lines.append(line.rstrip())
    text = "\n".join(lines)
    text = _TIMING_LINE.sub(r"\1timing <masked>", text)
    text = _SITE_PACKAGES.sub(r"<env>/\1", text)  # any environment's site-packages
    for path, name in _path_replacements():
        text = text.replace(path, name)
    text = _CELL_FILE.sub("<cell>", text)
    text = _DURATION.sub("<time>", text)
    text = _RATE.sub("<rate>", text)
    text = _ADDRESS.sub("0x<addr>", text)
    text = _LINE_NO.sub(r"\1\2<n>", text)
    return "\n".join(line for line in text.split("\n") if line.strip())


def same_text(committed: str, fresh: str, rtol: float = FLOAT_RTOL) -> bool:
    """Whether two normalised texts match: equal outside numbers, integers equal, floats within
    ``rtol`` relative difference (a float is a number written with ``.`` or an exponent)."""
    if committed == fresh:
        return True
    words_a, words_b = _TOKEN.split(committed), _TOKEN.split(fresh)
    numbers_a, numbers_b = _TOKEN.findall(committed), _TOKEN.findall(fresh)
    if words_a != words_b or len(numbers_a) != len(numbers_b):
        return False
    for a, b in zip(numbers_a, numbers_b):
        if a == b:
            continue
        if not any(c in a + b for c in ".eE"):
            return False
        x, y = float(a), float(b)
        if abs(x - y) > rtol * max(abs(x), abs(y)):
            return False
    return True


@dataclass(frozen=True)
class CellText:
    """What one code cell showed, as compared: text per channel and whether it drew an image."""

    channels: Dict[str, str]
    images: int


def cell_text(cell) -> CellText:
    """The comparable outputs of a code cell: ``stdout`` and ``stderr`` (each joined over the
    cell, since a stream may arrive in any number of chunks), ``result`` (the ``text/plain`` of
    results and displays without an image, in order), ``error`` (name: message), each normalised."""
    parts: Dict[str, List[str]] = {"stdout": [], "stderr": [], "result": [], "error": []}
    images = 0
    for output in cell.get("outputs", []):
        kind = output.get("output_type")
        if kind == "stream":
            parts[output.get("name", "stdout")].append(output.get("text", ""))
        elif kind in ("execute_result", "display_data"):
            data = output.get("data", {})
            if any(t in data for t in IMAGE_TYPES):
                images += 1
            elif "text/plain" in data:
                parts["result"].append(data["text/plain"])
        elif kind == "error":
            parts["error"].append(f"{output.get('ename')}: {output.get('evalue')}")
    channels = {name: normalise("".join(texts) if name in ("stdout", "stderr") else "\n".join(texts))
                for name, texts in parts.items()}
    return CellText({name: text for name, text in channels.items() if text}, images)


def _first_line(cell) -> str:
    line = next((line for line in cell.source.splitlines() if line.strip()), "")
    return line if len(line) <= 70 else line[:67] + "..."


def _short_diff(committed: str, fresh: str, limit: int = 16) -> str:
    lines = list(difflib.unified_diff(committed.splitlines(), fresh.splitlines(), "committed", "fresh", lineterm="", n=1))
    if len(lines) > limit:
        lines = lines[:limit] + [f"... ({len(lines) - limit} more diff lines)"]
    return "\n".join("      " + line for line in lines)


def compare(committed, fresh, name: str) -> List[str]:
    """Differences between a committed notebook and the same notebook freshly executed, one
    message per stale code cell (index, first source line, channel, short diff); empty when current."""
    problems = []
    pairs = [(i, a, b) for i, (a, b) in enumerate(zip(committed.cells, fresh.cells)) if a.cell_type == "code"]
    if pairs and all(not a.get("outputs") and a.get("execution_count") is None for _, a, _ in pairs):
        return [f"{name}: committed without outputs (never executed)"]
    for index, old_cell, new_cell in pairs:
        where = f"{name}: cell {index} (`{_first_line(old_cell)}`)"
        counts = (old_cell.get("execution_count"), new_cell.get("execution_count"))
        if counts[0] != counts[1]:
            problems.append(f"{where}: execution count {counts[0]}, fresh run gives {counts[1]} (run top to bottom once)")
        if VOLATILE_TAG in old_cell.get("metadata", {}).get("tags", []):
            continue
        old, new = cell_text(old_cell), cell_text(new_cell)
        for channel in sorted(set(old.channels) | set(new.channels)):
            a, b = old.channels.get(channel, ""), new.channels.get(channel, "")
            if not same_text(a, b):
                problems.append(f"{where}: {channel} differs\n{_short_diff(a, b)}")
        if new.images < old.images:
            problems.append(f"{where}: {old.images} image(s) committed, the fresh run drew {new.images}")
    return problems


def select(names: Sequence[str] = ()) -> List[Path]:
    """Notebooks of ``notebooks/`` named by file name, stem or prefix (all when ``names`` is empty)."""
    notebooks = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    if not names:
        return notebooks
    chosen = []
    for name in names:
        found = [p for p in notebooks if p.name == name or p.stem == name or p.name.startswith(name)
                 or str(p) == str(Path(name).resolve())]
        if not found:
            raise SystemExit(f"no notebook matches {name!r}; notebooks: {[p.name for p in notebooks]}")
        chosen += [p for p in found if p not in chosen]
    return chosen


def execute(path: Path):
    """Execute the notebook at ``path`` as described in the module docstring; returns the
    executed notebook (not saved) and the wall time in seconds."""
    import nbclient
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    env = dict(os.environ, **KERNEL_ENV)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    client = nbclient.NotebookClient(
        notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3", record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute(env=env)
    return notebook, time.perf_counter() - start


def refresh(path: Path) -> float:
    """Execute the notebook at ``path`` and save it in place with its outputs; returns seconds."""
    import nbformat

    notebook, seconds = execute(path)
    notebook.metadata.pop("widgets", None)
    nbformat.write(notebook, path)
    return seconds


def check(path: Path, budget_s: float = BUDGET_S) -> Tuple[List[str], float]:
    """Execute the notebook at ``path`` and compare it with the committed file: (problems, seconds).
    Running longer than ``budget_s`` is a problem too."""
    import nbformat

    committed = nbformat.read(path, as_version=4)
    fresh, seconds = execute(path)
    name = f"notebooks/{path.name}"
    problems = compare(committed, fresh, name)
    if seconds > budget_s:
        problems.append(f"{name}: ran {seconds:.0f} s, over the {budget_s:.0f} s budget")
    return problems, seconds


def main(argv: Optional[Iterable[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.notebooks", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("refresh", "check"))
    parser.add_argument("names", nargs="*", help="notebook file names, stems or prefixes (default: all)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    failed = False
    for path in select(args.names):
        if args.command == "refresh":
            seconds = refresh(path)
            over = seconds > BUDGET_S
            failed |= over
            print(f"{path.name}: executed and saved in {seconds:.1f} s"
                  + (f" -- over the {BUDGET_S:.0f} s budget" if over else ""))
        else:
            problems, seconds = check(path)
            failed |= bool(problems)
            print(f"{path.name}: {'stale' if problems else 'current'} ({seconds:.1f} s)")
            for problem in problems:
                print("  " + problem)
            if problems:
                print(f"  refresh with: {REFRESH_COMMAND} {path.stem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
