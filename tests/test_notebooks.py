"""Every tutorial notebook in notebooks/ runs top to bottom without an error.

Each notebook is executed with nbclient on a fresh ``python3`` kernel (the interpreter running
pytest, since jupyter_client swaps a kernelspec's ``python`` for ``sys.executable``), with the
notebook's own folder as the working directory, as a reader running it in Jupyter would. New
notebooks (``notebooks/02_*.ipynb``, ...) are picked up without editing this file.

Needs the optional packages nbclient, nbformat and ipykernel (and matplotlib, which the tutorials
plot with); the tests are skipped when one is missing.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_without_error(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel imports qzoo from this checkout (as tests/conftest.py does for the tests), not from
    # whatever copy the environment has installed.
    root = str(NOTEBOOK_DIR.parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")

    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    # A failing cell raises CellExecutionError, whose message names the cell and the traceback.
    client.execute()


def test_notebooks_are_saved_without_outputs() -> None:
    """Outputs (images especially) would bloat every diff; notebooks are committed cleared."""
    nbformat = pytest.importorskip("nbformat")
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        dirty = [
            index for index, cell in enumerate(notebook.cells)
            if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
        ]
        assert not dirty, f"{path.name}: code cells {dirty} hold outputs; clear them before committing"
