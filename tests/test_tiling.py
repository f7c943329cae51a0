import numpy as np
import pytest

from geoseg.core.tiling import Window, plan_tiles
from geoseg.errors import UsageError


@pytest.mark.parametrize("height,width,size,overlap", [
    (2048, 2048, 1008, 128), (1000, 3001, 512, 64), (1008, 1009, 1008, 128), (517, 900, 256, 255), (40, 30, 64, 8),
])
def test_cores_partition_the_raster_and_edges_are_pinned(height, width, size, overlap):
    plan = plan_tiles(height, width, size, overlap)
    owned = np.zeros((height, width), np.int32)
    for tile in plan:
        c = tile.core
        owned[c.row:c.row_stop, c.col:c.col_stop] += 1
        assert tile.window.intersection(c) == c  # a tile owns only what it sees
        assert tile.window.height == tile.window.width == size
        if height >= size:
            assert tile.window.row_stop <= height
        if width >= size:
            assert tile.window.col_stop <= width
    assert (owned == 1).all()
    rows, cols = np.mgrid[0:height, 0:width]
    owner = plan.owner(rows, cols)
    for tile in plan:
        c = tile.core
        assert (owner[c.row:c.row_stop, c.col:c.col_stop] == tile.index).all()
    last = plan.tile(len(plan) - 1).window
    assert last.row_stop == max(height, size) and last.col_stop == max(width, size)


def test_overlap_is_at_least_asked_and_cores_keep_half_of_it_from_tile_edges():
    plan = plan_tiles(3000, 3000, 1008, 128)
    starts = plan.col_starts
    assert all(b - a <= 1008 - 128 for a, b in zip(starts, starts[1:]))
    for tile in plan:
        w, c = tile.window, tile.core
        if c.col > 0:
            assert c.col - w.col >= 64
        if c.col_stop < 3000:
            assert w.col_stop - c.col_stop >= 64


def test_small_raster_gets_one_padded_tile():
    plan = plan_tiles(300, 200, 1008, 128)
    assert len(plan) == 1
    tile = plan.tile(0)
    assert tile.window == Window(0, 0, 1008, 1008)
    assert tile.core == Window(0, 0, 300, 200)


@pytest.mark.parametrize("size,overlap", [(512, 512), (512, 600), (512, -1), (8, 0)])
def test_bad_tiling_is_refused(size, overlap):
    with pytest.raises(UsageError, match="overlap=|tile_size="):
        plan_tiles(1000, 1000, size, overlap)
