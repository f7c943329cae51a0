"""The QGIS provider's OBJECTS layer: clicks drawn in QGIS come back as whole objects
(tests/test_qgis.py's harness, real headless QGIS; the colors test backend)."""

from __future__ import annotations

import geopandas as gpd
import pytest
from test_objects import OBJECTS, ORIGIN, iou, on, truth_of, write
from test_qgis import qgis_profile, run_in_qgis  # noqa: F401  (qgis_profile: a fixture)

import geoseg
from geoseg.io.export import read_provenance
from geoseg.testing import draw, write_geotiff

COLORS = {"BACKEND": "colors", "TILE_SIZE": 256, "OVERLAP": 32}


@pytest.mark.qgis
def test_processing_objects_layer(qgis_profile, tmp_path):  # noqa: F811
    scene = write_geotiff(tmp_path / "scene.tif", draw(1024, 1024, list(OBJECTS.values())), transform=ORIGIN)
    truth = geoseg.segment(scene, ["red", "green", "blue"], segmenter="colors", tile_size=1024, overlap=0, simplify=0)
    clicks = write(tmp_path / "clicks.gpkg", [{"object": n, "label": n, "geometry": on(n)}
                                              for n in ("astride", "large")], crs="EPSG:4326")
    out = tmp_path / "found.gpkg"
    params = {"INPUT": scene, "OBJECTS": str(clicks), **COLORS, "OUTPUT": str(out)}
    got = run_in_qgis(qgis_profile, params)
    assert got["error"] is None, got
    assert got["count"] == 2 and sorted(got["labels"]) == ["astride", "large"]
    found = gpd.read_file(out)
    for name in ("astride", "large"):
        geom = found[found["label"] == name].geometry.iloc[0]
        assert iou(geom, truth_of(truth, name)) >= 0.95, name  # the default simplification: half a pixel
    assert read_provenance(out, "found")["objects"].startswith("clicks (QGIS layer) (")
    # an object with negative clicks only: one line, before the run
    bad = write(tmp_path / "bad.gpkg", [{"positive": False, "geometry": on("astride")}])
    got = run_in_qgis(qgis_profile, {"INPUT": scene, "OBJECTS": str(bad), **COLORS,
                                     "OUTPUT": str(tmp_path / "none.gpkg")})
    assert got["error"] and "OBJECTS" in got["error"] and "negative clicks only" in got["error"], got

