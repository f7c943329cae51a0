"""--raster-out: label rasters (COG) beside the polygons, on the grid read."""

import tracemalloc
import warnings

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from conftest import one_line_error, run

import geoseg
from geoseg.io import rasterize
from geoseg.io.raster import RasterSource
from geoseg.run.settings import Settings
from geoseg.testing import ColorSegmenter, disc, draw, make_scene, rectangle, write_geotiff
from geoseg.testing.scenes import LABELS

TILING = ["--tile-size", "256", "--overlap", "32", "--backend", "colors", "-q"]
PIXEL_AREA = 0.25  # make_scene: 0.5 m pixels


def segment(inputs, *extra, prompts=("red", "green", "blue")):
    args = ["segment", *([inputs] if not isinstance(inputs, list) else inputs)]
    for p in prompts:
        args += ["-p", p]
    if "--simplify" not in extra:  # pixel edges, so that the raster can be compared with the objects' pixels
        extra = ("--simplify", "0", *extra)
    return run(*args, *TILING, *extra)


def colours(scene):
    """The scene as one colour code per pixel, and the label of each object pixel ('' for background)."""
    with rasterio.open(scene) as ds:
        rgb = ds.read().astype(np.int64)
    code = (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]
    label = np.array(["", *LABELS])[np.where(rgb.max(axis=0) >= 192, rgb.argmax(axis=0) + 1, 0)]
    return code, label


def pixel_counts(raster):
    ids, counts = np.unique(raster, return_counts=True)
    return {int(i): int(n) for i, n in zip(ids, counts) if i}


def assert_is_the_objects(raster, gdf, scene, prompts, pixel_area=PIXEL_AREA):
    """The label raster holds exactly the objects: each id's pixels are one
    object's colour, of the polygon's label, as many as the polygon's area."""
    code, label = colours(scene)
    assert np.array_equal(raster > 0, np.isin(label, prompts))  # every object pixel, no other
    counts = pixel_counts(raster)
    assert set(counts) == set(gdf["id"])
    for oid, lab, area in zip(gdf["id"], gdf["label"], gdf.geometry.area):
        assert counts[oid] == area / pixel_area  # exact: pixel-edge polygons, pixel-centre rule
        inside = raster == oid
        assert len(np.unique(code[inside])) == 1 and set(label[inside]) == {lab}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("scene") / "scene.tif", size=1200, seed=3, n_objects=120)


@pytest.fixture(scope="module")
def instance_run(scene, tmp_path_factory):
    d = tmp_path_factory.mktemp("instance")
    r = segment(scene, "-o", d / "out.gpkg", "--raster-out", d / "labels.tif")
    assert r.exit_code == 0, r.output
    assert f"{d / 'labels.tif'}: label raster" in r.output
    return d / "out.gpkg", d / "labels.tif"


def test_instance_raster_is_the_objects_on_the_grid_read(instance_run, scene):
    out, labels = instance_run
    gdf = pyogrio.read_dataframe(out)
    assert len(gdf) > 50
    with rasterio.open(labels) as ds, rasterio.open(scene) as src:
        assert (ds.transform, ds.width, ds.height, ds.crs) == (src.transform, src.width, src.height, src.crs)
        assert ds.dtypes[0] == "uint32" and ds.nodata == 0 and ds.count == 1
        assert ds.tags()["geoseg_values"] == "instance" and '"prompts": ["red", "green", "blue"]' in ds.tags()["geoseg"]
        raster = ds.read(1)
    assert_is_the_objects(raster, gdf, scene, ["red", "green", "blue"])


def test_label_raster_is_a_cloud_optimised_geotiff(instance_run):
    _, labels = instance_run
    with rasterio.open(labels) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"  # GDAL checks the IFD order for this
        assert ds.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
        assert ds.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "2"
        assert ds.profile["tiled"] and ds.block_shapes == [(512, 512)]
        assert ds.overviews(1) == [2, 4]
        full = ds.read(1)
    with rasterio.open(labels, overview_level=1) as ov:  # the 4x overview as stored
        overview = ov.read(1)
    # nearest: each overview pixel is one of the pixels it stands for, never a blend of ids
    blocks = full.reshape(300, 4, 300, 4)
    assert (blocks == overview[:, None, :, None]).any(axis=(1, 3)).all()
    assert overview.any()


