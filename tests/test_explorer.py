"""The explorer's Python side (geoseg.explorer): runs equal `geoseg segment`, batches seen as they
come, review and save, the state file, a folder mosaic, bad inputs. Its browser side is tested
in a real JupyterLab in tests/test_explore_browser.py."""

from __future__ import annotations

import json
import math
import sys
import threading
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import rasterio.warp
import shapely
from click.testing import CliRunner
from rasterio.enums import Resampling

import geoseg
from geoseg.cli import main
from geoseg.errors import UsageError
from geoseg.explorer import explore
from geoseg.explorer.buffers import polygon_buffers
from geoseg.io.export import read_provenance
from geoseg.testing.http import RangeServer
from geoseg.testing.memory import run_measured
from geoseg.testing.scenes import make_scene, write_large_scene

ROOT = Path(__file__).parent.parent
SCENE = ROOT / "sample_data" / "seam_scene.tif"


def _same(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame, iou: float = 0.98) -> None:
    """The same objects: as many, each with one of the other at IoU >= `iou`, the same label and score."""
    assert len(a) == len(b)
    tree = shapely.STRtree(b.geometry.values)
    for geom, label, score in zip(a.geometry.values, a["label"], a["score"]):
        hits = tree.query(geom, predicate="intersects")
        ious = [shapely.area(shapely.intersection(geom, c)) / shapely.area(shapely.union(geom, c))
                for c in b.geometry.values[hits]]
        best = hits[int(np.argmax(ious))]
        assert max(ious) >= iou
        assert b["label"].iloc[best] == label and b["score"].iloc[best] == pytest.approx(score)


def test_a_run_equals_geoseg_segment_whole_and_over_a_bbox():
    ex = explore(SCENE, backend="colors", basemap=None, tile_size=512, overlap=64)
    found = ex.segment("red", area="all")
    ref = geoseg.segment(SCENE, "red", segmenter="colors", score_threshold=ex.floor, tile_size=512, overlap=64)
    _same(found, ref, iou=0.999)
    # the results hold what scores above the slider's threshold
    assert len(ex.results) == (ref["score"] >= ex.threshold).sum() > 0
    ex.threshold = 0.8
    assert len(ex.results) == (ref["score"] >= 0.8).sum()
    # over a bbox in the source's CRS: objects on its edge whole, as the CLI gives them
    with rasterio.open(SCENE) as src:
        x0, y0, x1, y1 = src.bounds
    bbox = (x0 + 0.2 * (x1 - x0), y0 + 0.3 * (y1 - y0), x0 + 0.7 * (x1 - x0), y0 + 0.75 * (y1 - y0))
    part = ex.segment("green", area=bbox)
    ref = geoseg.segment(SCENE, "green", segmenter="colors", score_threshold=ex.floor, tile_size=512, overlap=64,
                         bbox=bbox)
    _same(part, ref, iou=0.999)
    assert not shapely.box(*bbox).contains(shapely.union_all(part.geometry.values))  # one reaches past it, whole
    assert set(ex.results["label"]) == {"red", "green"}


def test_batches_are_seen_as_they_come_and_a_run_can_be_cancelled():
    ex = explore(SCENE, backend="colors", basemap=None, tile_size=512, overlap=64)
    kinds: list[str] = []
    sent = ex.send

    def send(msg, buffers=None):
        kinds.append("found" if msg.get("kind") == "found" and not msg.get("clear") else msg.get("kind"))
        sent(msg, buffers)

    ex.send = send
    ex.segment("red", area="all")
    # each batch's objects were drawn before the merged ones replaced them
    assert kinds.count("found") >= 2 and kinds.index("results") > kinds.index("found")
    ex2 = explore(SCENE, backend="colors", basemap=None, tile_size=256, overlap=32, batch_size=1)
    cancelled = threading.Event()

    def stop_after_first(msg, buffers=None):
        if msg.get("kind") == "found" and not msg.get("clear"):
            ex2.cancel()
            cancelled.set()

    ex2.send = stop_after_first
    with pytest.raises(geoseg.GeosegError, match="cancelled"):
        ex2.segment("red", area="all")
    assert cancelled.is_set() and ex2.status == "cancelled" and len(ex2.results) == 0


