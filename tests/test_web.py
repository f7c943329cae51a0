"""Tile services as inputs: a local server (a child process) serves a generated scene cut into
the 256 px tiles of zoom 17, XYZ and TMS rows, with faults on demand; geoseg reads it through
GDAL's WMS driver and must find what it finds in the same scene read from a GeoTIFF."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from conftest import one_line_error, run
from pyproj import Transformer
from test_resume import start_and_stop

import geoseg
from geoseg.explorer import explore
from geoseg.io import services, web
from geoseg.io.export import read_provenance
from geoseg.testing import ColorSegmenter
from geoseg.testing.http import RangeServer
from geoseg.testing.tiles import write_capabilities, write_tiles

PROMPTS = ["red", "green", "blue"]
COLORS = ["-p", "red", "-p", "green", "-p", "blue", "--backend", "colors", "--tile-size", "512", "--overlap", "64",
          "--web-zoom", "17", "--cpu-workers", "0"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """6 x 6 service tiles of zoom 17 as XYZ and as TMS rows; the same scene as a GeoTIFF."""
    d = tmp_path_factory.mktemp("web")
    xyz = write_tiles(d / "xyz", n_objects=90, seed=4)
    tms = write_tiles(d / "tms", n_objects=90, seed=4, tms=True)
    return xyz, tms, d


@pytest.fixture
def server(scene):
    xyz, _, d = scene
    with RangeServer(d / "xyz" / "tiles") as srv:
        yield srv


def template(srv, query=""):
    return srv.url("") + "{z}/{x}/{y}.png" + query


def inner_bbox(ts, inset=150.0):
    """An area inside the scene, cutting through service tiles and geoseg tiles."""
    x0, y0, x1, y1 = ts.bounds
    return f"{x0 + inset},{y0 + inset},{x1 - inset},{y1 - inset}"


def assert_same_objects(got, ref):
    """Every object once, each matching the GeoTIFF run's object of its label (IoU >= 0.98)."""
    assert len(got) == len(ref) > 20
    tree = shapely.STRtree(ref.geometry.values)
    for geom, label in zip(got.geometry.values, got["label"]):
        near = [k for k in tree.query(geom) if ref["label"].iloc[k] == label]
        other = [ref.geometry.iloc[k] for k in near]
        best = max((shapely.intersection(geom, o).area / shapely.union(geom, o).area for o in other), default=0.0)
        assert best >= 0.98, (label, best)


def reference(ts, bbox):
    return geoseg.segment(ts.geotiff, PROMPTS, segmenter=ColorSegmenter(), tile_size=512, overlap=64,
                          bbox=bbox, cpu_workers=0)


@pytest.mark.parametrize("rows", ["xyz", "tms"])
def test_a_tile_service_gives_the_objects_of_the_same_scene_on_file(scene, tmp_path, rows):
    xyz, tms, d = scene
    ts = xyz if rows == "xyz" else tms
    with RangeServer(d / rows / "tiles") as srv:
        url = srv.url("") + ("{z}/{x}/{y}.png" if rows == "xyz" else "{z}/{x}/{-y}.png")
        out = tmp_path / "out.gpkg"
        r = run("segment", url, *COLORS, "--bbox", inner_bbox(ts), "-o", out, "--tile-cache", tmp_path / "cache",
                "--attribution", "Tiles (c) geoseg tests")
        assert r.exit_code == 0, r.output
        fetched = [q for q in srv.requests if q.status == 200]
    got = pyogrio.read_dataframe(out)
    ref = reference(ts, tuple(float(v) for v in inner_bbox(ts).split(",")))
    assert_same_objects(got, ref)
    big = ref.geometry.area.max()  # the ring, larger than a service tile and astride geoseg tiles: whole
    assert big > (256 * 1.19) ** 2 and np.isclose(got.geometry.area.max(), big, rtol=0.02)
    assert len(fetched) == 36 and len({q.path for q in fetched}) == 36  # each tile once
    assert all(dict(q.headers).get("User-Agent", "").startswith("geoseg/") for q in fetched)
    prov = read_provenance(out)
    (service,) = prov["web"]
    assert service["zoom"] == 17 and service["attribution"] == "Tiles (c) geoseg tests"
    assert service["service"] == url and service["tiles"] == 36
    assert service["window"] == [ts.x0 * 256, ts.y0 * 256, 1536, 1536]
    assert set(got["source"]) == {"127.0.0.1_z17"}


