"""The notebooks run top to bottom, offline, on a tiny random SAM 3 (GEOSEG_MODEL).

Each runs in a copy of notebooks/ under a temporary folder (they write files next to
themselves), with ../sample_data pointing at the repository's. CI can equally run
`GEOSEG_MODEL=DIR HF_HUB_OFFLINE=1 pytest --nbmake notebooks/`.
"""

from __future__ import annotations

import os
import pathlib
import shutil

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


def test_there_are_four_notebooks_with_outputs_cleared():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name}: clear the outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: pathlib.Path, tiny_model: str, tmp_path: pathlib.Path, monkeypatch):
    work = tmp_path / "notebooks"
    work.mkdir()
    shutil.copy(path, work / path.name)
    (tmp_path / "sample_data").symlink_to(ROOT / "sample_data", target_is_directory=True)
    # the kernel inherits this process's environment
    monkeypatch.setenv("GEOSEG_MODEL", tiny_model)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(work / path.name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError, naming the cell, when a cell fails
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    if "MODEL" in "".join(c.source for c in nb.cells):
        assert "GEOSEG_MODEL is set" in text and os.path.isdir(tiny_model)