def test_review_and_save(tmp_path):
    ex = explore(SCENE, backend="colors", basemap=None)
    ex.segment("red", area="all")
    ids = list(ex.results.index)
    ex.review(ids[0], "rejected")
    ex.review(ids[1:], "accepted")
    assert ids[0] not in ex.results.index and (ex.results["review"] == "accepted").all()
    with pytest.raises(UsageError, match="not a decision"):
        ex.review(ids[1], "maybe")
    with pytest.raises(UsageError, match="no object 99999"):
        ex.review(99999, "accepted")
    out = ex.save(tmp_path / "kept.gpkg")
    kept = pyogrio.read_dataframe(out)
    assert len(kept) == len(ex.results) + 1
    assert list(kept["review"].fillna("")).count("rejected") == 1
    meta = read_provenance(out)
    assert meta["explorer"]["rejected"] == 1 and meta["explorer"]["accepted"] == len(ids) - 1
    before = out.read_bytes()
    with pytest.raises(geoseg.OutputError):
        ex.save(out)  # an existing file is replaced only with overwrite=True
    assert out.read_bytes() == before
    # the saved file is what --reviewed takes: rejected objects never become labels
    result = CliRunner().invoke(main, ["export-dataset", str(SCENE), str(out), "-o", str(tmp_path / "ds"),
                                       "--reviewed", "--chip-size", "512"])
    assert result.exit_code == 0, result.output
    assert any((tmp_path / "ds").rglob("*.png"))


def test_a_state_file_brings_everything_back_and_a_foreign_file_is_left_alone(tmp_path):
    state = tmp_path / "state.gpkg"
    ex = explore(SCENE, backend="colors", basemap=None, state=state)
    ex.exemplars = gpd.GeoDataFrame({"positive": [True]}, geometry=[shapely.box(*_corner())], crs=_crs())
    ex.segment("blue", area="all")
    ex.review(ex.results.index[:2], "rejected")
    ex.threshold = 0.7
    ex.view = _corner()
    shown, saved_view = ex.results, ex.view
    again = explore(SCENE, backend="colors", basemap=None, state=state)  # as after a kernel restart
    assert again.threshold == 0.7
    assert len(again.exemplars) == 1 and bool(again.exemplars["positive"].iloc[0])
    assert list(again.results.index) == list(shown.index)
    assert (again._frame["review"] == "rejected").sum() == 2
    assert np.allclose(again.view, saved_view)
    # a GeoPackage that is not an explorer's is refused and left as it was
    foreign = tmp_path / "mine.gpkg"
    gpd.GeoDataFrame({"a": [1]}, geometry=[shapely.box(0, 0, 1, 1)], crs=3857).to_file(foreign)
    before = foreign.read_bytes()
    with pytest.raises(UsageError, match="not an explorer's state file"):
        explore(SCENE, backend="colors", basemap=None, state=foreign)
    assert foreign.read_bytes() == before
    with pytest.raises(UsageError, match="keeps the state of"):
        other = tmp_path / "other.tif"
        make_scene(other, size=256)
        explore(other, backend="colors", basemap=None, state=state)


def _crs():
    with rasterio.open(SCENE) as src:
        return src.crs


def _corner():
    with rasterio.open(SCENE) as src:
        x0, y0, x1, y1 = src.bounds
    return (x0, y0, x0 + 0.3 * (x1 - x0), y0 + 0.3 * (y1 - y0))