def test_a_wmts_and_a_wms_give_the_same_objects(scene, tmp_path):
    """GDAL's WMTS driver reads the capabilities document from the local server; the WMS renders
    GetMap requests from the scene. Both at the scene's own pixel: the objects of the GeoTIFF."""
    xyz, _, d = scene
    bbox = inner_bbox(xyz)
    ref = reference(xyz, tuple(float(v) for v in bbox.split(",")))
    with RangeServer(d / "xyz", wms=xyz.geotiff) as srv:
        write_capabilities(d / "xyz" / "WMTSCapabilities.xml", srv.url(""))
        wmts = f"WMTS:{srv.url('WMTSCapabilities.xml')},layer=ortho"
        out = tmp_path / "wmts.gpkg"
        r = run("segment", wmts, *COLORS, "--bbox", bbox, "--tile-cache", tmp_path / "c", "-o", out)
        assert r.exit_code == 0, r.output
        assert_same_objects(pyogrio.read_dataframe(out), ref)
        assert read_provenance(out)["web"][0]["zoom"] == 17
        tiles = [q for q in srv.requests if q.path.startswith("/tiles/")]
        assert len(tiles) == 36 and all(q.path.startswith("/tiles/17/") for q in tiles)
        srv.clear()  # --web-resolution picks the zoom from the capabilities too
        r = run("segment", wmts, *[a for a in COLORS if a not in ("--web-zoom", "17")], "--web-resolution", "1.2",
                "--bbox", bbox, "--tile-cache", tmp_path / "c", "-o", tmp_path / "res.gpkg")
        assert r.exit_code == 0, r.output
        assert read_provenance(tmp_path / "res.gpkg")["web"][0]["zoom"] == 17
        assert not [q for q in srv.requests if q.path.startswith("/tiles/")]  # all from the cache

        srv.clear()
        x0, y0, x1, y1 = (float(v) for v in bbox.split(","))
        lat = Transformer.from_crs(3857, 4326, always_xy=True).transform((x0 + x1) / 2, (y0 + y1) / 2)[1]
        metres = services.pixel_size(17) * np.cos(np.radians(lat))  # the scene's ground pixel there: 1.04 m
        wms = f"WMS:{srv.url('wms')}?SERVICE=WMS&VERSION=1.1.1&LAYERS=ortho&SRS=EPSG:3857&FORMAT=image/png"
        out = tmp_path / "wms.gpkg"
        args = [a for a in COLORS if a not in ("--web-zoom", "17")]
        r = run("segment", wms, *args, "--web-resolution", repr(float(metres)), "--bbox", bbox, "--tile-cache",
                tmp_path / "c", "-o", out)
        assert r.exit_code == 0, r.output
        assert_same_objects(pyogrio.read_dataframe(out), ref)
        assert srv.requests and all(q.path == "/wms" for q in srv.requests)
        line = one_line_error(run("segment", wms, *COLORS, "--bbox", bbox, "-o", tmp_path / "z.gpkg"))
        assert "a WMS has no zoom levels: give --web-resolution" in line

        described = tmp_path / "service.xml"  # a GDAL service description of the user's: read at its level
        described.write_text(services.xyz_xml(srv.url("") + "tiles/${z}/${x}/${y}.png", False, 17,
                                              services.WebOptions(cache=str(tmp_path / "c2"))))
        out = tmp_path / "xml.gpkg"
        args = [a for a in COLORS if a not in ("--web-zoom", "17")]
        r = run("segment", described, *args, "--bbox", bbox, "-o", out)
        assert r.exit_code == 0, r.output
        assert_same_objects(pyogrio.read_dataframe(out), ref)


def test_python_and_resolution_pick_the_zoom(scene, server, tmp_path):
    xyz, _, _ = scene
    bbox = tuple(float(v) for v in inner_bbox(xyz).split(","))
    # zoom 17 is 1.19 m in EPSG:3857, 1.04 m on the ground at 29.6 deg N: the coarsest zoom finer than 1.2 m
    gdf = geoseg.segment(template(server), PROMPTS, segmenter=ColorSegmenter(), tile_size=512, overlap=64, bbox=bbox,
                         web_resolution=1.2, tile_cache=tmp_path / "cache", cpu_workers=0)
    assert gdf.attrs["geoseg"]["web"][0]["zoom"] == 17
    assert_same_objects(gdf, reference(xyz, bbox))
    assert services.zoom_for(1.2, 29.6) == 17 and services.zoom_for(1.0, 29.6) == 18


