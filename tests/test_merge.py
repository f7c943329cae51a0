from dataclasses import replace

import numpy as np
import pytest
import shapely
from conftest import PROMPTS, match_ious, paint, run_merge, untiled

from geoseg.core.merge import KEY_BITS, REGION, RowMerger, merge
from geoseg.core.segmenter import Detection
from geoseg.core.tiling import plan_tiles
from geoseg.core.vectorize import mask_of, trace
from geoseg.testing import ColorSegmenter, disc, draw, pieces_in_memory, rectangle, ring
from geoseg.testing.scenes import SceneObject, random_objects


def test_objects_crossing_seams_become_one_polygon_each_equal_to_the_untiled_result():
    # tile 512, overlap 64: seams (tile edges and core cuts) near 448, 480, 512, 896...
    objs = [disc("red", 1, 480, 480, 40),          # on a four-tile corner
            disc("green", 2, 200, 470, 25),        # across a vertical seam
            rectangle("blue", 3, 440, 100, 90, 60),  # across a horizontal seam
            disc("red", 4, 300, 300, 20)]          # inside one core
    objs += random_objects(1400, 1400, 150, seed=7, start=10)
    rgb = draw(1400, 1400, objs)
    truth = untiled(rgb)
    result, _ = run_merge(rgb, 512, 64)
    assert len(result) == len(truth)
    ious = match_ious(truth, result, rgb.shape[:2])
    assert min(ious) >= 0.98
    assert (paint(truth, rgb.shape[:2]) > 0).sum() == (paint(result, rgb.shape[:2]) > 0).sum()


