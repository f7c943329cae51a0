"""The QGIS provider's EXEMPLARS layer: boxes drawn in QGIS find their kind (tests/test_qgis.py's harness)."""

from __future__ import annotations

import geopandas as gpd
import pytest
import shapely
from affine import Affine
from test_qgis import qgis_profile, run_in_qgis  # noqa: F401  (qgis_profile: a fixture)

import geoseg
from geoseg.io.export import read_provenance
from geoseg.testing.scenes import color_of, draw, random_objects, write_geotiff

COLORS = {"BACKEND": "colors", "TILE_SIZE": 256, "OVERLAP": 32}
ORIGIN = Affine(0.5, 0, 404000.0, 0, -0.5, 3286000.0)


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """A 600² px scene, a layer of two boxes in lon/lat (a blue object, and a red one as a negative
    example), and what the library finds with them."""
    d = tmp_path_factory.mktemp("qgis_exemplars")
    objs = random_objects(600, 600, 50, seed=9, r_range=(10, 30))
    rgb = draw(600, 600, objs)
    scene = write_geotiff(d / "scene.tif", rgb, transform=ORIGIN)
    boxes = []
    for label in ("blue", "red"):
        o = next(o for o in objs if o.label == label and 20 < o.row < 500 and 20 < o.col < 500
                 and whole(o, rgb))
        (x0, y0), (x1, y1) = ORIGIN @ (o.col - 2, o.row - 2), ORIGIN @ (o.col + o.mask.shape[1] + 2,
                                                                        o.row + o.mask.shape[0] + 2)
        boxes.append(shapely.box(x0, y1, x1, y0))
    layer = gpd.GeoDataFrame({"prompt": ["mine", "mine"], "positive": [True, False]}, geometry=boxes,
                             crs="EPSG:32617").to_crs("EPSG:4326")
    layer.to_file(d / "exemplars.gpkg")
    want = geoseg.segment(scene, segmenter="colors", exemplars=d / "exemplars.gpkg", tile_size=256, overlap=32)
    return scene, str(d / "exemplars.gpkg"), want


def whole(o, rgb):
    """Whether no later object covers any of `o`."""
    crop = rgb[o.row:o.row + o.mask.shape[0], o.col:o.col + o.mask.shape[1]]
    return bool((crop[o.mask] == color_of(o.label, o.number)).all())


@pytest.mark.qgis
def test_processing_exemplars_layer(qgis_profile, drawn, tmp_path):  # noqa: F811
    scene, exemplars, want = drawn
    assert len(want) and set(want["label"]) == {"mine"}
    out = tmp_path / "found.gpkg"
    got = run_in_qgis(qgis_profile, {"INPUT": scene, "EXEMPLARS": exemplars, **COLORS, "OUTPUT": str(out)})
    assert got["error"] is None, got
    assert got["count"] == len(want) and got["labels"] == ["mine"]
    assert sorted(gpd.read_file(out).geometry.area.round(3)) == sorted(want.geometry.area.round(3))
    assert read_provenance(out, "found")["exemplars"].startswith("exemplars (QGIS layer) (")
    # a box outside the raster: one line, before the run
    far = gpd.read_file(exemplars).translate(1.0, 0)  # a degree east
    far.to_file(tmp_path / "far.gpkg")
    got = run_in_qgis(qgis_profile, {"INPUT": scene, "EXEMPLARS": str(tmp_path / "far.gpkg"), **COLORS,
                                     "OUTPUT": str(tmp_path / "none.gpkg")})
    assert got["error"] and "EXEMPLARS" in got["error"] and "outside every input" in got["error"], got