def test_the_cache_serves_a_second_run_and_a_resumed_one(scene, server, tmp_path):
    xyz, _, _ = scene
    cache = tmp_path / "cache"
    args = ["segment", template(server), *COLORS, "--bbox", inner_bbox(xyz), "--tile-cache", cache]
    assert run(*args, "-o", tmp_path / "a.gpkg").exit_code == 0
    first = len(server.requests)
    assert first == 36
    r = run(*args, "-o", tmp_path / "b.gpkg")  # the same area again: every tile from the cache
    assert r.exit_code == 0, r.output
    assert len(server.requests) == first
    assert pyogrio.read_info(tmp_path / "b.gpkg")["features"] == pyogrio.read_info(tmp_path / "a.gpkg")["features"]

    server.clear()  # killed half way, with another cache: the rerun fetches only the tiles it lacks
    out, cache2 = tmp_path / "c.gpkg", tmp_path / "cache2"
    script = (f"import geoseg\nfrom geoseg.testing import ColorSegmenter\n"
              f"geoseg.segment({template(server)!r}, {PROMPTS!r}, segmenter=ColorSegmenter(delay=0.3, batch_size=1),"
              f" tile_size=256, overlap=32, bbox={inner_bbox(xyz)!r}, web_zoom=17, tile_cache={str(cache2)!r},"
              f" output={str(out)!r}, cpu_workers=0, max_connections=1)\n")
    start_and_stop([sys.executable, "-c", script], Path(f"{out}.geoseg-work"), signal.SIGKILL, at_least=6)
    before = {q.path for q in server.requests if q.status == 200}
    assert 0 < len(before) < 36
    server.clear()
    r = run("segment", template(server), *COLORS[:8], "--tile-size", "256", "--overlap", "32", "--web-zoom", "17",
            "--cpu-workers", "0", "--bbox", inner_bbox(xyz), "--tile-cache", cache2, "-o", out, "--max-connections",
            "1")
    assert r.exit_code == 0, r.output
    after = {q.path for q in server.requests if q.status == 200}
    assert len(before & after) <= 1  # at most the tile in flight when it was killed
    assert len(before | after) == 36


def test_missing_tiles_are_nodata(scene, server, tmp_path):
    xyz, _, _ = scene
    column = f"/17/{xyz.x0 + 2}/"
    server.faults({"path": column, "statuses": [404]})
    out = tmp_path / "out.gpkg"
    r = run("segment", template(server), *COLORS, "--bbox", inner_bbox(xyz), "--tile-cache", tmp_path / "c", "-o", out)
    assert r.exit_code == 0, r.output
    assert sum(q.status == 404 for q in server.requests) == 6
    got = pyogrio.read_dataframe(out)
    res = services.pixel_size(17)
    left = xyz.bounds[0] + 2 * 256 * res
    hole = shapely.box(left + 2 * res, xyz.bounds[1], left + 254 * res, xyz.bounds[3])
    assert len(got) > 10 and not got.geometry.within(hole).any()  # nothing found where no tile came


def test_a_busy_service_is_tried_again_and_a_broken_one_stops_resumably(scene, server, tmp_path, monkeypatch):
    xyz, _, _ = scene
    monkeypatch.setattr(web, "BACKOFF", (0.05, 0.1, 0.1))
    server.faults({"path": r"\.png$", "statuses": [429, 200], "retry_after": 1})
    out = tmp_path / "out.gpkg"
    args = ["segment", template(server), *COLORS, "--bbox", inner_bbox(xyz), "--tile-cache", tmp_path / "c"]
    r = run(*args, "-o", out)
    assert r.exit_code == 0, r.output
    assert "answered HTTP 429: trying again" in r.output
    assert {q.status for q in server.requests} == {429, 200}

    server.clear()
    broken = f"/17/{xyz.x0 + 4}/{xyz.y0 + 3}.png"
    server.faults({"path": broken, "statuses": [500]})
    out = tmp_path / "again.gpkg"
    r = run(*args[:-2], "--tile-cache", tmp_path / "c2", "-o", out, "-q")
    line = one_line_error(r, code=1)
    assert f"127.0.0.1:{server.port}: the tile service answered HTTP 500 after 4 tries" in line, line
    assert "rerun the same command" in line
    assert not out.exists() and Path(f"{out}.geoseg-work").is_dir()
    tries = sum(q.path == broken for q in server.requests)  # 4 by each read that covered it: a few reads at most
    assert tries % 4 == 0 and 4 <= tries <= 20, tries
    server.faults()
    server.clear()
    r = run(*args[:-2], "--tile-cache", tmp_path / "c2", "-o", out)  # the service is back: the run resumes
    assert r.exit_code == 0, r.output
    assert broken in {q.path for q in server.requests} and len(server.requests) < 36


