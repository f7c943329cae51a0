"""Segmenting part of a raster: --bbox, --bbox-crs, --aoi (and the same in the API)."""

import json
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
import shapely.geometry
from affine import Affine
from conftest import one_line_error, run
from pyproj import Transformer

import geoseg
from geoseg.core.tiling import plan_tiles
from geoseg.errors import OutsideAreaError, UsageError
from geoseg.run import pipeline
from geoseg.testing import ColorSegmenter, CountingSegmenter, make_scene
from geoseg.testing.scenes import draw, random_objects, write_geotiff

PROMPTS = ["red", "green", "blue"]
TILING = dict(tile_size=256, overlap=32)  # the area's margin is the overlap: 32 px
SIZE = 1024
T = Affine(0.5, 0, 404000.0, 0, -0.5, 3286000.0)  # write_geotiff's default grid (EPSG:32617)
# pixel rows 300..450, cols 400..600: a box in the middle of the scene
BBOX = (404000 + 0.5 * 400, 3286000 - 0.5 * 450, 404000 + 0.5 * 600, 3286000 - 0.5 * 300)
BBOX_TEXT = ",".join(f"{v:.15g}" for v in BBOX)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """Small objects (radius up to 30 px, under the 32 px margin) everywhere; no nodata."""
    objs = random_objects(SIZE, SIZE, 450, seed=5, r_range=(6, 30), start=100)
    return write_geotiff(tmp_path_factory.mktemp("area") / "scene.tif", draw(SIZE, SIZE, objs))


@pytest.fixture(scope="module")
def full(scene):
    """The objects of a run over the whole raster."""
    return geoseg.segment(scene, PROMPTS, segmenter=ColorSegmenter(), **TILING)


def centroid_in(gdf, zone):
    return gdf[shapely.contains(zone, shapely.centroid(gdf.geometry.values))]


def assert_same_objects(got, want):
    """The same objects: each equal (IoU >= 0.98, same label) to one of the other run's."""
    assert len(got) == len(want) > 0
    want = want.reset_index(drop=True)
    tree = shapely.STRtree(want.geometry.values)
    for geom, label in zip(got.geometry.values, got["label"]):
        hits = tree.query(geom, predicate="intersects")
        ious = [shapely.area(shapely.intersection(geom, want.geometry[h])) / shapely.area(shapely.union(
            geom, want.geometry[h])) for h in hits]
        best = hits[int(np.argmax(ious))]
        assert max(ious) >= 0.98 and want["label"][best] == label
    assert shapely.union_all(got.geometry.values).symmetric_difference(
        shapely.union_all(want.geometry.values)).area < 1e-6


@pytest.fixture
def reads(monkeypatch):
    """The number of pixels of each window RasterSource reads (the real read runs)."""
    from geoseg.io.raster import RasterSource

    sizes = []
    real_read = RasterSource.read

    def read(self, window):
        sizes.append(window.height * window.width)
        return real_read(self, window)

    monkeypatch.setattr(RasterSource, "read", read)
    return sizes


def test_bbox_reads_only_the_tiles_near_it_and_keeps_objects_whole(scene, full, reads):
    seg = CountingSegmenter()
    got = geoseg.segment(scene, PROMPTS, segmenter=seg, bbox=BBOX, **TILING)
    # the window: the box grown by the 32 px margin (rows 268..482, cols 368..632), tiled on its own
    assert seg.tiles == len(plan_tiles(482 - 268, 632 - 368, **TILING)) == 2
    # two tiles' pixels (and a pixel or two the checks probe), not the 25 tiles of the raster
    assert sum(reads) <= 2 * 256 * 256 + 4 and reads.count(256 * 256) == 2
    assert len(plan_tiles(SIZE, SIZE, **TILING)) == 25
    box = shapely.box(*BBOX)
    want = centroid_in(full, box)
    assert_same_objects(got, want)
    assert (~got.geometry.within(box)).sum() >= 3  # objects crossing the edge come back whole
    assert shapely.contains(box, shapely.centroid(got.geometry.values)).all()
    assert got.attrs["geoseg"]["area"] == f"--bbox {BBOX_TEXT}"


