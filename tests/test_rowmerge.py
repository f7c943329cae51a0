"""The row merge behind the model: its failure stops the run at once and names the row; regions
that span the raster are merged in bounded memory."""

import sys
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely

import geoseg
from geoseg.core import merge
from geoseg.errors import RunError
from geoseg.run import assemble, rowmerge, shards
from geoseg.testing import ColorSegmenter, CountingSegmenter, make_scene
from geoseg.testing.memory import run_measured
from geoseg.testing.scenes import write_region_scene


def test_a_failed_merge_stops_staging_at_once(tmp_path, monkeypatch):
    scene = make_scene(tmp_path / "scene.tif", size=2000, seed=2, n_objects=120)
    real = rowmerge.vectorize.to_frame

    def broken(instances, *args, **kwargs):
        if instances:
            raise MemoryError("no room for the polygons")
        return real(instances, *args, **kwargs)

    monkeypatch.setattr(rowmerge.vectorize, "to_frame", broken)
    seg = CountingSegmenter(batch_size=1, delay=0.01)
    with pytest.raises(RunError, match=r"scene.tif: merging row [01] of tiles failed: MemoryError: no room") as err:
        geoseg.segment(scene, ["red", "blue"], segmenter=seg, tile_size=256, overlap=32,
                       output=tmp_path / "out.gpkg", cpu_workers=0)  # 0: vectorised in the merge thread, patched
    assert isinstance(err.value.__cause__, MemoryError)
    total = 9 * 9
    assert seg.tiles < total // 2, seg.tiles  # not the whole raster: a row has 9 tiles
    assert not (tmp_path / "out.gpkg").exists()


def test_a_forest_and_a_river_over_20000_px_are_two_objects_in_bounded_memory(tmp_path):
    """Regions spanning the raster (geoseg segment, colors backend, default CPU workers): areas equal
    the painted pixels, and the peak memory of every process of the run, summed, stays < 1.5 GB
    (merged as masks, the forest alone needed 5.65 GB in one process)."""
    scene = tmp_path / "region.tif"
    painted = write_region_scene(scene, 20_000)
    out = tmp_path / "out.gpkg"
    cli = str(Path(sys.executable).with_name("geoseg"))
    run = run_measured([cli, "segment", str(scene), "-p", "green", "-p", "blue", "--backend", "colors",
                        "-o", str(out), "-q"])
    assert run.returncode == 0, run.stderr
    gdf = pyogrio.read_dataframe(out)
    objects = gdf.dissolve("object_id", aggfunc="first")  # the forest, past merge.SPLIT vertices, comes in strips
    assert sorted(objects["label"]) == ["blue", "green"] and len(gdf) > 2
    for label, geom in zip(objects["label"], objects.geometry):
        assert geom.area / 0.25 == pytest.approx(painted[label], rel=0.005)  # 0.5 m pixels
    assert len(run.peaks_mb) >= 3  # the run, the fork server and a CPU worker were measured
    assert run.peak_mb < 1500, run.peaks_mb