@pytest.mark.parametrize("connections", [1, 2, 8])
def test_requests_in_parallel_are_bounded(scene, server, tmp_path, connections):
    xyz, _, _ = scene
    server.faults({"path": ".", "statuses": [200], "delay": 0.1})
    r = run("fetch", template(server), "--bbox", inner_bbox(xyz), "--web-zoom", "17", "--tile-cache", tmp_path / "c",
            "--max-connections", connections, "-o", tmp_path / "area.tif")
    assert r.exit_code == 0, r.output
    most = max(q.active for q in server.requests)
    assert most <= connections and (connections == 1 or most > 1)


def test_keys_in_the_template_and_headers_reach_nothing_written(scene, server, tmp_path, monkeypatch):
    xyz, _, _ = scene
    monkeypatch.setattr(web, "BACKOFF", (0.05,))
    secrets = ["KEYSECRET", "HDRSECRET"]
    url = template(server, "?api_key=KEYSECRET")
    log = tmp_path / "run.log"
    common = ["--bbox", inner_bbox(xyz), "--header", "Authorization: Bearer HDRSECRET", "--tile-cache",
              tmp_path / "cache"]
    printed = [run("info", url, "--web-zoom", "17", "--json", *common).output]
    out = tmp_path / "out.gpkg"
    r = run("segment", url, *COLORS, *common, "-o", out, "--log-file", log, "-v")
    assert r.exit_code == 0, r.output
    printed.append(r.output)
    assert all(dict(q.headers).get("Authorization") == "Bearer HDRSECRET" for q in server.requests)
    broken = f"/17/{xyz.x0 + 1}/{xyz.y0 + 1}.png"
    server.faults({"path": broken, "statuses": [500]})
    r = run("segment", url, *COLORS, *common[:-1], tmp_path / "cache2", "-o", tmp_path / "failed.gpkg",
            "--log-file", log)
    assert r.exit_code == 1
    printed.append(r.output)
    assert '"web"' in printed[0] and "objects" in printed[1] and "HTTP 500" in printed[2]
    for text in printed:
        for s in secrets:
            assert s not in text, (s, text)
    # outputs, their provenance, the log, the failed run's work folder; not the tile caches (tiles alone)
    files = [f for f in tmp_path.rglob("*") if f.is_file() and not f.relative_to(tmp_path).parts[0].startswith("cache")]
    assert any("failed.gpkg.geoseg-work" in f.parts for f in files) and log in files and out in files
    for f in files:
        data = f.read_bytes()
        for s in secrets:
            assert s.encode() not in data, (s, f)


def test_refusals_before_any_request(scene, server, tmp_path):
    xyz, _, _ = scene
    url = template(server)
    line = one_line_error(run("segment", url, *COLORS, "--bbox", inner_bbox(xyz), "--max-tiles", "10", "-o",
                              tmp_path / "o.gpkg"))
    assert "needs 36 service tiles at zoom 17, more than --max-tiles 10" in line
    line = one_line_error(run("segment", url, *COLORS, "-o", tmp_path / "o.gpkg"))
    assert "a tile service covers the world: give the area to segment, --bbox" in line
    no_zoom = [a for a in COLORS if a not in ("--web-zoom", "17")]
    line = one_line_error(run("segment", url, *no_zoom, "--bbox", inner_bbox(xyz), "-o", tmp_path / "o.gpkg"))
    assert "give the level of detail to read, --web-zoom" in line
    line = one_line_error(run("segment", url + "?sub={s}", *COLORS, "--bbox", inner_bbox(xyz), "-o",
                              tmp_path / "o.gpkg"))
    assert "{s} (subdomains) is not supported" in line
    line = one_line_error(run("segment", xyz.geotiff, *COLORS, "-o", tmp_path / "o.gpkg"))
    assert "go with a tile service input" in line
    assert server.requests == [] and not (tmp_path / "o.gpkg").exists()


