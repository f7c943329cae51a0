"""geoseg.run.engine on its own: read-ahead, staging of a real GeoTIFF into a real TileStore."""

import threading
import time

import numpy as np
import pytest

from geoseg.core.staging import TileStore
from geoseg.core.tiling import plan_tiles
from geoseg.errors import GeosegError, RunError
from geoseg.io.raster import RasterSource
from geoseg.run.engine import LocalEngine, read_ahead
from geoseg.run.progress import Progress
from geoseg.testing import ColorSegmenter, draw, pieces_in_memory, write_geotiff
from geoseg.testing.scenes import random_objects

PROMPTS = ["red", "green", "blue"]


class CountingSource(RasterSource):
    """A real RasterSource that records the windows it is asked to read."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads = []
        self.lock = threading.Lock()

    def read(self, window):
        with self.lock:
            self.reads.append(window)
        return super().read(window)


class RecordingSegmenter(ColorSegmenter):
    """The colors backend, keeping every batch it is given."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.batches = []
        self.begun = []

    def begin(self, n_tiles, prompts):
        self.begun.append((n_tiles, list(prompts)))

    def segment(self, tiles, prompts):
        self.batches.append(tiles.copy())
        return super().segment(tiles, prompts)


@pytest.fixture(scope="module")
def half_nodata(tmp_path_factory):
    """A 1024² scene whose left half is nodata (0): with 256 px tiles and no
    overlap, tile columns 0 and 1 hold no valid pixel. Returns (path, rgb)."""
    rgb = draw(1024, 1024, random_objects(1024, 1024, 120, seed=7, start=10))
    rgb[:, :512] = 0
    path = write_geotiff(tmp_path_factory.mktemp("engine") / "half.tif", rgb, nodata=0)
    return path, rgb


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.005)


def test_read_ahead_yields_tiles_in_order_with_their_pixels(half_nodata):
    path, rgb = half_nodata
    plan = plan_tiles(1024, 1024, 256, 0)
    tiles = [plan.tile(k) for k in (5, 2, 14, 3)]  # any order asked is the order given
    with CountingSource(path) as src:
        got = list(read_ahead(src, tiles, depth=2))
    assert [t.index for t, _, _ in got] == [5, 2, 14, 3]
    for tile, pixels, valid in got:
        w = tile.window
        assert np.array_equal(pixels, rgb[w.row:w.row_stop, w.col:w.col_stop])
        assert valid.all() == (tile.grid[1] >= 2) and valid.any() == (tile.grid[1] >= 2)


@pytest.mark.parametrize("depth", [1, 3])
def test_read_ahead_reads_exactly_depth_tiles_ahead_and_no_more(half_nodata, depth):
    plan = plan_tiles(1024, 1024, 256, 0)
    tiles = list(plan)
    with CountingSource(half_nodata[0]) as src:
        for k, (tile, _, _) in enumerate(read_ahead(src, tiles, depth=depth), 1):
            assert tile == tiles[k - 1]
            want = min(k + depth, len(tiles))
            wait_for(lambda n=want: len(src.reads) >= n)
            time.sleep(0.02)  # room for a read that should not happen
            # while the consumer holds tile k, tiles k+1 .. k+depth are read, none further
            assert len(src.reads) == want, (k, len(src.reads))
            assert src.reads[:want] == [t.window for t in tiles[:want]]


def stage(path, segmenter, store, todo=None, staged=None):
    plan = plan_tiles(1024, 1024, 256, 0)
    progress = Progress(bars=False)
    todo = list(range(len(plan))) if todo is None else todo
    progress.start("half.tif", len(todo), 0, 0.01)
    calls = []

    def record(tiles):
        # a fresh connection sees the batch: it was committed before the callback
        with TileStore(store.path) as other:
            calls.append((list(tiles), set(tiles) <= other.done()))

    with RasterSource(path) as src:
        LocalEngine(segmenter).stage(src, plan, todo, PROMPTS, store, progress, staged=staged or record)
    return plan, calls, progress