def test_ids_join_the_vector_output_in_other_formats_and_crs(instance_run, scene, tmp_path):
    """Read back from the run's own objects: the ids of a FlatGeobuf output
    reprojected to Web Mercator; the raster stays on the input's grid."""
    _, reference = instance_run
    r = segment(scene, "-o", tmp_path / "out.fgb", "--dst-crs", "EPSG:3857", "--raster-out", tmp_path / "l.tiff")
    assert r.exit_code == 0, r.output
    gdf = pyogrio.read_dataframe(tmp_path / "out.fgb")
    with rasterio.open(tmp_path / "l.tiff") as ds, rasterio.open(reference) as ref:
        assert ds.crs == ref.crs and ds.transform == ref.transform
        raster, exact = ds.read(1), ref.read(1)
    assert set(pixel_counts(raster)) == set(gdf["id"])
    # reprojected twice, the polygons burn back to nearly the same pixels
    assert np.count_nonzero(raster != exact) < 0.001 * raster.size


def test_simplified_polygons_burn_by_pixel_centres(scene, tmp_path):
    """With --simplify the raster is approximate at edges, but not biased:
    pixels are burnt by their centre, not wherever a polygon touches them."""
    r = segment(scene, "-o", tmp_path / "out.gpkg", "--simplify", "1.5", "--raster-out", tmp_path / "l.tif")
    assert r.exit_code == 0, r.output
    gdf = pyogrio.read_dataframe(tmp_path / "out.gpkg")
    with rasterio.open(tmp_path / "l.tif") as ds:
        counts = pixel_counts(ds.read(1))
    assert set(counts) == set(gdf["id"])
    # all_touched would burn 0.5 % more here
    assert sum(counts.values()) == pytest.approx(gdf.geometry.area.sum() / PIXEL_AREA, rel=0.002)


def test_class_raster_numbers_the_prompts_in_order(scene, tmp_path):
    r = segment(scene, "-o", tmp_path / "out.gpkg", "--raster-out", tmp_path / "classes.tif",
                "--raster-values", "class", prompts=("blue", "red"))
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "classes.tif") as ds:
        assert ds.dtypes[0] == "uint8" and ds.nodata == 0
        assert ds.descriptions[0] == "class: 1=blue, 2=red"
        assert ds.tags()["geoseg_labels"] == '["blue", "red"]'
        cmap = ds.colormap(1)
        assert cmap[0][3] == 0 and cmap[1][3] == cmap[2][3] == 255 and cmap[1] != cmap[2]
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and ds.overviews(1)
        classes = ds.read(1)
    _, label = colours(scene)
    expected = np.select([label == "blue", label == "red"], [1, 2], 0)
    assert np.array_equal(classes, expected)


def test_one_raster_per_input_in_folder_mode(tmp_path):
    src = tmp_path / "in"
    (src / "2021").mkdir(parents=True)
    scenes = [make_scene(src / "a.tif", size=600, seed=1, n_objects=40),
              make_scene(src / "b.tif", size=500, seed=2, n_objects=40),
              make_scene(src / "2021" / "a.tif", size=400, seed=4, n_objects=20)]
    (tmp_path / "out").mkdir()
    (tmp_path / "rasters").mkdir()
    r = segment(src, "--output-dir", tmp_path / "out", "--raster-out", tmp_path / "rasters")
    assert r.exit_code == 0, r.output
    written = sorted(str(p.relative_to(tmp_path / "rasters")) for p in (tmp_path / "rasters").rglob("*"))
    vectors = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.gpkg"))
    assert [w.replace(".tif", ".gpkg") for w in written if w.endswith(".tif")] == vectors
    assert len(vectors) == 3  # the two a.tif get distinct names
    for vector in vectors:
        gdf = pyogrio.read_dataframe(tmp_path / "out" / vector)
        scene = next(s for s in scenes if s.endswith(gdf["source"][0]))
        with rasterio.open(tmp_path / "rasters" / vector.replace(".gpkg", ".tif")) as ds:
            assert_is_the_objects(ds.read(1), gdf, scene, ["red", "green", "blue"])