def test_fetch_writes_a_cloud_optimised_geotiff_of_the_pixels_read(scene, server, tmp_path):
    xyz, _, _ = scene
    out = tmp_path / "area.tif"
    r = run("fetch", template(server), "--bbox", inner_bbox(xyz), "--web-zoom", "17", "--tile-cache",
            tmp_path / "c", "--attribution", "(c) geoseg tests", "-o", out)
    assert r.exit_code == 0, r.output
    assert f"{out}: 36 service tiles at zoom 17, 1536 x 1536 px" in r.output
    with rasterio.open(out) as got, rasterio.open(xyz.geotiff) as truth:
        assert got.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"  # GDAL's own word for a valid COG
        assert got.profile["tiled"] and got.overviews(1) and got.count == 4
        assert got.tags()["TIFFTAG_COPYRIGHT"] == "(c) geoseg tests"
        assert got.transform == truth.transform and got.crs == truth.crs
        assert (got.read([1, 2, 3]) == truth.read()).all() and (got.read(4) == 255).all()
    line = one_line_error(run("fetch", template(server), "--bbox", inner_bbox(xyz), "--web-zoom", "17", "-o", out))
    assert "exists: pass --overwrite" in line
    shown = run("info", template(server), "--bbox", inner_bbox(xyz), "--web-zoom", "17", "--overlap", "64", "--json")
    assert json.loads(shown.output)["rasters"][0]["web"]["window"] == [xyz.x0 * 256, xyz.y0 * 256, 1536, 1536]


def test_a_dask_cluster_reads_the_service_on_its_workers(scene, server, tmp_path):
    """The area's VRT goes to the workers, which fetch its tiles into the same cache."""
    xyz, _, _ = scene
    out = tmp_path / "dask.gpkg"
    r = run("segment", template(server), *COLORS, "--bbox", inner_bbox(xyz), "--tile-cache", tmp_path / "c", "-o",
            out, "--workers", "1")
    assert r.exit_code == 0, r.output
    ref = reference(xyz, tuple(float(v) for v in inner_bbox(xyz).split(",")))
    assert_same_objects(pyogrio.read_dataframe(out), ref)
    assert len({q.path for q in server.requests if q.status == 200}) == 36
    assert list((tmp_path / "c").rglob("*")), "the workers' tiles went to --tile-cache"


def test_a_session_segments_a_service_prompt_after_prompt(scene, server, tmp_path):
    xyz, _, _ = scene
    bbox = tuple(float(v) for v in inner_bbox(xyz).split(","))
    seg = geoseg.Segmentation(template(server), segmenter=ColorSegmenter(), tile_size=512, overlap=64, bbox=bbox,
                              web_zoom=17, tile_cache=tmp_path / "c")
    red, blue = seg.segment("red"), seg.segment("blue")
    assert len(red) and len(blue) and set(red["label"]) == {"red"}
    assert len({q.path for q in server.requests}) == len(server.requests) == 36  # each tile fetched once
    with pytest.raises(geoseg.UsageError, match="take part of a tile service here"):
        geoseg.Segmentation(xyz.geotiff, segmenter=ColorSegmenter(), bbox=bbox)


def test_the_explorer_shows_and_segments_a_service(scene, server, tmp_path):
    xyz, _, _ = scene
    bbox = tuple(float(v) for v in inner_bbox(xyz).split(","))
    ex = explore(template(server), backend="colors", basemap=None, bbox=bbox, bbox_crs="EPSG:3857", web_zoom=17,
                 tile_cache=tmp_path / "c", tile_size=512, overlap=64)
    png = ex.tiles.png(xyz.x0 + 2, xyz.y0 + 2, 17)  # the map's tile, read through the service
    assert png is not None and png[:4] == b"\x89PNG"
    got = ex.segment(PROMPTS, area="all")
    ref = reference(xyz, bbox)
    assert_same_objects(got, ref[ref["score"] >= ex.floor])
