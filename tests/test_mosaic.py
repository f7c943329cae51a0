"""Folders of adjacent tiles segmented as one mosaic (`--mosaic`, geoseg.io.mosaic)."""

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from conftest import one_line_error, run
from rasterio.warp import Resampling, calculate_default_transform, reproject

import geoseg
from geoseg.core.tiling import plan_tiles
from geoseg.errors import RasterError
from geoseg.io import mosaic
from geoseg.io.inputs import list_inputs
from geoseg.run import rowshards
from geoseg.run.workdir import WorkDir
from geoseg.testing.scenes import draw, random_objects, write_geotiff

SIZE, STEP = 600, 200  # a scene cut into 3 x 3 files
ORIGIN = Affine(0.5, 0, 404000.0, 0, -0.5, 3286000.0)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A scene of large objects, many crossing the files' edges, and its untiled truth."""
    d = tmp_path_factory.mktemp("mosaic")
    rgb = draw(SIZE, SIZE, random_objects(SIZE, SIZE, 45, seed=7, r_range=(14, 40)))
    write_geotiff(d / "scene.tif", rgb, transform=ORIGIN)
    r = segment(d / "scene.tif", "-o", d / "truth.gpkg", "--tile-size", SIZE, "--overlap", 0)
    assert r.exit_code == 0, r.output
    return d, rgb, pyogrio.read_dataframe(d / "truth.gpkg")


def segment(*args):
    args = list(args)
    if "--tile-size" not in args:
        args += ["--tile-size", 256, "--overlap", 32]
    return run("segment", *args, "-p", "red", "-p", "green", "-p", "blue", "--backend", "colors", "-q")


def cut(rgb, folder, overlap=0, skip=(), **profile):
    """The 3 x 3 files of `rgb`, each grown by `overlap` px; a list of paths."""
    folder.mkdir()
    paths = []
    for i in range(3):
        for j in range(3):
            if (i, j) in skip:
                continue
            r0, c0 = max(0, i * STEP - overlap), max(0, j * STEP - overlap)
            r1, c1 = min(SIZE, (i + 1) * STEP + overlap), min(SIZE, (j + 1) * STEP + overlap)
            paths.append(write_geotiff(folder / f"t{i}{j}.tif", rgb[r0:r1, c0:c1],
                                       transform=ORIGIN @ Affine.translation(c0, r0), **profile))
    return paths


def matches(truth, result):
    """One-to-one: for each truth polygon, the IoU of the result polygon of its label overlapping it most."""
    assert len(result) == len(truth)
    tree = shapely.STRtree(result.geometry.values)
    ious, used = [], set()
    for geom, label in zip(truth.geometry.values, truth["label"]):
        cands = [k for k in tree.query(geom, predicate="intersects") if result["label"].iloc[k] == label]
        if not cands:
            ious.append(0.0)
            continue
        iou = [shapely.intersection(geom, result.geometry.values[k]).area
               / shapely.union(geom, result.geometry.values[k]).area for k in cands]
        best = cands[int(np.argmax(iou))]
        assert best not in used, "two truth objects matched one result"
        used.add(best)
        ious.append(max(iou))
    return np.array(ious)


@pytest.mark.parametrize("overlap", [0, 24])
def test_adjacent_and_overlapping_files_equal_the_untiled_truth(scene, tmp_path, overlap):
    d, rgb, truth = scene
    folder = tmp_path / "tiles"
    cut(rgb, folder, overlap)
    alone = tmp_path / "alone.gpkg"
    assert segment(folder, "-o", alone).exit_code == 0
    assert len(pyogrio.read_dataframe(alone)) > len(truth)  # file by file: objects split or doubled
    out = tmp_path / "out.gpkg"
    r = segment(folder, "--mosaic", "-o", out)
    assert r.exit_code == 0, r.output
    gdf = pyogrio.read_dataframe(out)
    assert matches(truth, gdf).min() >= 0.98
    assert gdf.crs == truth.crs
    # the source column names the files each object was read from: several for objects on edges
    names = {f"t{i}{j}.tif" for i in range(3) for j in range(3)}
    parts = [set(s.split(",")) for s in gdf["source"]]
    assert all(p and p <= names for p in parts)
    assert any(len(p) > 1 for p in parts) and any(len(p) == 1 for p in parts)
    assert not (tmp_path / "out.gpkg.geoseg-work").exists()