def test_a_folder_is_explored_as_one_mosaic(tmp_path):
    folder = tmp_path / "tiles"
    folder.mkdir()
    with rasterio.open(SCENE) as src:
        for k, (row, col) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            win = rasterio.windows.Window(col * 1024, row * 1024, 1024, 1024)
            meta = dict(src.meta, width=1024, height=1024, transform=src.window_transform(win))
            with rasterio.open(folder / f"part{k}.tif", "w", **meta) as dst:
                dst.write(src.read(window=win))
    ex = explore(folder, backend="colors", basemap=None)
    png = ex.tiles.png(*_tile_over(ex.bounds))
    assert png is not None and png[:4] == b"\x89PNG"
    found = ex.segment("green", area="all")
    ref = geoseg.segment(folder, "green", segmenter="colors", mosaic=True, score_threshold=ex.floor)
    _same(found, ref, iou=0.999)
    assert found.geometry.area.max() > 0.3 * 1024 * 1024 * 0.25  # the big ring, whole across the four files


def _tiles(bounds, z: int) -> list[tuple[int, int, int]]:
    """The XYZ tiles of zoom `z` over `bounds` (lon/lat)."""
    n = 2 ** z

    def xy(lon: float, lat: float) -> tuple[int, int]:
        return (int((lon + 180) / 360 * n),
                int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n))

    (x0, y0), (x1, y1) = xy(bounds[0], bounds[3]), xy(bounds[2], bounds[1])
    return [(x, y, z) for x in range(x0, x1 + 1) for y in range(y0, y1 + 1)]


def _tile_over(bounds) -> tuple[int, int, int]:
    """An XYZ tile holding the middle of `bounds` (lon/lat)."""
    mid = ((bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2)
    return _tiles((*mid, *mid), 15)[0]


VIEW = """
import json, sys
from geoseg.explorer import explore
ex = explore(sys.argv[1], backend="colors", basemap=None)
pngs = [ex.tiles.png(*t) for t in json.loads(sys.argv[2])]
print(json.dumps({"tiles": sum(p is not None for p in pngs), "max_zoom": ex.max_zoom}))
"""


def test_a_20000_px_raster_shows_from_its_overviews_without_being_read_whole(tmp_path):
    """The whole raster in view, as on opening the map: tiles come from the overviews, over HTTP ranges."""
    path = tmp_path / "big.tif"
    write_large_scene(path, 20_000, objects_per_mpx=20)
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"), rasterio.open(path, "r+") as dst:
        dst.build_overviews([4, 16, 64], Resampling.average)
    with rasterio.open(path) as src:
        bounds = rasterio.warp.transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    view = _tiles(bounds, 13)  # about 1,000 px across: the map's first view
    with RangeServer(tmp_path) as server:
        run = run_measured([sys.executable, "-c", VIEW, server.url("big.tif"), json.dumps(view)])
        sent = server.bytes_sent
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout)
    assert shown["tiles"] == len(view) >= 4 and shown["max_zoom"] == 19  # 0.5 m pixels: zoom 19 is finer
    assert sent < 0.2 * path.stat().st_size  # the full-resolution pixels were not read
    assert run.peak_mb < 700  # the raster alone is 1,200 MB as pixels
    print(f"20,000² px view: {len(view)} tiles, {sent / 1e6:.1f} of {path.stat().st_size / 1e6:.1f} MB read, "
          f"peak RSS {run.peak_mb:.0f} MB")


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(geoseg.GeosegError, match="missing.tif"):
        explore(tmp_path / "missing.tif", backend="colors")
    with pytest.raises(UsageError, match="output"):
        explore(SCENE, backend="colors", output=tmp_path / "x.gpkg")
    with pytest.raises(UsageError, match="georeferenced"):
        explore(SCENE, backend="colors", pixel_coords=True)
    with pytest.raises(UsageError, match="floor"):
        explore(SCENE, backend="colors", threshold=0.01)
    with pytest.raises(UsageError, match="GeoPackage"):
        explore(SCENE, backend="colors", state=tmp_path / "state.json")
    ex = explore(SCENE, backend="colors", basemap=None)
    with pytest.raises(geoseg.PromptError):
        ex.segment("purple", area="all")
    with pytest.raises(UsageError, match="no object clicked"):
        ex.segment_objects()
    assert not any(tmp_path.iterdir())