def test_bbox_in_lon_lat_is_the_same_area(scene, full):
    to_ll = Transformer.from_crs("EPSG:32617", "EPSG:4326", always_xy=True)
    ll = to_ll.transform_bounds(*BBOX)  # a lon/lat box holding the UTM one
    got = geoseg.segment(scene, PROMPTS, segmenter=ColorSegmenter(), bbox=ll, bbox_crs="EPSG:4326", **TILING)
    zone = gpd.GeoSeries([shapely.segmentize(shapely.box(*ll), 1e-5)], crs=4326).to_crs(32617).iloc[0]
    assert_same_objects(got, centroid_in(full, zone))
    utm = geoseg.segment(scene, PROMPTS, segmenter=ColorSegmenter(), bbox=BBOX, **TILING)
    assert_same_objects(got, utm)  # no object's centroid lies in the sliver between the two boxes


@pytest.fixture(scope="module")
def l_shape_geojson(tmp_path_factory):
    """An L in pixel rows/cols 200..800 without its top-right quarter, as an EPSG:4326 GeoJSON."""
    px = shapely.difference(shapely.box(200, 200, 800, 800), shapely.box(500, 200, 800, 500))
    utm = shapely.affinity.affine_transform(px, T.to_shapely())
    path = tmp_path_factory.mktemp("aoi") / "l.geojson"
    gpd.GeoDataFrame(geometry=[shapely.segmentize(utm, 5)], crs=32617).to_crs(4326).to_file(path)
    return path, utm


def test_aoi_polygon_in_another_crs_skips_tiles_away_from_it(scene, full, l_shape_geojson, tmp_path, reads):
    path, utm = l_shape_geojson
    seg = CountingSegmenter()
    got = geoseg.segment(scene, PROMPTS, segmenter=seg, aoi=path, **TILING)
    # window rows/cols 168..832: 3 x 3 tiles; the top-right one is 76 px from the L (> 32 px): never read
    assert len(plan_tiles(832 - 168, 832 - 168, **TILING)) == 9
    assert seg.tiles == 8 and reads.count(256 * 256) == 8
    assert_same_objects(got, centroid_in(full, utm))

    out = tmp_path / "l.gpkg"  # the CLI does the same, and writes it
    r = run("segment", scene, *[a for p in PROMPTS for a in ("-p", p)], "--backend", "colors", "--aoi", path,
            "--tile-size", 256, "--overlap", 32, "-o", out, "-q")
    assert r.exit_code == 0, r.output
    assert_same_objects(pyogrio.read_dataframe(out), centroid_in(full, utm))


def test_cli_bbox_writes_the_objects_in_it(scene, full, tmp_path):
    out = tmp_path / "box.gpkg"
    r = run("segment", scene, "-p", "red", "-p", "green", "-p", "blue", "--backend", "colors",
            "--bbox", BBOX_TEXT, "--tile-size", 256, "--overlap", 32, "-o", out, "-q")
    assert r.exit_code == 0, r.output
    gdf = pyogrio.read_dataframe(out)
    assert_same_objects(gdf, centroid_in(full, shapely.box(*BBOX)))
    assert gdf["id"].tolist() == list(range(1, len(gdf) + 1))


