"""The staging store and the row-by-row merge: exact round trips, order-independence, bounded rows."""

import sqlite3

import numpy as np
import pytest
from conftest import match_ious, untiled

from geoseg.core.merge import KEY_BITS, Piece, RowMerger, merge
from geoseg.core.staging import TileStore, pack, unpack
from geoseg.core.tiling import plan_tiles
from geoseg.testing import ColorSegmenter, draw, pieces_in_memory, ring
from geoseg.testing.scenes import random_objects


def scene(size=1800, n=500, seed=5, big=True):
    objs = random_objects(size, size, n, seed=seed, start=10)
    if big:  # a ring over rows 1 to 6 of 256 px tiles
        objs.insert(0, ring("green", 1, size / 2, size / 2, 500, 200))
    return draw(size, size, objs)


def test_masks_round_trip_bit_exact():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (3, 17), (64, 64), (129, 7)]:
        mask = rng.random(shape) < 0.5
        assert np.array_equal(unpack(pack(mask), *shape), mask)


@pytest.mark.parametrize("big, most_rows", [(False, 2), (True, 6)])
def test_row_by_row_merge_holds_few_rows_and_equals_the_untiled_truth(big, most_rows):
    rgb = scene(big=big)
    plan = plan_tiles(*rgb.shape[:2], 256, 32)
    pieces = pieces_in_memory(rgb, plan, ColorSegmenter(), ["red", "green", "blue"])
    rows: dict[int, list[Piece]] = {}
    for k, p in enumerate(pieces):
        p.key = (p.tile << KEY_BITS) | k
        rows.setdefault(p.tile // plan.shape[1], []).append(p)
    merger = RowMerger(plan)
    out, held = [], []
    for t in range(plan.shape[0]):
        out += merger.add(t, rows.get(t, []))
        held.append(len(merger.rows))
    # small objects: a row is dropped once the next is matched; a large object keeps the rows it spans
    assert plan.shape[0] == 8 and max(held) == most_rows and held[-1] == 0
    truth = untiled(rgb)
    assert len(out) == len(truth)
    assert min(match_ious(truth, out, rgb.shape[:2])) == 1.0
    assert [(i.label, i.row, i.col) for i in out] == [(i.label, i.row, i.col) for i in merge(pieces, plan)]


def test_store_gives_the_same_objects_whatever_order_tiles_were_staged(tmp_path):
    rgb = scene(1200, 300, seed=9)
    plan = plan_tiles(*rgb.shape[:2], 256, 32)
    pieces = pieces_in_memory(rgb, plan, ColorSegmenter(), ["red", "green", "blue"])
    by_tile: dict[int, list[Piece]] = {}
    for p in pieces:
        by_tile.setdefault(p.tile, []).append(p)
    results = []
    for seed in (1, 2):
        order = np.random.default_rng(seed).permutation(len(plan))
        with TileStore(tmp_path / f"s{seed}.sqlite") as store:
            for k in range(0, len(order), 5):  # batches of 5 tiles in a shuffled order
                batch = [int(t) for t in order[k:k + 5]]
                store.put(batch, [p for t in batch for p in by_tile.get(t, [])], plan.shape[1])
            assert store.done() == set(range(len(plan)))
            merger = RowMerger(plan)
            results.append([i for t in range(plan.shape[0]) for i in merger.add(t, store.pieces_in_row(t))])
    a, b = results
    assert len(a) == len(b) == len(merge(pieces, plan)) > 100
    for x, y in zip(a, b):
        assert (x.label, x.row, x.col, x.score, x.n_tiles) == (y.label, y.row, y.col, y.score, y.n_tiles)
        assert np.array_equal(x.mask, y.mask)


def test_a_failed_batch_stages_nothing(tmp_path):
    good = Piece("red", 0.9, 0, 0, 0, np.ones((2, 2), bool))
    bad = Piece("red", None, 1, 0, 0, np.ones((2, 2), bool))  # refused by the table, mid-transaction
    with TileStore(tmp_path / "s.sqlite") as store:
        with pytest.raises(sqlite3.IntegrityError):
            store.put([0, 1], [good, bad], 2)
        assert store.done() == set() and store.n_pieces() == 0
        store.put([0], [good], 2)
        assert store.done() == {0} and len(store.pieces_in_row(0)) == 1


def test_rows_must_come_in_order():
    merger = RowMerger(plan_tiles(1000, 1000, 256, 32))
    with pytest.raises(ValueError, match="in order"):
        merger.add(1, [])