def test_object_larger_than_a_tile_is_one_polygon_with_its_hole():
    rgb = draw(2000, 2000, [ring("green", 1, 1000, 1000, 800, 250)])
    result, plan = run_merge(rgb, 512, 64, prompts=["green"])
    assert len(result) == 1
    inst = result[0]
    assert inst.n_tiles >= 9
    assert not inst.mask[inst.mask.shape[0] // 2, inst.mask.shape[1] // 2]  # the hole is kept
    assert match_ious(untiled(rgb, ["green"]), result, rgb.shape[:2]) == [1.0]


@pytest.mark.parametrize("gap", [0, 1])
@pytest.mark.parametrize("at", [470, 480, 500, 300])  # in the overlap, on the core cut, at a tile edge, away
def test_touching_objects_stay_two(gap, at):
    objs = [rectangle("red", 1, 200, at - 50, 100, 50), rectangle("red", 2, 200, at + gap, 100, 50),
            disc("red", 3, at - 20, 700, 20), disc("red", 4, at + 20 + gap, 700, 20)]
    rgb = draw(1000, 1000, objs)
    result, _ = run_merge(rgb, 512, 64, prompts=["red"])
    assert len(result) == 4
    assert min(match_ious(untiled(rgb, ["red"]), result, rgb.shape[:2])) >= 0.98


def test_labels_are_never_merged_together():
    rgb = draw(1000, 1000, [disc("red", 1, 480, 480, 60), disc("green", 2, 480, 540, 60)])
    result, _ = run_merge(rgb, 512, 64, prompts=["red", "green"])
    assert sorted(i.label for i in result) == ["green", "red"]


class EdgeBlind(ColorSegmenter):
    """Misses the `margin` pixels along every tile edge, as models often do."""

    def __init__(self, margin=4, **kw):
        super().__init__(**kw)
        self.margin = margin

    def segment(self, tiles, prompts):
        out = []
        for tile_dets in super().segment(tiles, prompts):
            h, w = tiles.shape[1:3]
            keep = []
            for d in tile_dets:
                m = d.mask.copy()
                r, c = d.origin
                rows, cols = np.arange(r, r + m.shape[0])[:, None], np.arange(c, c + m.shape[1])[None, :]
                k = self.margin
                edge = (rows < k) | (rows >= h - k) | (cols < k) | (cols >= w - k)
                m &= ~edge
                if m.any():
                    keep.append(Detection(d.label, d.score, m, d.origin))
            out.append(keep)
        return out


def test_imperfect_tile_edges_do_not_reach_the_result():
    objs = random_objects(1300, 1300, 120, seed=11, r_range=(10, 45))
    rgb = draw(1300, 1300, [o for o in objs if 50 < o.row < 1200 and 50 < o.col < 1200])
    truth = untiled(rgb)
    result, _ = run_merge(rgb, 512, 64, segmenter=EdgeBlind(margin=4))
    assert len(result) == len(truth)
    assert min(match_ious(truth, result, rgb.shape[:2])) >= 0.98


class MissesTile(ColorSegmenter):
    """Sees nothing in tiles whose top-left pixels are marked grey 7."""

    def segment(self, tiles, prompts):
        return [[] if (t[:2, :2] == 7).all() else d for t, d in zip(tiles, super().segment(tiles, prompts))]


def test_pixels_owned_by_a_tile_that_missed_the_object_come_from_the_tiles_that_saw_it():
    # the disc sits in tile 1's core but wholly inside tile 0's window too
    rgb = draw(1000, 1000, [disc("red", 1, 200, 470, 12)], background=40)
    rgb[0:2, 448:450] = 7  # marks tile (0, 1), which starts at col 448 with tiles 512/64 on 1000 px
    result, plan = run_merge(rgb, 512, 64, segmenter=MissesTile(), prompts=["red"])
    assert plan.tile(1).window.col == 448
    assert len(result) == 1 and result[0].n_tiles == 1
    assert match_ious(untiled(rgb, ["red"]), result, rgb.shape[:2]) == [1.0]


class TileScored(ColorSegmenter):
    """Scores depend on the tile: (1 + tile's first pixel / 255) / 2."""

    def segment(self, tiles, prompts):
        out = []
        for t, dets in zip(tiles, super().segment(tiles, prompts)):
            s = (1 + t[0, 0, 0] / 255) / 2
            out.append([Detection(d.label, s, d.mask, d.origin) for d in dets])
        return out


def test_score_is_the_best_members_and_n_tiles_counts_the_tiles_that_saw_it():
    rgb = draw(1400, 1400, [disc("green", 1, 480, 480, 30)])  # tiles start at 0, 448, 888
    rgb[0, 0, 0], rgb[0, 448, 0], rgb[448, 0, 0], rgb[448, 448, 0] = 10, 250, 20, 30  # per-tile marks
    result, _ = run_merge(rgb, 512, 64, segmenter=TileScored(), prompts=["green"])
    assert len(result) == 1
    assert result[0].n_tiles == 4
    assert result[0].score == pytest.approx((1 + 250 / 255) / 2)


def test_pieces_are_cropped_not_full_tiles():
    from geoseg.core.tiling import plan_tiles
    from geoseg.testing import pieces_in_memory

    class FullMasks:
        """Answers with full-tile masks, as a segmenter that knows no boxes does."""

        def segment(self, tiles, prompts):
            return [[Detection("red", 0.9, tile[..., 0] >= 192)] if (tile[..., 0] >= 192).any() else []
                    for tile in tiles]

    rgb = draw(1000, 1000, [disc("red", 1, 300, 300, 10)])
    plan = plan_tiles(1000, 1000, 512, 64)
    pieces = pieces_in_memory(rgb, plan, FullMasks(), ["red"])
    # every 512 x 512 mask is kept as its object's tight box, at the object's place in the raster
    assert len(pieces) == 1 and pieces[0].mask.shape == (20, 20)
    assert (pieces[0].row, pieces[0].col) == (290, 290)
    assert np.array_equal(pieces[0].mask, rgb[290:310, 290:310, 0] >= 192)


def test_full_tile_masks_are_accepted_and_padding_never_yields_pixels():
    class Everything:
        def segment(self, tiles, prompts):
            return [[Detection("all", 1.0, np.ones(t.shape[:2], bool))] for t in tiles]

    rgb = draw(300, 200, [])
    result, plan = run_merge(rgb, 512, 64, segmenter=Everything(), prompts=["all"])
    assert len(plan) == 1 and len(result) == 1
    assert result[0].mask.shape == (300, 200) and result[0].mask.all()


# -- regions: objects composed band by band (outlines, not masks)


def both_ways(rgb, tile_size, overlap, region, segmenter=None, prompts=PROMPTS):
    """The objects merged as masks, and merged with objects past `region` px composed band by band."""
    plan = plan_tiles(rgb.shape[0], rgb.shape[1], tile_size, overlap)
    pieces = pieces_in_memory(rgb, plan, segmenter or ColorSegmenter(), prompts)
    return merge(pieces, plan), merge(pieces, plan, trace=trace, region=region)


def assert_same_objects(masks, regions, region=True):
    """Same objects, same order, same pixels, scores, tiles and levels; at least one was a region."""
    assert len(masks) == len(regions)
    for a, b in zip(masks, regions):
        assert (a.label, a.row, a.col, a.height, a.width, a.score, a.n_tiles, a.level) == \
            (b.label, b.row, b.col, b.height, b.width, b.score, b.n_tiles, b.level)
        assert np.array_equal(mask_of(a), mask_of(b))
    assert any(b.mask is None for b in regions) or not region


def u_shape(height, width, arm):
    """A U: two arms down from the top, joined along the bottom."""
    u = np.zeros((height, width), bool)
    u[:, :arm] = u[:, -arm:] = u[-arm:, :] = True
    return u


def test_a_u_closing_rows_after_it_opens_is_one_object_exact():
    objs = random_objects(1800, 1400, 80, seed=2, start=10)
    rgb = draw(1800, 1400, objs + [SceneObject("green", 1, 100, 100, u_shape(1600, 1200, 300))])  # the U on top
    masks, regions = both_ways(rgb, 256, 32, 300)
    assert_same_objects(masks, regions)
    u = [i for i in regions if i.label == "green" and i.mask is None]
    assert len(u) == 1 and u[0].outline.geom_type == "Polygon" and len(u[0].outline.interiors) == 0
    assert u[0].n_tiles > 40  # the arms were two objects for 6 rows of tiles
    assert match_ious(untiled(rgb), regions, rgb.shape[:2]) == [1.0] * len(masks)


def test_a_ring_with_its_hole_across_many_tiles_is_exact():
    rgb = draw(2000, 2000, random_objects(2000, 2000, 100, seed=3, start=10) + [ring("green", 1, 1000, 1000, 900, 350)])
    masks, regions = both_ways(rgb, 300, 40, 200)
    assert_same_objects(masks, regions)
    ring_ = next(i for i in regions if i.label == "green" and i.mask is None)
    assert ring_.n_tiles >= 36 and len(ring_.outline.interiors) == 1
    assert ring_.outline.area == masks[regions.index(ring_)].mask.sum()
    assert match_ious(untiled(rgb), regions, rgb.shape[:2]) == [1.0] * len(masks)


def test_a_region_touching_every_edge_of_the_raster_is_exact():
    # a field over the whole raster, a pond inside it (its hole) and a lake in it of another label
    rgb = draw(1500, 1300, [rectangle("blue", 1, 0, 0, 1500, 1300), ring("blue", 2, 700, 600, 300, 100),
                            disc("red", 3, 700, 600, 60)])
    masks, regions = both_ways(rgb, 256, 32, 100)
    assert_same_objects(masks, regions)
    field = next(i for i in regions if i.height == 1500)
    assert field.mask is None and field.outline.bounds == (0, 0, 1300, 1500)
    assert match_ious(untiled(rgb), regions, rgb.shape[:2]) == [1.0] * 3


class Ragged(ColorSegmenter):
    """A model whose masks differ from tile to tile: holes punched at random in
    each mask, and some masks cut in two, so that the merge takes many pixels
    from a neighbour (the owning tile missed them) and parts join rows later."""

    def segment(self, tiles, prompts):
        out = []
        for tile, tile_dets in zip(tiles, super().segment(tiles, prompts)):
            rng = np.random.default_rng(int(tile.sum()) % 2**32)
            dets = []
            for d in tile_dets:
                m = d.mask.copy()
                for y, x in zip(rng.integers(0, m.shape[0], 20), rng.integers(0, m.shape[1], 20)):
                    m[max(y - 15, 0):y + 15, max(x - 15, 0):x + 15] = False
                parts = [m]
                if rng.random() < 0.5 and m.shape[1] > 4:
                    cut = rng.integers(1, m.shape[1] - 1)
                    parts = [m.copy(), m.copy()]
                    parts[0][:, cut:] = parts[1][:, :cut] = False
                dets += [Detection(d.label, d.score * rng.uniform(0.5, 1), p, d.origin) for p in parts if p.any()]
            out.append(dets)
        return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regions_merged_band_by_band_equal_masks_merged_whole_with_a_ragged_model(seed):
    objs = random_objects(1500, 1500, 60, seed=seed, r_range=(20, 300), start=10)
    objs.append(SceneObject("green", 1, 0, 0, u_shape(1500, 1500, 200)))
    masks, regions = both_ways(draw(1500, 1500, objs), 256, 48, 150, Ragged())
    assert_same_objects(masks, regions)
    assert sum(i.mask is None for i in regions) >= 20


def test_a_region_as_tall_as_the_raster_holds_a_few_rows_of_tiles_not_all():
    rgb = draw(6000, 700, random_objects(6000, 700, 200, seed=5, start=10) + [rectangle("green", 1, 0, 100, 6000, 500)])
    plan = plan_tiles(6000, 700, 256, 32)
    pieces = pieces_in_memory(rgb, plan, ColorSegmenter(), PROMPTS)
    rows = {}
    for seq, p in enumerate(sorted(pieces, key=lambda p: p.tile)):
        rows.setdefault(p.tile // plan.shape[1], []).append(replace(p, key=(p.tile << KEY_BITS) | seq))
    held = {}  # the most rows of tiles held, and pieces of one object, once past the middle of the raster
    for region in (None, 1000):
        merger = RowMerger(plan, trace=None if region is None else trace, region=region or REGION)
        out, rows_held, members = [], 0, 0
        for t in range(plan.shape[0]):
            out += merger.add(t, rows.get(t, []))
            if t >= plan.shape[0] // 2:
                rows_held = max(rows_held, len(merger.rows))
                members = max([members] + [len(g.members) for g in merger.groups.values()])
        held[region] = rows_held, members
        tall = [i for i in out if i.height == 6000]
        assert len(tall) == 1 and mask_of(tall[0]).sum() == 6000 * 500 and (tall[0].mask is None) == bool(region)
    assert plan.shape == (27, 3)
    assert held[None][0] >= 26 and held[None][1] >= 26 * 2  # as masks: every row, every piece, until it closes
    assert held[1000][0] <= 3 and held[1000][1] <= 3 * 2  # band by band: the rows owning the bands to compose


@pytest.mark.parametrize("segmenter", [ColorSegmenter(), Ragged()])
def test_a_region_past_the_vertex_limit_comes_in_strips_along_the_rows_of_tiles_that_dissolve_into_it(segmenter):
    objs = random_objects(2000, 2000, 100, seed=3, start=10) + [ring("green", 1, 1000, 1000, 900, 350)]
    plan = plan_tiles(2000, 2000, 300, 40)
    pieces = pieces_in_memory(draw(2000, 2000, objs), plan, segmenter, PROMPTS)
    whole = merge(pieces, plan, trace=trace, region=200)
    split = merge(pieces, plan, trace=trace, region=200, split=1500)
    ring_ = max((i for i in whole if i.label == "green"), key=lambda i: i.height * i.width)
    n = int(shapely.get_num_coordinates(ring_.outline))
    assert ring_.parts == 1 and n > 3 * 1500
    at = next(k for k, i in enumerate(split) if i.parts > 1)
    strips = split[at:at + split[at].parts]
    assert [i.part for i in strips] == list(range(len(strips))) and len(strips) >= 3  # consecutive, from the top
    assert [i.parts for i in split].count(1) == len(whole) - 1  # every other object whole, as before
    others = split[:at] + split[at + len(strips):]
    assert_same_objects([i for i in whole if i is not ring_], others, region=False)
    cuts = set(plan.row_cuts)
    for above, below in zip(strips, strips[1:]):  # cut between rows of tiles, one under the other
        assert above.row + above.height == below.row and below.row in cuts
    lazy = merge(pieces, plan, trace=trace, region=200, split=1500, centres=False)  # strips made as taken
    assert [(i.part, i.parts, i.centre) for i in lazy[at:at + len(strips)]] == [(s.part, s.parts, None) for s in strips]
    assert all(a.outline.equals(b.outline) for a, b in zip(lazy[at:at + len(strips)], strips))
    centre = shapely.get_coordinates(ring_.outline.centroid)[0]  # each strip knows its whole object's centre
    for s in strips:
        assert (s.label, s.score, s.n_tiles, s.level) == (ring_.label, ring_.score, ring_.n_tiles, ring_.level)
        assert s.centre == pytest.approx(tuple(centre), abs=1e-6)
        assert shapely.get_num_coordinates(s.outline) <= 1500 + 50  # the cut adds a few corners
    # the strips share no pixel and dissolve into the object, pixel for pixel
    assert sum(s.outline.area for s in strips) == ring_.outline.area
    assert shapely.union_all([s.outline for s in strips]).equals(ring_.outline)
    painted = np.zeros((2000, 2000), bool)
    for s in strips:
        painted[s.row:s.row + s.height, s.col:s.col + s.width] |= mask_of(s)
    box = painted[ring_.row:ring_.row + ring_.height, ring_.col:ring_.col + ring_.width]
    assert np.array_equal(box, mask_of(ring_))