def test_stage_records_nodata_tiles_without_segmenting_them(half_nodata, tmp_path):
    path, rgb = half_nodata
    seg = RecordingSegmenter(batch_size=3)
    with TileStore(tmp_path / "s.sqlite") as store:
        plan, calls, progress = stage(path, seg, store)
        assert store.done() == set(range(16))
        assert store.nodata() == 8  # tile columns 0 and 1
        # only the 8 tiles with valid pixels reach the segmenter, in batches of its batch_size
        assert [len(b) for b in seg.batches] == [3, 3, 2]
        assert all((b.reshape(len(b), -1).max(axis=1) > 0).all() for b in seg.batches)
        assert seg.begun == [(16, PROMPTS)]
        # one callback per committed batch, with every tile it marked done (nodata ones included)
        assert calls == [([0, 1, 2, 3, 4, 5, 6], True), ([7, 8, 9, 10, 11], True), ([12, 13, 14, 15], True)]
        # the staged pieces are what the segmenter finds tile by tile
        want = pieces_in_memory(rgb, plan, ColorSegmenter(), PROMPTS)
        got = [p for r in range(plan.shape[0]) for p in store.pieces_in_row(r)]
        key = lambda p: (p.tile, p.label, p.row, p.col, np.asarray(p.mask).tobytes())  # noqa: E731
        assert sorted(map(key, got)) == sorted(map(key, want)) and len(want) > 20
        assert progress.done == 16 and progress.detections == len(want)


def test_stage_segments_only_the_tiles_to_do(half_nodata, tmp_path):
    seg = RecordingSegmenter(batch_size=4)
    todo = [3, 6, 7, 10, 15]
    with TileStore(tmp_path / "s.sqlite") as store:
        _, calls, _ = stage(half_nodata[0], seg, store, todo=todo)
        assert store.done() == set(todo)
        assert [len(b) for b in seg.batches] == [4, 1]
        assert seg.begun == [(5, PROMPTS)]
        assert [tiles for tiles, _ in calls] == [[3, 6, 7, 10], [15]]


class WrongCount(ColorSegmenter):
    def segment(self, tiles, prompts):
        return super().segment(tiles, prompts)[:-1]


def test_a_segmenter_returning_the_wrong_number_of_results_stops_the_run(half_nodata, tmp_path):
    with TileStore(tmp_path / "s.sqlite") as store:
        with pytest.raises(RunError, match="returned 1 results for 2 tiles") as err:
            stage(half_nodata[0], WrongCount(batch_size=2), store)
        assert isinstance(err.value, GeosegError)
        assert store.done() == set()  # nothing of the bad batch staged


class OneAtATime(ColorSegmenter):
    """The colors backend, slow, recording how many of its calls ran at once and from which threads."""

    def __init__(self, **kwargs):
        super().__init__(delay=0.02, **kwargs)
        self.active = self.most = 0
        self.threads = set()
        self.lock = threading.Lock()

    def segment(self, tiles, prompts):
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
            self.threads.add(threading.current_thread().name)
        try:
            return super().segment(tiles, prompts)
        finally:
            with self.lock:
                self.active -= 1


def test_two_batches_in_flight_share_the_model_one_call_at_a_time_and_come_out_in_order(half_nodata):
    from geoseg.core.segmenter import Backend
    from geoseg.run.engine import segment_tiles

    path, _ = half_nodata
    plan = plan_tiles(1024, 1024, 256, 0)
    seg = OneAtATime(batch_size=2)
    with RasterSource(path) as src:
        got = list(segment_tiles(src, plan, list(range(len(plan))), Backend(seg), PROMPTS))
    assert seg.most == 1 and len(seg.threads) == 2  # two steps in flight, never two model calls at once
    assert [k for b in got for k in b.tiles] == list(range(16))
    with RasterSource(path) as src:
        plan_one = list(segment_tiles(src, plan, list(range(16)), Backend(ColorSegmenter(batch_size=16)), PROMPTS))
    assert [(p.tile, p.row, p.col, p.label) for b in got for p in b.pieces] == \
        [(p.tile, p.row, p.col, p.label) for b in plan_one for p in b.pieces]