def test_one_output_for_several_inputs_numbers_ids_across_them(tmp_path):
    scenes = [make_scene(tmp_path / f"s{k}.tif", size=500, seed=k, n_objects=40) for k in range(2)]
    (tmp_path / "rasters").mkdir()
    r = segment([scenes[0], scenes[1]], "-o", tmp_path / "all.gpkg", "--raster-out", tmp_path / "rasters")
    assert r.exit_code == 0, r.output
    gdf = pyogrio.read_dataframe(tmp_path / "all.gpkg")
    for k, scene in enumerate(scenes):
        part = gdf[gdf["source"] == f"s{k}.tif"]
        with rasterio.open(tmp_path / "rasters" / f"s{k}.tif") as ds:
            assert_is_the_objects(ds.read(1), part, scene, ["red", "green", "blue"])
    assert min(gdf[gdf["source"] == "s1.tif"]["id"]) > 1  # the second input's ids follow the first's


def test_python_api_writes_the_raster_and_ids_join_the_frame(scene, tmp_path):
    gdf = geoseg.segment(scene, ["green"], segmenter="colors", tile_size=256, overlap=32, simplify=0,
                         raster_out=tmp_path / "g.tif")
    with rasterio.open(tmp_path / "g.tif") as ds:
        assert_is_the_objects(ds.read(1), gdf, scene, ["green"])
    with pytest.raises(geoseg.UsageError, match="raster_values='colour'"):
        geoseg.segment(scene, ["green"], segmenter="colors", raster_out=tmp_path / "h.tif", raster_values="colour")
    assert not (tmp_path / "h.tif").exists()


def test_with_an_area_the_raster_covers_the_window_read(scene, tmp_path):
    bbox = (404100.0, 3285600.0, 404300.0, 3285800.0)  # 400 x 400 px inside the scene
    gdf = geoseg.segment(scene, ["red", "green", "blue"], segmenter="colors", tile_size=256, overlap=32, bbox=bbox,
                         simplify=0, raster_out=tmp_path / "part.tif")
    read = Settings.of(["red"], tile_size=256, overlap=32, bbox=bbox).read
    with RasterSource(scene, read) as src, rasterio.open(tmp_path / "part.tif") as ds:
        assert (ds.transform, ds.width, ds.height) == (src.transform, src.width, src.height)
        assert ds.width < 1200 and ds.height < 1200
        counts = pixel_counts(ds.read(1))
    assert len(gdf) > 3 and set(counts) == set(gdf["id"])
    assert all(counts[i] == a / PIXEL_AREA for i, a in zip(gdf["id"], gdf.geometry.area))


class Interrupting(ColorSegmenter):
    """Stops the run (as Ctrl-C) after `calls` batches."""

    def __init__(self, calls):
        super().__init__(batch_size=2)
        self.calls = calls

    def segment(self, tiles, prompts):
        self.calls -= 1
        if self.calls < 0:
            raise KeyboardInterrupt
        return super().segment(tiles, prompts)


