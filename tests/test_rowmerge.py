"""The row merge behind the model: its failure stops the run at once and names the row; regions
that span the raster are merged in bounded memory."""

import sys
from pathlib import Path

import pyogrio
import pytest

import geoseg
from geoseg.errors import RunError
from geoseg.run import rowmerge
from geoseg.testing import CountingSegmenter, make_scene
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
    assert sorted(gdf["label"]) == ["blue", "green"]
    for label, geom in zip(gdf["label"], gdf.geometry):
        assert geom.area / 0.25 == pytest.approx(painted[label], rel=0.005)  # 0.5 m pixels
    assert len(run.peaks_mb) >= 3  # the run, the fork server and a CPU worker were measured
    assert run.peak_mb < 1500, run.peaks_mb
