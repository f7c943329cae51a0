"""The QGIS provider's mosaic switch: several layers or a folder read as one raster (tests/test_qgis.py's harness)."""

from __future__ import annotations

import pyogrio
import pytest
from affine import Affine
from test_qgis import qgis_profile, run_in_qgis, worker  # noqa: F401  (qgis_profile: a fixture)

import geoseg
from geoseg.testing.scenes import draw, random_objects, write_geotiff

PROMPTS = ["red", "green", "blue"]
COLORS = {"BACKEND": "colors", "TILE_SIZE": 256, "OVERLAP": 32}


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    """A 400² px scene cut into 2 x 2 adjacent files, and what the library finds in them as a mosaic."""
    folder = tmp_path_factory.mktemp("qgis_mosaic") / "tiles"
    folder.mkdir()
    rgb = draw(400, 400, random_objects(400, 400, 30, seed=11, r_range=(12, 30)))
    origin = Affine(0.5, 0, 404000.0, 0, -0.5, 3286000.0)
    paths = [write_geotiff(folder / f"t{i}{j}.tif", rgb[i * 200:(i + 1) * 200, j * 200:(j + 1) * 200],
                           transform=origin @ Affine.translation(j * 200, i * 200)) for i in range(2) for j in range(2)]
    whole = geoseg.segment(folder, PROMPTS, segmenter="colors", tile_size=256, overlap=32, mosaic=True)
    return folder, paths, whole


def test_worker_runs_a_mosaic_job(tiles, tmp_path):
    folder, _, whole = tiles
    out = tmp_path / "out.gpkg"
    code, lines = worker({"inputs": [str(folder)], "prompts": PROMPTS, "output": str(out), "mosaic": True,
                          **{k.lower(): v for k, v in COLORS.items()}})
    assert code == 0, lines
    got = pyogrio.read_dataframe(out)
    assert len(got) == len(whole) and sorted(got["source"]) == sorted(whole["source"])
    assert [e["value"] for e in lines if e["type"] == "progress"][-1] == 1.0


@pytest.mark.qgis
def test_processing_mosaic_of_layers_or_a_folder(qgis_profile, tiles, tmp_path):  # noqa: F811
    folder, paths, whole = tiles
    separate = geoseg.segment(folder, PROMPTS, segmenter="colors", tile_size=256, overlap=32)
    assert len(separate) > len(whole)  # file by file, objects on the edges are cut
    for i, params in enumerate([{"INPUT": paths[0], "MORE_INPUTS": paths[1:]}, {"FOLDER": str(folder)}]):
        out = tmp_path / f"m{i}.gpkg"
        got = run_in_qgis(qgis_profile, {**params, "MOSAIC": True, "PROMPTS": "red,green,blue", **COLORS,
                                         "OUTPUT": str(out)})
        assert got["error"] is None and got["count"] == len(whole), got
        assert sorted(pyogrio.read_dataframe(out)["source"]) == sorted(whole["source"])
    # without the switch, several layers are segmented one by one into the one output
    got = run_in_qgis(qgis_profile, {"FOLDER": str(folder), "PROMPTS": "red,green,blue", **COLORS,
                                     "OUTPUT": str(tmp_path / "s.gpkg")})
    assert got["error"] is None and got["count"] == len(separate), got
    # the switch with one layer says what is missing
    got = run_in_qgis(qgis_profile, {"INPUT": paths[0], "MOSAIC": True, "PROMPTS": "red", **COLORS,
                                     "OUTPUT": str(tmp_path / "one.gpkg")})
    assert "MOSAIC: give several layers" in got["error"], got
    assert not (tmp_path / "one.gpkg").exists()