@pytest.mark.parametrize("workers", [0, 1])
def test_a_region_past_the_vertex_limit_is_written_in_strips_that_share_its_object_id(tmp_path, monkeypatch, workers):
    """With the limits lowered (regions past 1,000 px, strips past 4,000 vertices), the forest of a
    2,000² scene comes in strips along the rows of tiles: consecutive features with one `object_id`
    (the `id` of the first), each a strip of the tile grid, that dissolve into the painted pixels;
    the objects of a second input are whole; the instance raster gives the strips the object's id;
    simplified, the strips dissolve into the object simplified whole; a combine keeps them."""
    monkeypatch.setattr(merge, "SPLIT", 4000)  # read by the run at its start: the limits of this run
    monkeypatch.setattr(merge, "REGION", 1000)
    scene = tmp_path / "region.tif"
    painted = write_region_scene(scene, 2000, spacing=250)
    small = make_scene(tmp_path / "small.tif", size=600, seed=1, n_objects=20)
    out = tmp_path / "out.gpkg"
    (tmp_path / "ids").mkdir()
    geoseg.segment([scene, small], ["green", "blue", "red"], segmenter=ColorSegmenter(), tile_size=256,
                   overlap=32, simplify=0, output=out, raster_out=tmp_path / "ids", cpu_workers=workers)
    gdf = pyogrio.read_dataframe(out)
    assert list(gdf.columns[:2]) == ["id", "object_id"] and list(gdf["id"]) == list(range(1, len(gdf) + 1))
    forest = gdf[gdf["source"].eq("region.tif") & gdf["label"].eq("green")]
    assert forest["object_id"].nunique() == 1 and len(forest) >= 3
    for first, ids in gdf.groupby("object_id")["id"]:  # consecutive, from the first's id
        assert list(ids) == list(range(first, first + len(ids)))
    rest = gdf[gdf["source"].eq("small.tif")]
    assert len(rest) >= 20 and (rest["object_id"] == rest["id"]).all()  # small objects: whole, as before
    assert gdf.loc[forest.index, "n_tiles"].nunique() == 1
    assert all(shapely.get_num_coordinates(g) <= 4000 + 50 for g in forest.geometry)
    objects = gdf.dissolve("object_id", aggfunc="first")
    one = objects[objects["source"].eq("region.tif")]
    assert sorted(one["label"]) == ["blue", "green"]
    for label, geom in zip(one["label"], one.geometry):
        assert geom.area / 0.25 == painted[label]  # exact: no simplification, no pixel twice
    with rasterio.open(tmp_path / "ids" / "region.tif") as src:
        ids = src.read(1)
    in_forest = ids[ids > 0]
    assert set(np.unique(in_forest).tolist()) == set(gdf.loc[gdf["source"].eq("region.tif"), "object_id"])
    assert (ids == forest["object_id"].iloc[0]).sum() == painted["green"]
    # simplified (the default), each strip on its own but for its vertices on the cuts: the dissolve is the
    # object simplified whole, as one polygon with all its holes (no sliver along a cut)
    args = dict(segmenter=ColorSegmenter(), tile_size=256, overlap=32, cpu_workers=workers)
    strips = geoseg.segment(scene, ["green"], **args)
    monkeypatch.setattr(merge, "SPLIT", 10**9)
    whole = geoseg.segment(scene, ["green"], **args)
    assert len(strips) >= 3 and len(whole) == 1
    dissolved = shapely.union_all(strips.geometry.values)
    assert dissolved.geom_type == "Polygon", len(shapely.get_parts(dissolved))
    assert len(dissolved.interiors) == len(whole.geometry[0].interiors) >= 30
    assert dissolved.area == pytest.approx(whole.geometry[0].area, rel=1e-4)
    assert dissolved.symmetric_difference(whole.geometry[0]).area < 0.5 * dissolved.length * 0.5  # < 0.5 px
    monkeypatch.setattr(merge, "SPLIT", 4000)
    combined = tmp_path / "combined.gpkg"  # a folder of shard outputs: ids renumbered, objects with them
    (tmp_path / "shards").mkdir()
    for k in (0, 1):
        geoseg.segment([small, scene][k], ["green", "blue", "red"], segmenter=ColorSegmenter(), tile_size=256,
                       overlap=32, simplify=0, output=tmp_path / "shards" / f"{k}.gpkg", cpu_workers=0)
    objects, _ = shards.combine(tmp_path / "shards", combined)
    both = pyogrio.read_dataframe(combined)
    assert objects == both["object_id"].nunique() < len(both)  # the strips counted once
    assert list(both["id"]) == list(range(1, len(both) + 1))
    strips = both[both["label"].eq("green") & both["source"].eq("region.tif")]
    assert strips["object_id"].nunique() == 1 and strips["object_id"].iloc[0] == strips["id"].iloc[0] > 1
    assert len(strips) >= 3
    # a rerun counts the objects of an output, or of a work folder's result (its `part` column), as written
    assert assemble.count_objects(combined, "detections") == objects
    result = both.assign(part=both["id"] - both["object_id"]).drop(columns=["id", "object_id"])
    pyogrio.write_dataframe(result, tmp_path / "result.gpkg", layer="objects")
    assert assemble.count_objects(tmp_path / "result.gpkg") == objects


def test_the_strips_of_a_region_are_vectorised_apart_and_kept_or_dropped_whole_by_min_area(tmp_path, monkeypatch):
    """Each strip of a region is vectorised in a task of its own (a CPU worker never holds the
    whole forest), yet --min-area is for the whole object: just under the forest's area keeps every
    strip, each of them far smaller; just over drops them all, the river staying."""
    monkeypatch.setattr(merge, "SPLIT", 4000)
    monkeypatch.setattr(merge, "REGION", 1000)
    scene = tmp_path / "region.tif"
    painted = write_region_scene(scene, 2000, spacing=250)
    tasks = []
    real = rowmerge._chunks

    def counted(*args):  # the CPU worker's tasks
        for chunk in real(*args):
            tasks.append(chunk)
            yield chunk

    monkeypatch.setattr(rowmerge, "_chunks", counted)
    forest = painted["green"] * 0.25  # m² (0.5 m pixels)
    args = dict(segmenter=ColorSegmenter(), tile_size=256, overlap=32, simplify=0, cpu_workers=1)
    kept = geoseg.segment(scene, ["green", "blue"], min_area=0.99 * forest, **args)
    strips = kept[kept["label"].eq("green")]  # the river, smaller, dropped
    assert len(strips) >= 3 and strips["object_id"].nunique() == 1 and strips.area.max() < 0.5 * forest
    assert strips.area.sum() == forest  # exact: every strip kept
    alone = [t for t in tasks if any(i.parts > 1 and i.label == "green" for i in t)]
    assert len(alone) == len(strips) and all(len(t) == 1 for t in alone)
    dropped = geoseg.segment(scene, ["green", "blue"], min_area=1.01 * forest, **args)
    assert len(dropped) == 0  # the river is smaller still
    assert painted["blue"] < painted["green"]
