"""The QGIS provider's web layers: one over http(s) is read by geoseg directly (tests/test_qgis.py's
harness, real headless QGIS, a local tile server; the colors test backend)."""

from __future__ import annotations

import pytest
from test_qgis import qgis_profile, run_in_qgis  # noqa: F401  (qgis_profile: a fixture)

import geoseg
from geoseg.io.export import read_provenance

COLORS = {"BACKEND": "colors", "TILE_SIZE": 256, "OVERLAP": 32}


@pytest.mark.qgis
def test_an_xyz_layer_over_http_is_read_directly_not_rendered(qgis_profile, tmp_path):  # noqa: F811
    """An XYZ layer whose tiles come over http(s): geoseg reads the service itself (cached, resumable)
    instead of having QGIS render it, and says so in the provenance."""
    from geoseg.testing.http import RangeServer
    from geoseg.testing.tiles import write_tiles

    ts = write_tiles(tmp_path / "web", n_objects=40, seed=3, columns=4, rows=4)
    x0, y0, x1, y1 = ts.bounds
    extent = f"{x0 + 100},{x1 - 100},{y0 + 100},{y1 - 100} [EPSG:3857]"
    with RangeServer(tmp_path / "web" / "tiles") as srv:
        url = srv.url("") + "{z}/{x}/{y}.png"
        out = tmp_path / "direct.gpkg"
        # zoom 17 is 1.04 m on the ground here: the coarsest zoom finer than 1.1 m
        got = run_in_qgis(qgis_profile, {"INPUT": {"xyz": f"type=xyz&url={url}&zmin=17&zmax=17"}, "PROMPTS": "red",
                                         **COLORS, "EXTENT": extent, "WEB_RESOLUTION": 1.1, "OUTPUT": str(out)})
        assert got["error"] is None, got
        assert srv.requests and all(dict(q.headers).get("User-Agent", "").startswith("geoseg/") for q in srv.requests)
    assert not any("rendering" in line for line in got["lines"]), got["lines"]
    prov = read_provenance(out, "direct")
    assert prov["web_layer"]["read"] == "directly" and prov["web"][0]["zoom"] == 17
    bbox = (x0 + 100, y0 + 100, x1 - 100, y1 - 100)
    want = geoseg.segment(ts.geotiff, "red", segmenter="colors", tile_size=256, overlap=32, bbox=bbox)
    assert got["count"] == len(want) > 0