def test_a_rerun_after_an_interrupted_run_writes_the_raster(instance_run, scene, tmp_path):
    args = dict(tile_size=256, overlap=32, simplify=0, output=tmp_path / "out.gpkg", raster_out=tmp_path / "labels.tif")
    with pytest.raises(KeyboardInterrupt):
        geoseg.segment(scene, ["red", "green", "blue"], segmenter=Interrupting(calls=5), **args)
    assert not (tmp_path / "labels.tif").exists() and (tmp_path / "out.gpkg.geoseg-work").is_dir()
    geoseg.segment(scene, ["red", "green", "blue"], segmenter=ColorSegmenter(), **args)
    with rasterio.open(tmp_path / "labels.tif") as ds, rasterio.open(instance_run[1]) as ref:
        assert np.array_equal(ds.read(1), ref.read(1))
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_raster_out_added_when_rerunning_a_folder_with_a_failed_file(tmp_path):
    src, out, rasters = tmp_path / "in", tmp_path / "out", tmp_path / "rasters"
    for d in (src, out, rasters):
        d.mkdir()
    good = make_scene(src / "good.tif", size=400, seed=5, n_objects=30)
    (src / "bad.tif").write_bytes(b"not a raster")
    assert segment(src, "--output-dir", out).exit_code == 1
    (src / "bad.tif").unlink()
    make_scene(src / "bad.tif", size=300, seed=6, n_objects=10)
    r = segment(src, "--output-dir", out, "--raster-out", rasters)
    assert r.exit_code == 0 and "(done before)" in r.output, r.output
    with rasterio.open(rasters / "good.tif") as ds:
        assert_is_the_objects(ds.read(1), pyogrio.read_dataframe(out / "good.gpkg"), good, ["red", "green", "blue"])
    assert (rasters / "bad.tif").exists()


@pytest.mark.parametrize("case", ["extension", "no folder", "exists", "file for several", "folder missing",
                                  "is the input", "values without raster"])
def test_bad_raster_out_is_one_line_before_the_model_loads(case, scene, tmp_path):
    inputs, target, extra = scene, tmp_path / "labels.tif", []
    if case == "extension":
        target = tmp_path / "labels.png"
    elif case == "no folder":
        target = tmp_path / "missing" / "labels.tif"
    elif case == "exists":
        target.write_bytes(b"mine")
    elif case == "file for several":
        inputs = [scene, make_scene(tmp_path / "other.tif", size=300, seed=1)]
    elif case == "folder missing":
        inputs, target = [scene, make_scene(tmp_path / "other.tif", size=300, seed=1)], tmp_path / "rasters"
    elif case == "is the input":
        target, extra = scene, ["--overwrite"]
    raster = [] if case == "values without raster" else ["--raster-out", target]
    if case == "values without raster":
        raster = ["--raster-values", "class"]
    before = sorted(tmp_path.rglob("*"))
    # a model that cannot load: the error must come from --raster-out, checked first
    r = run("segment", *(inputs if isinstance(inputs, list) else [inputs]), "-p", "red", "-o", tmp_path / "o.gpkg",
            *raster, *extra, "--backend", "sam3", "--model", tmp_path / "no-model", "-q")
    line = one_line_error(r)
    assert "--raster" in line or f"{target} exists" in line, line
    assert sorted(tmp_path.rglob("*")) == before
    if case == "exists":
        assert target.read_bytes() == b"mine"


def test_existing_raster_is_replaced_with_overwrite(scene, tmp_path):
    (tmp_path / "labels.tif").write_bytes(b"old")
    r = segment(scene, "-o", tmp_path / "out.gpkg", "--raster-out", tmp_path / "labels.tif", "--overwrite")
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "labels.tif") as ds:
        assert ds.read(1).any()