def test_one_file_in_another_utm_zone_is_warped(scene, tmp_path):
    d, rgb, truth = scene
    folder = tmp_path / "tiles"
    paths = cut(rgb, folder)
    moved = folder / "t11.tif"  # the middle file, in UTM 18N
    with rasterio.open(moved) as src:
        data, crs = src.read(), "EPSG:32618"
        t, w, h = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds, resolution=0.25)
        out = np.zeros((3, h, w), np.uint8)
        reproject(data, out, src_transform=src.transform, src_crs=src.crs, dst_transform=t, dst_crs=crs,
                  resampling=Resampling.nearest, dst_nodata=0)
    write_geotiff(moved, np.moveaxis(out, 0, -1), crs=crs, transform=t, nodata=0)
    with pytest.warns(mosaic.ReprojectWarning, match="1 of 9 files are not in EPSG:32617 .*t11.tif"):
        xml = mosaic.build(paths, resolution=0.5)
    with rasterio.open(xml) as ds:
        assert ds.crs == "EPSG:32617" and ds.shape == (SIZE, SIZE) and ds.transform == ORIGIN
        assert ds.dataset_mask().min() == 255  # the warped file fills its place: no gap
    gdf = geoseg.segment(paths, ["red", "green", "blue"], segmenter="colors", tile_size=256, overlap=32,
                         mosaic=True, resolution=0.5)
    assert matches(truth, gdf).min() >= 0.98
    assert any("t11.tif" in s for s in gdf["source"])


def test_gaps_are_nodata_and_the_first_file_wins(scene, tmp_path):
    d, rgb, _ = scene
    folder = tmp_path / "tiles"
    paths = cut(rgb, folder, overlap=10, skip=[(1, 1)])
    # the second file's overlap with the first painted black: the first one's pixels are read there
    with rasterio.open(paths[1], "r+") as ds:
        ds.write(np.zeros((3, ds.height, 20), np.uint8), window=rasterio.windows.Window(0, 0, 20, ds.height))
    xml = mosaic.build(paths)
    with rasterio.open(xml) as ds:
        mask = ds.dataset_mask()
        assert (mask[STEP + 10:2 * STEP - 10, STEP + 10:2 * STEP - 10] == 0).all()
        assert (mask[:STEP] == 255).all()
        assert (np.moveaxis(ds.read(window=rasterio.windows.Window(0, 0, SIZE, STEP)), 0, -1) == rgb[:STEP]).all()
    gdf = geoseg.segment(folder, ["red", "green", "blue"], segmenter="colors", tile_size=256, overlap=32,
                         mosaic=True)
    hole = shapely.box(*(ORIGIN @ (STEP + 12, 2 * STEP - 12)), *(ORIGIN @ (2 * STEP - 12, STEP + 12)))
    assert len(gdf) and not gdf.geometry.intersects(hole).any()


def write(path, data, **kw):
    return write_geotiff(path, data, transform=ORIGIN @ Affine.translation(200 * ("b" in str(path.name)), 0), **kw)


@pytest.mark.parametrize("second, extra, words", [
    (dict(data=np.zeros((200, 200, 4), np.uint8)), [], "has 4 bands of uint8 but"),
    (dict(data=np.zeros((200, 200, 3), np.uint16)), [], "has 3 bands of uint16 but"),
    (dict(data=np.zeros((100, 100, 3), np.uint8), transform=Affine(1, 0, 404100.0, 0, -1, 3286000.0)), [],
     "has 1 x 1 pixels but"),
    (dict(data=np.zeros((200, 200, 3), np.uint8), crs=None), [], "has no CRS"),
    (dict(data=np.zeros((200, 200, 3), np.uint8)), ["--dst-crs", "EPSG:32647"], "cannot be placed in EPSG:32647"),
    (dict(data=np.zeros((200, 200, 3), np.uint8)), ["--bands", "4,3,2"], "--bands 4 is out of range"),
])
def test_bad_mosaics_are_one_line_before_any_work(tmp_path, second, extra, words):
    folder = tmp_path / "in"
    folder.mkdir()
    write_geotiff(folder / "a.tif", np.zeros((200, 200, 3), np.uint8), transform=ORIGIN)
    kw = {"transform": ORIGIN @ Affine.translation(200, 0), **second}
    write_geotiff(folder / "b.tif", kw.pop("data"), **kw)
    out = tmp_path / "out.gpkg"
    line = one_line_error(segment(folder, "--mosaic", "-o", out, *extra))
    assert words in line, line
    assert "<VRT" not in line and not out.exists() and not (tmp_path / "out.gpkg.geoseg-work").exists()


