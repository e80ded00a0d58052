"""The notebooks: the article, runnable (notebooks/*.ipynb).

Each notebook runs top to bottom in a fresh Jupyter kernel (nbclient, from the ``notebooks``
extra) in a temporary folder, and finds real MNIST the way the library does: through
GPUCNN_DATA_DIR, here the session's verified copy (tests/conftest.py). It fails when a cell
raises, the notebook's own checks of the numbers it states included, or when a **bold
figure** its text states is not printed by the code cells that follow that text. The Prefect
cell of notebook 3 only checks its command (GPUCNN_NOTEBOOK_FLOW=check): tests/flows runs the
flow itself. The committed notebooks carry no outputs; a notebook that passes leaves its
executed copy in build/notebooks/ (notebooks/execute.py), which the manual renders.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "notebooks"
_spec = importlib.util.spec_from_file_location("notebooks_execute", FOLDER / "execute.py")
runner = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runner)
# each notebook and the article's sections it demonstrates, one heading each
NOTEBOOKS = {
    "1-the-math.ipynb": ["2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "2.7", "2.8"],
    "2-build-and-train.ipynb": ["3.1", "3.2", "3.3", "3.4", "3.5"],
    "3-improve.ipynb": ["4.1", "4.2", "4.3", "4.4"],
}
BOLD = re.compile(r"\*\*([^*]+)\*\*")
FIGURE = re.compile(r"[-+(]?\d")  # bold text that starts with a number is a stated figure


def read(name: str) -> dict:
    return json.loads((FOLDER / name).read_text(encoding="utf-8"))


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def printed(cell: dict) -> str:
    """The text a code cell printed or returned."""
    out = []
    for o in cell.get("outputs", []):
        if o["output_type"] == "stream":
            out.append("".join(o["text"]) if isinstance(o["text"], list) else o["text"])
        elif o["output_type"] in ("execute_result", "display_data"):
            text = o.get("data", {}).get("text/plain", "")
            out.append("".join(text) if isinstance(text, list) else text)
    return "\n".join(out)


def unprinted_figures(nb: dict) -> list[str]:
    """Bold figures (bold text that starts with a number: **320**, **95.2%**, **-0.4242**,
    **(64, 32, 3, 3)**) in a markdown cell that the code cells after it, up to the next
    markdown cell, do not print; one line per figure, naming the cell."""
    cells, missing = nb["cells"], []
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        figures = [f for f in BOLD.findall(source(cell)) if FIGURE.match(f)]
        following = []
        for later in cells[i + 1 :]:
            if later["cell_type"] == "markdown":
                break
            following.append(printed(later))
        text = "\n".join(following)
        missing += [f"cell {i}: {f!r}" for f in figures if f not in text]
    return missing


def test_the_runner_and_the_manual_know_every_notebook():
    on_disk = sorted(p.name for p in FOLDER.glob("*.ipynb"))
    assert sorted(NOTEBOOKS) == on_disk == sorted(runner.NAMES)


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebooks_are_committed_without_outputs(name):
    nb = read(name)
    run = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and c["outputs"]]
    counted = [i for i, c in enumerate(nb["cells"]) if c.get("execution_count") is not None]
    assert not run and not counted, f"{name}: outputs in cells {sorted(set(run + counted))}"


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_each_notebook_says_what_it_covers_and_how_long_it_takes(name):
    nb = read(name)
    first = source(nb["cells"][0])
    assert nb["cells"][0]["cell_type"] == "markdown" and first.startswith("# ")
    assert "2-core CPU" in first and "**Time:**" in first, f"{name}: no time on a 2-core CPU"
    headings = [
        line
        for c in nb["cells"]
        if c["cell_type"] == "markdown"
        for line in source(c).splitlines()
        if line.startswith("#")
    ]
    for section in NOTEBOOKS[name]:
        assert section in first, f"{name}: the opening cell does not list section {section}"
        assert any(re.search(rf"\b{re.escape(section)}\b", h) for h in headings), (
            f"{name}: no heading for section {section}"
        )


def test_a_bold_figure_that_no_cell_prints_is_reported():
    def md(text):
        return {"cell_type": "markdown", "source": text}

    def code(text):
        return {"cell_type": "code", "outputs": [{"output_type": "stream", "text": text}]}

    nb = {
        "cells": [
            md("It has **320** parameters and **19,694,080** dense ones: **im2col + GEMM**."),
            code("conv: 320 parameters\n"),
            code("dense: 19,694,080\n"),
            md("Accuracy at least **90%**."),
            code("test accuracy 91.66% (at least 89%)\n"),
        ]
    }
    assert unprinted_figures(nb) == ["cell 3: '90%'"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_top_to_bottom_and_prints_what_it_states(
    name, mnist_root, tmp_path, monkeypatch
):
    nbformat = pytest.importorskip("nbformat", reason="the notebooks need the 'notebooks' extra")
    nbclient = pytest.importorskip("nbclient", reason="the notebooks need the 'notebooks' extra")
    pytest.importorskip("ipykernel", reason="the notebooks need the 'notebooks' extra")
    pytest.importorskip("matplotlib", reason="the notebooks need the 'notebooks' extra")
    monkeypatch.setenv("GPUCNN_DATA_DIR", str(mnist_root))  # found as data.load finds it
    try:
        nb = runner.execute(name, tmp_path)  # with GPUCNN_NOTEBOOK_FLOW=check
    except nbclient.exceptions.CellExecutionError as exc:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # the traceback without its colours
        pytest.fail(f"{name} stopped:\n{plain}", pytrace=False)
    missing = unprinted_figures(json.loads(nbformat.writes(nb)))
    assert not missing, f"{name}: stated figures no cell printed:\n" + "\n".join(missing)
    runner.save(nb, name)  # the copy the manual renders