def test_pixel_coords_raster_is_on_the_pixel_grid_without_georeferencing(tmp_path):
    objs = [rectangle("red", 1, 10, 10, 40, 60), disc("blue", 2, 200, 300, 50)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        scene = write_geotiff(tmp_path / "nocrs.tif", draw(600, 700, objs), crs=None, transform=Affine.identity())
    with warnings.catch_warnings():
        warnings.simplefilter("error", rasterio.errors.NotGeoreferencedWarning)  # no georeferencing is meant
        r = segment(scene, "--pixel-coords", "-o", tmp_path / "o.gpkg", "--raster-out", tmp_path / "l.tif",
                    prompts=("red", "blue"))
    assert r.exit_code == 0, r.output
    gdf = pyogrio.read_dataframe(tmp_path / "o.gpkg")
    with rasterio.open(tmp_path / "l.tif") as ds:
        assert ds.crs is None and ds.transform == Affine.identity() and ds.shape == (600, 700)
        assert_is_the_objects(ds.read(1), gdf, scene, ["red", "blue"], pixel_area=1.0)


def objects_file(path, geoms, labels, scores, crs="EPSG:32617"):
    """A result GeoPackage as a run stages it: layer "objects", in id order."""
    gdf = gpd.GeoDataFrame({"label": labels, "score": scores}, geometry=geoms, crs=crs)
    pyogrio.write_dataframe(gdf, path, layer="objects")
    return path


def test_where_objects_overlap_the_higher_score_wins(tmp_path):
    grid = rasterize.Grid(Affine(1, 0, 0, 0, -1, 100), 100, 100, rasterio.crs.CRS.from_epsg(32617))
    result = objects_file(tmp_path / "r.gpkg", [shapely.box(10, 10, 60, 60), shapely.box(40, 40, 90, 90)],
                          ["red", "red"], [0.9, 0.6])
    rasterize.LabelRaster(tmp_path / "l.tif").write(result, grid, first_id=7)
    with rasterio.open(tmp_path / "l.tif") as ds:
        a = ds.read(1)
    assert pixel_counts(a) == {7: 2500, 8: 2500 - 400}


def test_without_the_cog_driver_a_tiled_geotiff_with_overviews(tmp_path):
    """The fallback for GDAL < 3.1, which has no COG driver."""
    grid = rasterize.Grid(Affine(1, 0, 0, 0, -1, 2000), 1500, 1200, rasterio.crs.CRS.from_epsg(32617))
    result = objects_file(tmp_path / "r.gpkg", [shapely.box(100, 1300, 900, 1900)], ["red"], [0.9])  # rows 100-700
    with rasterio.open(tmp_path / "stage.tif", "w", **rasterize._stage_profile(grid, "uint32")) as dst:
        rasterize.burn(result, dst, grid, rasterize.LabelRaster(tmp_path / "x.tif")._values)
    rasterize.tiled_geotiff(tmp_path / "stage.tif", tmp_path / "l.tif", rasterio.enums.Resampling.nearest)
    with rasterio.open(tmp_path / "l.tif") as ds:
        assert ds.block_shapes == [(512, 512)] and ds.overviews(1) == [2, 4]
        assert ds.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
        assert pixel_counts(ds.read(1)) == {1: 800 * 600}
    with rasterio.open(tmp_path / "l.tif", overview_level=1) as ov:
        assert pixel_counts(ov.read(1)) == {1: 200 * 150}


def test_burning_holds_one_window_not_the_raster(tmp_path):
    """20000 x 20000 px (1.6 GB as uint32) with a few objects: the memory
    numpy and Python allocate stays far below one full-width strip."""
    size = 20000
    grid = rasterize.Grid(Affine(0.5, 0, 404000.0, 0, -0.5, 3286000.0), size, size,
                          rasterio.crs.CRS.from_epsg(32617))
    boxes = [(10, 10, 60, 40), (9000, 9990, 11000, 10010), (19950, 19900, 20000, 20000)]  # cols, rows
    geoms = [shapely.box(*grid.transform @ (c0, r1), *grid.transform @ (c1, r0)) for c0, r0, c1, r1 in boxes]
    result = objects_file(tmp_path / "r.gpkg", geoms, ["red"] * 3, [0.9] * 3)
    tracemalloc.start()
    try:
        rasterize.LabelRaster(tmp_path / "big.tif").write(result, grid)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 30 << 20, f"peak {peak / 2**20:.0f} MiB"  # a full-width strip of 512 rows is 39 MiB
    with rasterio.open(tmp_path / "big.tif") as ds:
        assert (ds.width, ds.height) == (size, size) and ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        for k, (c0, r0, c1, r1) in enumerate(boxes, 1):
            win = rasterio.windows.Window(c0 - 1, r0 - 1, c1 - c0 + 2, r1 - r0 + 2).intersection(
                rasterio.windows.Window(0, 0, size, size))
            assert pixel_counts(ds.read(1, window=win)) == {k: (c1 - c0) * (r1 - r0)}
