"""Every tutorial notebook in notebooks/ is committed executed, runs top to bottom without an error,
and its committed outputs are what the code prints today.

Each notebook is executed once by ``tools.notebooks.check`` (fresh ``python3`` kernel, the
notebook's folder as working directory, this checkout first on ``PYTHONPATH``, the fixed environment
of ``tools.notebooks.KERNEL_ENV``) and compared cell by cell with the committed file after masking
what varies between runs (timings, addresses, paths, progress bars). A stale notebook fails with the
notebook, the cell (index and first source line), a short diff and the refresh command. New
notebooks are picked up without editing this file. The normaliser's own tests use hand-written
expected strings.

Needs the optional packages nbclient, nbformat and ipykernel (and matplotlib, which the tutorials
plot with); the tests are skipped when one is missing.
"""
from __future__ import annotations

import copy

import pytest

from tools import notebooks as nbtools

NOTEBOOKS = nbtools.select()


def _need_jupyter():
    for module in ("nbformat", "nbclient", "ipykernel", "matplotlib"):
        pytest.importorskip(module)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_and_its_committed_outputs_are_current(path):
    _need_jupyter()
    # A failing cell raises CellExecutionError naming it. The suite runs beside other jobs on CI's
    # 2 cores, so it allows a third over the 90 s budget that `refresh` enforces.
    problems, _ = nbtools.check(path, budget_s=nbtools.BUDGET_S * 4 / 3)
    assert not problems, "\n".join(problems + [f"refresh with: {nbtools.REFRESH_COMMAND} {path.stem}"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_executed_top_to_bottom(path):
    """Cheap structural check: code cells numbered 1..n in order, a title cell first."""
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(path, as_version=4)
    counts = [cell.execution_count for cell in notebook.cells if cell.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), (
        f"{path.name}: execution counts {counts}; refresh with: {nbtools.REFRESH_COMMAND} {path.stem}")
    first = notebook.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), f"{path.name}: first cell is not a '# Title'"


def test_normalise_masks_volatile_parts():
    text = (
        "\x1b[31mred\x1b[0m took 1.25 s, then 4ms and 12 µs; 5.5 it/s, 2 GB/s\n"
        " 40%|####      | 4/10 [00:01<00:02,  3.1it/s]\n"
        "timing: compiled 0.31 s, 3.2x faster\n"
        "<function f at 0x7f3ab2c4d5e6> code 0x7f stays\n"
        "/tmp/ipykernel_3485/3170978402.py:12: UserWarning: careful\n"
        f'  File "{nbtools.ROOT}/qlayers/x.py", line 40, in f\n'
        "16 sentences, 3 minima, x / s, 4096x4096\n"
        "half\rwhole   \n\n"
    )
    expected = (
        "red took <time>, then <time> and <time>; <rate>, <rate>\n"
        "timing <masked>\n"
        "<function f at 0x<addr>> code 0x7f stays\n"
        "<cell>:<n>: UserWarning: careful\n"
        '  File "<repo>/qlayers/x.py", line <n>, in f\n'
        "16 sentences, 3 minima, x / s, 4096x4096\n"
        "whole"
    )
    assert nbtools.normalise(text) == expected


@pytest.mark.parametrize("committed, fresh, same", [
    ("acc 0.9722", "acc 0.9722", True),
    ("acc 0.97220", "acc 0.97225", True),      # 5e-5 relative: platform ulps
    ("acc 0.9722", "acc 0.9694", False),        # 3e-3 relative: a real change
    ("8912896 bytes", "8912897 bytes", False),  # integers are exact
    ("mse 1.000e-03", "mse 1.0005e-03", True),
    ("a 1.0 b", "a 1.0 c", False),
    ("1.0 2.0", "1.0", False),
])
def test_same_text_tolerates_float_ulps_only(committed, fresh, same):
    assert nbtools.same_text(committed, fresh) is same


def _tiny_notebook(source, outputs, count=1):
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell("# T"), nbformat.v4.new_code_cell(source)]
    notebook.cells[1].outputs = [nbformat.from_dict(o) for o in outputs]
    notebook.cells[1].execution_count = count
    return notebook


def test_compare_names_the_cell_channel_and_diff():
    committed = _tiny_notebook("print(acc)\n", [{"output_type": "stream", "name": "stdout", "text": "acc 0.97\n"}])
    fresh = copy.deepcopy(committed)
    fresh.cells[1].outputs[0]["text"] = "acc 0.91\n"
    problems = nbtools.compare(committed, fresh, "notebooks/x.ipynb")
    assert len(problems) == 1
    assert problems[0].startswith("notebooks/x.ipynb: cell 1 (`print(acc)`): stdout differs")
    assert "-acc 0.97" in problems[0] and "+acc 0.91" in problems[0]


def test_compare_requires_the_images_and_skips_volatile_cells():
    image = {"output_type": "display_data", "data": {"image/png": "iVBOR", "text/plain": "<Figure>"}, "metadata": {}}
    committed = _tiny_notebook("plt.show()\n", [image, {"output_type": "stream", "name": "stdout", "text": "a\n"}])
    fresh = _tiny_notebook("plt.show()\n", [{"output_type": "stream", "name": "stdout", "text": "b\n"}])
    problems = nbtools.compare(committed, fresh, "n")
    assert any("1 image(s) committed, the fresh run drew 0" in p for p in problems)
    assert any("stdout differs" in p for p in problems)
    committed.cells[1].metadata["tags"] = [nbtools.VOLATILE_TAG]
    assert [p for p in nbtools.compare(committed, fresh, "n") if "stdout" in p] == []


def test_compare_reports_a_notebook_committed_without_outputs():
    committed = _tiny_notebook("print(1)\n", [], count=None)
    fresh = _tiny_notebook("print(1)\n", [{"output_type": "stream", "name": "stdout", "text": "1\n"}])
    assert nbtools.compare(committed, fresh, "n") == ["n: committed without outputs (never executed)"]
