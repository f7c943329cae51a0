"""The notebooks run top to bottom, offline, on a tiny random SAM 3 (GEOSEG_MODEL).

Each runs where it lies, in notebooks/, as a user runs it: it must write nothing there
(its files go to a temporary folder) and print no terminal escape codes (progress
without ipywidgets is plain text). CI can equally run
`GEOSEG_MODEL=DIR HF_HUB_OFFLINE=1 pytest --nbmake notebooks/`.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook test needs nbformat, nbclient and ipykernel")
nbclient = pytest.importorskip("nbclient", reason="the notebook test needs nbformat, nbclient and ipykernel")
pytest.importorskip("ipykernel", reason="the notebook test needs nbformat, nbclient and ipykernel")
pytest.importorskip("matplotlib", reason="the notebooks need matplotlib")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from geoseg.testing import build_tiny_sam3

    return str(build_tiny_sam3(tmp_path_factory.mktemp("tiny_sam3")))


def test_there_are_seven_notebooks_with_outputs_cleared():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: clear the outputs"


def _files(folder: pathlib.Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: pathlib.Path, tiny_model: str, monkeypatch):
    before = _files(path.parent)
    # the kernel inherits this process's environment
    monkeypatch.setenv("GEOSEG_MODEL", tiny_model)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("GEOSEG_EPOCHS", "1")  # 06: the distillation loop end to end, the student untrained
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)  # executed in memory: the file on disk stays cleared
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError, naming the cell, when a cell fails
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    if "MODEL" in "".join(c.source for c in nb.cells):
        assert "GEOSEG_MODEL is set" in text and os.path.isdir(tiny_model)
    assert "\x1b[" not in text, f"{path.name}: terminal escape codes in the outputs (progress bars?)"
    assert _files(path.parent) == before, f"{path.name} wrote into notebooks/: write to a temporary folder"


def test_progress_in_jupyter_is_plain_text_without_ipywidgets(tmp_path: pathlib.Path):
    """Fast, without a model: several files with progress=True in a real kernel. Without ipywidgets tqdm
    falls back to terminal bars, whose nested positions print cursor escapes into the cell."""
    from geoseg.testing import make_scene

    for k in range(2):
        make_scene(tmp_path / f"scene_{k}.tif", size=600, seed=k)
    code = (f"import geoseg\ngdf = geoseg.segment({str(tmp_path)!r}, ['red'], segmenter='colors', progress=True, "
            "tile_size=256, overlap=32)\nprint(len(gdf), 'objects')")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    text = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    assert "\x1b[" not in text and "objects" in text
    if importlib.util.find_spec("ipywidgets") is None:  # else the bars are widgets, not text
        assert "scene_0.tif: 9/9 tiles (100 %)" in text and "scene_1.tif: 9/9 tiles (100 %)" in text


def test_the_notebooks_readme_commands_are_installed_by_the_extras_it_names():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    readme = (ROOT / "notebooks" / "README.md").read_text()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    named = set(re.search(r'pip install -e "\.\[([a-z0-9,]+)\]"', readme).group(1).split(","))
    installed = " ".join(d for name in named for d in extras[name])
    assert "--nbmake" in readme and "nbmake" in installed  # the pytest plugin the command uses
    assert "dask[distributed]" in installed and "ipykernel" in installed  # notebook 3's LocalCluster, the kernel
    assert "not built yet" not in readme and "LocalCluster" in readme
