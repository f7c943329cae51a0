"""The row merge behind the model: its failure stops the run at once and names the row."""

import pytest

import geoseg
from geoseg.errors import RunError
from geoseg.run import rowmerge
from geoseg.testing import CountingSegmenter, make_scene


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