@pytest.fixture(scope="module")
def bad_aois(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pyogrio warns of the missing CRS: that is the point
        gpd.GeoDataFrame(geometry=[shapely.box(404100, 3285600, 404200, 3285700)]).to_file(d / "nocrs.gpkg")
    gpd.GeoDataFrame(geometry=[shapely.Point(404100, 3285600)], crs=32617).to_file(d / "points.gpkg")
    (d / "junk.geojson").write_text("not json")
    return d


@pytest.mark.parametrize("args, words", [
    (["--bbox", BBOX_TEXT, "--aoi", "x.geojson"], ["--bbox", "--aoi", "not both"]),
    (["--bbox", "1,2,3"], ["--bbox", "four numbers"]),
    (["--bbox", "a,b,c,d"], ["--bbox", "four numbers"]),
    (["--bbox", "404300,3285600,404200,3285700"], ["--bbox", "minx < maxx"]),
    (["--bbox", "1,2,3,4"], ["--bbox 1,2,3,4", "does not overlap", "scene.tif", "--bbox-crs"]),
    (["--bbox", "-82.3,29.6,-82.2,29.7", "--bbox-crs", "EPSG:999999"], ["--bbox-crs", "not a CRS"]),
    (["--bbox-crs", "EPSG:4326"], ["--bbox-crs", "goes with --bbox"]),
    (["--aoi", "{d}/missing.geojson"], ["--aoi", "missing.geojson", "no such file"]),
    (["--aoi", "{d}/nocrs.gpkg"], ["--aoi", "nocrs.gpkg", "no CRS"]),
    (["--aoi", "{d}/points.gpkg"], ["--aoi", "no polygon"]),
    (["--aoi", "{d}/junk.geojson"], ["--aoi", "junk.geojson", "not a readable vector file"]),
])
def test_bad_area_is_one_line_before_the_model_loads(scene, bad_aois, tmp_path, args, words):
    out = tmp_path / "out.gpkg"
    args = [a.format(d=bad_aois) for a in args]
    # a model that cannot load: the area must be refused first
    r = run("segment", scene, "-p", "red", "--backend", "sam3", "--model", tmp_path / "no-model", "-o", out, *args)
    line = one_line_error(r)
    assert all(w in line for w in words), line
    assert list(tmp_path.iterdir()) == []  # nothing written, no work folder


def test_api_bad_area_raises_usage_errors(scene):
    with pytest.raises(UsageError, match="not both"):
        geoseg.segment(scene, "red", segmenter=ColorSegmenter(), bbox=BBOX, aoi=shapely.box(*BBOX))
    with pytest.raises(OutsideAreaError, match="does not overlap"):
        geoseg.segment(scene, "red", segmenter=ColorSegmenter(), bbox=(0, 0, 1, 1))
    with pytest.raises(UsageError, match="the GeoDataFrame given as aoi= has no CRS"):
        geoseg.segment(scene, "red", segmenter=ColorSegmenter(), aoi=gpd.GeoDataFrame(geometry=[shapely.box(*BBOX)]))


def test_shapely_aoi_and_geoseries(scene, full):
    zone = shapely.Point(404250, 3285650).buffer(60)
    got = geoseg.segment(scene, PROMPTS, segmenter=ColorSegmenter(), aoi=zone, **TILING)
    assert_same_objects(got, centroid_in(full, zone))
    series = gpd.GeoSeries([zone], crs=32617).to_crs(3857)
    again = geoseg.segment(scene, PROMPTS, segmenter=ColorSegmenter(), aoi=series, **TILING)
    assert_same_objects(again, got)


def test_resume_refuses_another_bbox(scene, full, tmp_path):
    out = tmp_path / "out.gpkg"
    work = Path(str(out) + ".geoseg-work")
    with pytest.raises(RuntimeError, match="fell over"):  # an interrupted run over the L's window
        geoseg.segment(scene, PROMPTS, segmenter=CountingSegmenter(fail_after=4, batch_size=2), output=out,
                       bbox=(404100, 3285600, 404400, 3285900), **TILING)
    assert work.is_dir() and not out.exists()
    args = [scene, *[a for p in PROMPTS for a in ("-p", p)], "--backend", "colors", "-o", out,
            "--tile-size", 256, "--overlap", 32, "-q"]
    line = one_line_error(run("segment", *args, "--bbox", BBOX_TEXT))
    assert "--bbox 404100,3285600,404400,3285900" in line and f"--bbox {BBOX_TEXT}" in line and "--restart" in line
    line = one_line_error(run("segment", *args))  # no area at all is another area too
    assert "--bbox" in line and "--restart" in line
    assert work.is_dir() and not out.exists()

    seg = CountingSegmenter()
    geoseg.segment(scene, PROMPTS, segmenter=seg, output=out, bbox=(404100, 3285600, 404400, 3285900), **TILING)
    # window rows 168..832, cols 168..832: 9 tiles, 4 staged before the failure
    assert seg.tiles == 9 - 4
    zone = shapely.box(404100, 3285600, 404400, 3285900)
    assert_same_objects(pyogrio.read_dataframe(out), centroid_in(full, zone))


def test_info_reports_the_window_and_the_tiles_to_segment(scene, l_shape_geojson):
    r = run("info", scene, "--tile-size", 256, "--overlap", 32, "--bbox", BBOX_TEXT)
    assert r.exit_code == 0, r.output
    assert "window     264 x 214 px at col 368, row 268" in r.output
    assert "tiles      2 (1 x 2) of 256 px" in r.output and "0.0075 km²" in r.output
    r = run("info", scene, "--tile-size", 256, "--overlap", 32, "--aoi", l_shape_geojson[0], "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)["rasters"][0]
    # rows/cols 168..832, give or take the pixel the lon/lat round trip may move an edge by
    assert np.abs(np.subtract(d["window"], [168, 168, 664, 664])).max() <= 2
    assert d["tiles"] == 8 and d["tile_grid"] == [3, 3]
    assert d["width"] == d["height"] == SIZE
    assert d["area_km2"] == pytest.approx(270000 * 0.25 / 1e6, rel=1e-3)  # the L: 270000 px of 0.25 m²
    one_line_error(run("info", scene, "--bbox", "1,2,3,4"))


def test_folder_skips_rasters_outside_the_area(scene, full, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.tif").write_bytes(Path(scene).read_bytes())
    far = Affine(0.5, 0, 500000.0, 0, -0.5, 3286000.0)  # 96 km east: outside the box
    write_geotiff(folder / "b.tif", np.full((300, 300, 3), 40, np.uint8), transform=far)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = ["segment", folder, "-p", "red", "--backend", "colors", "--tile-size", 256, "--overlap", 32, "-q"]
    r = run(*args, "--bbox", BBOX_TEXT, "--output-dir", out_dir)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.gpkg"]  # nothing written for b.tif
    assert "1 of 2 files done, 0 failed, 1 outside the area" in r.output
    assert "skipped (outside the area): b.tif" in r.output
    want = centroid_in(full[full["label"] == "red"], shapely.box(*BBOX))
    assert_same_objects(pyogrio.read_dataframe(out_dir / "a.gpkg"), want)

    (out_dir / "a.gpkg").unlink()
    line = one_line_error(run(*args, "--bbox", "1,2,3,4", "--output-dir", out_dir))
    assert "overlaps none of the 2 inputs" in line
    assert list(out_dir.iterdir()) == []


def test_settings_hold_one_hashable_area(l_shape_geojson):
    a = pipeline.Settings.of("red", bbox=BBOX_TEXT, **TILING).read
    b = pipeline.Settings.of("red", bbox=list(BBOX), **TILING).read
    assert a == b and hash(a) == hash(b) and a.area.margin == 32
    assert pipeline.Settings.of("red", aoi=l_shape_geojson[0]).read.area.option == "--aoi"
    assert pipeline.Settings.of("red").read.area is None


def test_dask_workers_read_the_same_window(scene, l_shape_geojson, tmp_path):
    from geoseg.run.distributed import DaskEngine, connect

    settings = pipeline.Settings.of(PROMPTS, aoi=l_shape_geojson[0], **TILING)
    local = tmp_path / "local.gpkg"
    pipeline.run([scene], settings, pipeline.LocalEngine(ColorSegmenter()), output=local)
    client = connect(workers=1)
    try:
        out = tmp_path / "dask.gpkg"
        summary = pipeline.run([scene], settings, DaskEngine(client, "colors", block=2), output=out)
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    assert not summary.failed and summary.files[0].tiles == 8
    a, b = pyogrio.read_dataframe(out), pyogrio.read_dataframe(local)
    assert len(a) == len(b) > 0 and a.geometry.geom_equals_exact(b.geometry, tolerance=0).all()


def test_objects_larger_than_the_margin_are_reported_cut(scene_path, tmp_path):
    # make_scene's ring (radius 540 px) crosses this box and reaches far past the 32 px margin
    out = tmp_path / "g.gpkg"
    args = ["segment", scene_path, "-p", "green", "--backend", "colors", "--tile-size", 256, "-o", out]
    r = run(*args, "--overlap", 32, "--bbox", "404200,3285600,404400,3285700")
    assert r.exit_code == 0, r.output
    assert "2 objects kept reach the edge of the window read (--overlap 32 px" in r.output
    assert "raise --overlap" in r.output
    r = run(*args, "--overlap", 32, "--bbox", "404420,3285420,404480,3285480", "--overwrite")
    assert r.exit_code == 0 and "may be cut" not in r.output  # a corner away from the ring


def test_a_geojson_aoi_of_projected_coordinates_without_a_crs_is_named_as_such(tmp_path):
    # RFC 7946: a GeoJSON without a "crs" member is lon/lat; numbers in metres cannot be placed
    scene = make_scene(tmp_path / "scene.tif", size=256, seed=1)
    with rasterio.open(scene) as src:
        x0, y0, x1, y1 = src.bounds
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
                   "geometry": shapely.geometry.mapping(shapely.box(x0, y0, (x0 + x1) / 2, y1))}]}))
    err = one_line_error(run("segment", scene, "-p", "red", "--backend", "colors", "--aoi", aoi,
                             "-o", tmp_path / "o.gpkg"))
    assert "are not longitude and latitude" in err and "reproject it to EPSG:4326" in err and "aoi.geojson" in err
    assert not (tmp_path / "o.gpkg").exists()