def test_several_resolutions_are_read_at_the_one_asked_for(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_geotiff(folder / "a.tif", np.full((200, 200, 3), 40, np.uint8), transform=ORIGIN)
    write_geotiff(folder / "b.tif", np.full((100, 100, 3), 40, np.uint8),
                  transform=Affine(1, 0, 404100.0, 0, -1, 3286000.0))
    with rasterio.open(mosaic.build(sorted(folder.iterdir()), resolution=0.5)) as ds:
        assert ds.shape == (200, 400) and ds.res == (0.5, 0.5)  # b.tif: 100 m east of a.tif's origin, 100 m wide
        assert ds.dataset_mask().min() == 255 and (ds.read() == 40).all()


def test_a_changed_member_stops_a_resume(scene, tmp_path):
    d, rgb, _ = scene
    paths = cut(rgb, tmp_path / "tiles")
    xml = mosaic.build(paths)
    assert mosaic.build(paths) == xml  # one name and one key on every run
    work = WorkDir(tmp_path / "work", {"--tile-size": 256})
    work.store(xml, 9, (3, 3)).close()
    assert work.result_path(xml).name.startswith("tiles-")
    work.store(mosaic.build(paths), 9, (3, 3)).close()  # same files: resumed
    write_geotiff(paths[4], rgb[STEP:2 * STEP, STEP:2 * STEP] // 2, transform=ORIGIN @ Affine.translation(STEP, STEP))
    with pytest.raises(RasterError, match="tiles changed since the interrupted run"):
        work.store(mosaic.build(paths), 9, (3, 3))


def test_shards_of_a_mosaic_and_combine_equal_the_unsharded_run(scene, tmp_path):
    d, rgb, truth = scene
    folder = tmp_path / "tiles"
    cut(rgb, folder, overlap=24)
    one = tmp_path / "one.gpkg"
    assert segment(folder, "--mosaic", "-o", one, "--tile-size", 128, "--overlap", 16).exit_code == 0
    whole = pyogrio.read_dataframe(one)
    out = tmp_path / "out"
    out.mkdir()
    for k in (1, 3):
        r = segment(folder, "--mosaic", "--shard", f"{k}/3", "--output-dir", out, "--tile-size", 128, "--overlap", 16)
        assert r.exit_code == 0, r.output
        assert f"tiles.part-{k}-of-3.sqlite: shard {k}/3 of the mosaic staged" in r.output
    line = one_line_error(run("combine", out, "-o", tmp_path / "all.gpkg"))
    assert "holds shards 1, 3 of 3 of the mosaic tiles: shard 2/3 is missing" in line
    r = segment(folder, "--mosaic", "--shard", "2/3", "--output-dir", out, "--tile-size", 128, "--overlap", 16)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == [f"tiles.part-{k}-of-3.sqlite" for k in (1, 2, 3)]
    r = run("combine", out, "-o", tmp_path / "all.gpkg")
    assert r.exit_code == 0, r.output
    parts = pyogrio.read_dataframe(tmp_path / "all.gpkg")
    key = ["label", "score", "source"]
    assert len(parts) == len(whole) == len(truth)
    assert parts[key].equals(whole[key]) and list(parts["id"]) == list(whole["id"])
    assert parts.geometry.geom_equals_exact(whole.geometry, 1e-9).all()
    assert matches(truth, parts).min() >= 0.98
    # objects across the boundaries of the shards' rows came back once and whole
    plan = plan_tiles(SIZE, SIZE, 128, 16)
    cuts = [plan.tile(rowshards.rows_of((k, 3), plan.shape[0]).start * plan.shape[1]).window.row + 8 for k in (2, 3)]
    ys = [ORIGIN.f - 0.5 * y for y in cuts]
    across = parts.bounds.query(" or ".join(f"(miny < {y} < maxy)" for y in ys))
    assert len(across) >= 3
    # a rerun of a shard done keeps its part
    before = (out / "tiles.part-1-of-3.sqlite").stat().st_mtime_ns
    r = segment(folder, "--mosaic", "--shard", "1/3", "--output-dir", out, "--tile-size", 128, "--overlap", 16)
    assert r.exit_code == 0 and (out / "tiles.part-1-of-3.sqlite").stat().st_mtime_ns == before
    # a shard run with other settings is refused by name
    (out / "tiles.part-2-of-3.sqlite").unlink()
    r = segment(folder, "--mosaic", "--shard", "2/3", "--output-dir", out, "--tile-size", 128, "--overlap", 8)
    assert r.exit_code == 0, r.output
    line = one_line_error(run("combine", out, "-o", tmp_path / "again.gpkg"))
    assert "tiles.part-2-of-3.sqlite was made with --overlap 8" in line and "--overlap 16" in line, line
    assert not (tmp_path / "again.gpkg").exists() and not list(out.glob(".geoseg-*"))


def test_dask_workers_read_the_mosaic(scene, tmp_path):
    from geoseg.run import pipeline
    from geoseg.run.distributed import DaskEngine, connect

    d, rgb, truth = scene
    folder = tmp_path / "tiles"
    cut(rgb, folder, overlap=24)
    settings = pipeline.Settings.of(["red", "green", "blue"], tile_size=256, overlap=32)
    xml = mosaic.from_settings(list_inputs(folder), settings)
    client = connect(workers=1)
    try:
        summary = pipeline.run([xml], settings, DaskEngine(client, "colors"), output=tmp_path / "dask.gpkg")
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    assert not summary.failed
    assert matches(truth, pyogrio.read_dataframe(tmp_path / "dask.gpkg")).min() >= 0.98


def test_nodata_in_the_first_file_lets_the_next_show_through(scene, tmp_path):
    d, rgb, _ = scene
    paths = cut(rgb, tmp_path / "tiles", overlap=10)
    first = rgb[:STEP + 10, :STEP + 10].copy()
    first[:, -20:] = 0  # its overlap with t01.tif is nodata
    write_geotiff(paths[0], first, transform=ORIGIN, nodata=0)
    with rasterio.open(mosaic.build(paths)) as ds:
        assert ds.dataset_mask().min() == 255
        assert (np.moveaxis(ds.read(window=rasterio.windows.Window(0, 0, SIZE, SIZE)), 0, -1) == rgb).all()


def test_in_memory_inputs_and_pixel_coords_are_refused(scene):
    d, _, _ = scene
    with rasterio.open(d / "scene.tif") as ds, pytest.raises(geoseg.UsageError, match="not a DatasetReader"):
        geoseg.segment([ds], ["red"], segmenter="colors", mosaic=True)
    with pytest.raises(geoseg.UsageError, match="mosaic= places the files by their CRS: leave out pixel_coords="):
        geoseg.segment(d / "scene.tif", ["red"], segmenter="colors", mosaic=True, pixel_coords=True)


def test_an_interrupted_mosaic_run_resumes_and_an_area_keeps_its_objects(scene, tmp_path):
    from geoseg.testing import CountingSegmenter

    d, rgb, truth = scene
    folder = tmp_path / "tiles"
    cut(rgb, folder, overlap=24)
    out = tmp_path / "out.gpkg"
    args = dict(tile_size=128, overlap=16, output=out, mosaic=True)
    with pytest.raises(RuntimeError, match="fell over"):
        geoseg.segment(folder, ["red", "green", "blue"], segmenter=CountingSegmenter(fail_after=12), **args)
    assert (tmp_path / "out.gpkg.geoseg-work").is_dir() and not out.exists()
    again = CountingSegmenter()
    gdf = geoseg.segment(folder, ["red", "green", "blue"], segmenter=again, **args)
    assert 0 < again.tiles < 36  # the 6 x 6 tiles, less those staged before
    assert matches(truth, gdf).min() >= 0.98
    # --bbox over the middle of the mosaic: the objects whose centre lies inside, whole
    box = (404060.0, 3285760.0, 404240.0, 3285940.0)
    part = geoseg.segment(folder, ["red", "green", "blue"], segmenter="colors", tile_size=128, overlap=48,
                          mosaic=True, bbox=box)
    inside = truth[truth.geometry.centroid.within(shapely.box(*box))]
    assert 0 < len(inside) < len(truth)
    assert matches(inside.reset_index(drop=True), part).min() >= 0.98