def test_one_click_outlines_one_object():
    ex = explore(SCENE, backend="colors", basemap=None)
    truth = geoseg.segment(SCENE, "red", segmenter="colors")
    target = truth.iloc[int(truth.geometry.area.argmax())]
    pt = target.geometry.representative_point()
    ex.objects = gpd.GeoDataFrame({"positive": [True]}, geometry=[pt], crs=truth.crs)
    got = ex.segment_objects()
    assert len(got) == 1
    assert shapely.area(shapely.intersection(got.geometry.iloc[0], target.geometry)) / shapely.area(
        shapely.union(got.geometry.iloc[0], target.geometry)) > 0.98
    assert len(ex.results[ex.results["label"] == "object"]) == 1


def test_polygons_cross_as_flat_buffers_with_their_holes():
    ring = shapely.box(0, 0, 10, 10).difference(shapely.box(2, 2, 4, 4))
    gdf = gpd.GeoDataFrame(geometry=[ring, shapely.MultiPolygon([shapely.box(20, 20, 21, 21),
                                                                 shapely.box(30, 30, 31, 31)]), None], crs=4326)
    meta, (xy, owners, polys, rings) = polygon_buffers(gdf)
    assert meta == {"features": 3, "vertices": 20, "polygons": 3, "rings": 4}
    assert np.frombuffer(owners, np.uint32).tolist() == [0] * 10 + [1] * 10
    assert np.frombuffer(polys, np.uint32).tolist() == [0, 10, 15, 20]
    assert np.frombuffer(rings, np.uint32).tolist() == [0, 5, 10, 15, 20]
    assert np.frombuffer(xy, np.float64).reshape(-1, 2)[:5].tolist() == shapely.get_coordinates(
        ring.exterior).tolist()


def test_a_new_run_replaces_what_it_saw_again_and_keeps_the_decisions():
    ex = explore(SCENE, backend="colors", basemap=None)
    ex.segment("red", area="all")
    first = ex.results
    big = first.geometry.area.idxmax()
    ex.review(big, "accepted")
    ex.segment("red", area="all")  # the same objects again, new ids
    again = ex.results
    assert len(again) == len(first) and not set(again.index) & set(first.index)
    (kept,) = again.index[again["review"] == "accepted"]
    assert shapely.equals(again.geometry[kept], first.geometry[big])


def test_the_map_shows_a_16_bit_raster_with_the_stretch_geoseg_reads_it_with(tmp_path):
    """One band of a uint16 raster, grey, with the scene-wide 2-98 % stretch: the map's tile spans 0-255."""
    path = tmp_path / "dem.tif"
    ramp = np.add.outer(np.arange(512), np.arange(512)).astype(np.uint16) * 40 + 1000
    with rasterio.open(path, "w", driver="GTiff", width=512, height=512, count=1, dtype="uint16", crs="EPSG:32617",
                       transform=rasterio.transform.from_origin(404000, 3286000, 0.5, 0.5)) as dst:
        dst.write(ramp, 1)
    ex = explore(path, backend="colors", basemap=None)
    seen = []
    for tile in _tiles(ex.bounds, 18):  # the raster at about its own resolution
        with rasterio.MemoryFile(ex.tiles.png(*tile)) as mem, mem.open() as img:
            grey = img.read()
        assert grey.shape[0] == 2  # grey and alpha
        seen.append(grey[0][grey[1] > 0])
    seen = np.concatenate(seen)
    assert seen.min() == 0 and seen.max() == 255  # stretched, not the raw counts clipped
    assert 0.01 < (seen == 255).mean() < 0.05  # the top 2 % saturate
