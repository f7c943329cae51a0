"""Dense scenes: tiles that fill the segmenter's capacity are refined in
sub-tiles, every object comes back once and whole, at a bounded cost."""

from __future__ import annotations

import logging

import numpy as np
import pyogrio
import pytest
from conftest import one_line_error, run
from test_qgis import qgis_profile  # noqa: F401  (a fixture)

import geoseg
from geoseg.core.merge import Piece
from geoseg.core.refine import Neighbours, Refine, levels, needed
from geoseg.core.staging import TileStore
from geoseg.core.tiling import plan_tiles
from geoseg.errors import RunError, UsageError
from geoseg.io.export import read_provenance
from geoseg.io.raster import RasterSource, ReadOptions
from geoseg.run.engine import LocalEngine
from geoseg.run.progress import Progress
from geoseg.testing import CountingSegmenter, draw, make_scene, write_geotiff
from geoseg.testing.scenes import SceneObject, random_objects

PROMPTS = ["red", "green", "blue"]
TILING = dict(tile_size=256, overlap=32, cpu_workers=0)
SIZE = 1024
CAP = 40  # objects per tile and prompt the test segmenter can return


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """~3,000 small objects (radius 3-6 px) on 1024² px: ~80 per 256 px tile and prompt, twice the cap."""
    path = tmp_path_factory.mktemp("dense") / "dense.tif"
    return write_geotiff(path, draw(SIZE, SIZE, random_objects(SIZE, SIZE, 3000, seed=1, r_range=(3, 6))))


@pytest.fixture(scope="module")
def truth(dense):
    """One uncapped tile over the whole scene: every object, uncut."""
    return geoseg.segment(dense, PROMPTS, segmenter=CountingSegmenter(), tile_size=SIZE, overlap=0, cpu_workers=0)


def match(truth, result):
    """For each truth object, the IoU of the best result object of its label; and how many result
    objects overlap each truth object by more than half of the smaller."""
    ious, hits = [], []
    tree = result.sindex
    for geom, label in zip(truth.geometry, truth["label"]):
        near = result.iloc[tree.query(geom, predicate="intersects")]
        near = near[near["label"] == label]
        inter = near.geometry.intersection(geom).area
        ious.append(float((inter / near.geometry.union(geom).area).max()) if len(near) else 0.0)
        hits.append(int((inter > 0.5 * np.minimum(near.geometry.area, geom.area)).sum()))
    return np.array(ious), np.array(hits)


def test_levels_halve_the_overlap_and_two_sub_tiles_per_side_cover_the_parent():
    sizes = levels(1008, 128)
    assert sizes[:3] == [(1008, 128), (536, 64), (284, 32)]
    assert all(size >= 64 for size, _ in sizes)
    for (parent, _), (size, overlap) in zip(sizes, sizes[1:]):
        sub = plan_tiles(parent, parent, size, overlap)
        assert sub.shape == (2, 2) and sub.tile(3).window.row_stop == parent
        assert sub.row_starts[1] + overlap <= size  # neighbours overlap by at least `overlap`


def test_a_dense_scene_comes_back_whole_once_per_object_at_bounded_cost(dense, truth, caplog):
    plain = CountingSegmenter()
    geoseg.segment(dense, PROMPTS, segmenter=plain, **TILING)
    capped = CountingSegmenter(max_objects=CAP)
    with caplog.at_level(logging.INFO, logger="geoseg.run.progress"):
        got = geoseg.segment(dense, PROMPTS, segmenter=capped, progress=False, **TILING)

    assert len(truth) > 2500
    ious, hits = match(truth, got)
    assert ious.min() >= 0.98 and (hits == 1).all()
    assert len(got) == len(truth)
    assert capped.pixels <= 4 * plain.pixels  # each refined 256 px tile: 4 sub-tiles of 136 px
    assert sorted(set(capped.sizes)) == [136, 256]
    assert (got["level"] == 1).all()
    assert (got["n_tiles"] > 1).sum() > 100  # many objects lie across tile seams
    # and many across the edges between sub-tiles' cores (at 128 px into each 256 px tile)
    rows = (got.geometry.bounds[["miny", "maxy"]].to_numpy() - 3286000.0) / -0.5
    starts = np.asarray(plan_tiles(SIZE, SIZE, 256, 32).row_starts)
    cut = (starts + 128)[None, :]
    across = ((rows[:, 1:2] < cut) & (rows[:, 0:1] > cut)).any(axis=1)
    assert across.sum() > 50
    meta = got.attrs["geoseg"]
    assert meta["refined"] == {"tiles": 25, "sub_tiles": 100, "deepest_level": 1}
    assert meta["refine"]["max_objects"] == CAP
    assert any("25/25 tiles (+100 sub-tiles)" in r.getMessage() for r in caplog.records)


def test_without_refinement_the_capped_segmenter_loses_objects_and_says_where(dense, truth, caplog):
    with caplog.at_level(logging.WARNING, logger="geoseg"):
        got = geoseg.segment(dense, PROMPTS, segmenter=CountingSegmenter(max_objects=CAP), refine_depth=0, **TILING)
    assert len(got) < 0.8 * len(truth)
    warned = [r.getMessage() for r in caplog.records if "still saturated" in r.getMessage()]
    assert len(warned) == 6  # five tiles, then how many more
    assert "x=404064.0, y=3285936.0 EPSG:32617" in warned[0] and "refine_depth=" in warned[0]
    assert "20 more tiles" in warned[-1]


def test_a_sparse_scene_costs_exactly_the_plain_plan(tmp_path):
    scene = make_scene(tmp_path / "sparse.tif", size=1200, seed=3)
    plain, capped = CountingSegmenter(), CountingSegmenter(max_objects=CAP)
    want = geoseg.segment(scene, PROMPTS, segmenter=plain, **TILING)
    got = geoseg.segment(scene, PROMPTS, segmenter=capped, **TILING)
    assert capped.tiles == plain.tiles == 36 and capped.pixels == plain.pixels == 36 * 256**2
    assert got.geometry.geom_equals_exact(want.geometry, tolerance=0).all() and (got["level"] == 0).all()
    assert got.attrs["geoseg"]["refined"] == {"tiles": 0, "sub_tiles": 0, "deepest_level": 0}


class Recording(CountingSegmenter):
    """Records each call's tile size and prompts."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = []

    def segment(self, tiles, prompts):
        self.calls.append((tiles.shape[1], tuple(prompts)))
        return super().segment(tiles, prompts)


def test_only_the_prompts_that_saturated_run_again(tmp_path):
    """Dense red objects over sparse green ones: only "red" goes to the sub-tiles."""
    objs = random_objects(SIZE, SIZE, 3000, seed=2, r_range=(3, 6))
    objs = [o for o in objs if o.label == "red"] + [o for o in objs if o.label == "green"][:60]
    scene = write_geotiff(tmp_path / "red.tif", draw(SIZE, SIZE, objs))
    seg = Recording(max_objects=CAP)
    got = geoseg.segment(scene, ["red", "green"], segmenter=seg, **TILING)
    assert {p for size, p in seg.calls if size == 136} == {("red",)}
    want = geoseg.segment(scene, ["red", "green"], segmenter=CountingSegmenter(), tile_size=SIZE, overlap=0,
                          cpu_workers=0)
    ious, hits = match(want, got)
    assert len(got) == len(want) and ious.min() >= 0.98 and (hits == 1).all()
    assert set(got.loc[got["label"] == "green", "level"]) == {0}
    assert set(got.loc[got["label"] == "red", "level"]) == {1}


def test_zoom_starts_every_tile_in_sub_tiles(dense, truth):
    seg = CountingSegmenter(max_objects=CAP)
    got = geoseg.segment(dense, PROMPTS, segmenter=seg, zoom=1, **TILING)
    assert set(seg.sizes) == {136} and seg.tiles == 100
    ious, hits = match(truth, got)
    assert len(got) == len(truth) and ious.min() >= 0.98 and (hits == 1).all()
    assert (got["level"] == 1).all()


def test_the_deepest_level_is_a_limit(tmp_path, caplog):
    """So dense that the 136 px sub-tiles saturate too: level 2 (72 px) finds the rest; with depth 1, a warning."""
    objs = random_objects(512, 512, 3000, seed=4, r_range=(2, 3))
    scene = write_geotiff(tmp_path / "denser.tif", draw(512, 512, objs))
    truth = geoseg.segment(scene, PROMPTS, segmenter=CountingSegmenter(), tile_size=512, overlap=0, cpu_workers=0)
    deep = geoseg.segment(scene, PROMPTS, segmenter=CountingSegmenter(max_objects=CAP), **TILING)
    assert deep.attrs["geoseg"]["refined"]["deepest_level"] == 2
    ious, hits = match(truth, deep)
    assert len(deep) == len(truth) and ious.min() >= 0.98 and (hits == 1).all()
    with caplog.at_level(logging.WARNING, logger="geoseg"):
        shallow = geoseg.segment(scene, PROMPTS, segmenter=CountingSegmenter(max_objects=CAP), refine_depth=1,
                                 **TILING)
    assert len(shallow) < len(truth)
    assert any("still saturated" in r.getMessage() for r in caplog.records)


def test_a_run_killed_while_refining_resumes_to_the_same_output(dense, tmp_path):
    out = tmp_path / "dense.gpkg"
    want = geoseg.segment(dense, PROMPTS, segmenter=CountingSegmenter(max_objects=CAP), **TILING)
    failing = CountingSegmenter(max_objects=CAP, fail_after=40, batch_size=2)  # inside the 3rd tile's sub-tiles
    with pytest.raises(RunError, match="fell over"):
        geoseg.segment(dense, PROMPTS, segmenter=failing, output=out, **TILING)
    again = CountingSegmenter(max_objects=CAP, batch_size=2)
    got = geoseg.segment(dense, PROMPTS, segmenter=again, output=out, **TILING)
    assert again.tiles < 125  # the tiles staged before the failure are not segmented again
    back = pyogrio.read_dataframe(out)
    assert len(back) == len(want) and got.geometry.geom_equals_exact(want.geometry, tolerance=0).all()
    assert (back["level"].to_numpy() == want["level"].to_numpy()).all()
    assert read_provenance(out)["refined"] == {"tiles": 25, "sub_tiles": 100, "deepest_level": 1}


@pytest.fixture(scope="module")
def half(tmp_path_factory):
    """Sparse above row 480 (a few objects), dense below row 496 (~90 objects per 256 px tile and prompt)."""
    sparse = [o for o in random_objects(470, SIZE, 60, seed=5, r_range=(4, 8))]
    dense = [SceneObject(o.label, 1000 + o.number, o.row + 500, o.col, o.mask)
             for o in random_objects(SIZE - 510, SIZE, 2400, seed=6, r_range=(3, 6))]
    path = tmp_path_factory.mktemp("half") / "half.tif"
    return write_geotiff(path, draw(SIZE, SIZE, sparse + dense))


def staged_costs(scene, **refine):
    """Stage every tile of `scene` with the capped segmenter: per tile, (forward passes, pixels)."""
    plan = plan_tiles(SIZE, SIZE, 256, 32)
    progress = Progress(bars=False)
    progress.start("half", len(plan), 0, 0.0)
    with TileStore(":memory:") as store, RasterSource(scene, ReadOptions()) as src:
        LocalEngine(CountingSegmenter(max_objects=CAP)).stage(
            src, plan, list(range(len(plan))), PROMPTS, store, progress,
            refine=Refine.of(tile_size=256, overlap=32, **refine))
        return store.costs(), plan


def test_neighbour_start_pays_only_the_passes_a_dense_half_needs(half, tmp_path, caplog):
    costs, plan = staged_costs(half)
    cascade, _ = staged_costs(half, neighbours=False)
    sparse = [k for k in range(len(plan)) if plan.tile(k).window.row_stop <= 480]
    dense = [k for k in range(len(plan)) if plan.tile(k).window.row >= 496]
    assert len(sparse) == 10 and len(dense) == 10
    # the sparse half costs exactly the plain plan: one pass of its own pixels per tile
    assert all(costs[k] == (1, 256 * 256) for k in sparse)
    # the dense half: fewer passes than the cascade (no coarse pass thrown away after the first tile)
    assert sum(costs[k][0] for k in dense) < sum(cascade[k][0] for k in dense)
    assert all(costs[k][0] <= cascade[k][0] for k in dense)
    # and exact: every object of the untiled truth once, whole
    truth = geoseg.segment(half, PROMPTS, segmenter=CountingSegmenter(), tile_size=SIZE, overlap=0, cpu_workers=0)
    out = tmp_path / "half.gpkg"
    with caplog.at_level(logging.INFO, logger="geoseg"):
        got = geoseg.segment(half, PROMPTS, segmenter=CountingSegmenter(max_objects=CAP), output=out, **TILING)
    passes = sum(n for n, _ in costs.values())
    assert any("25/25 tiles (+" in r.getMessage() and f"(100 %), {passes} forward passes" in r.getMessage()
               for r in caplog.records)  # the progress line says what the model was given
    ious, hits = match(truth, got)
    assert len(got) == len(truth) and ious.min() >= 0.98 and (hits == 1).all()
    meta = got.attrs["geoseg"]
    assert meta["refine"]["neighbour_start"] is True
    assert meta["cost"] == {"forward_passes": passes, "pixels": sum(px for _, px in costs.values())}
    # the same output on a second run, and after a run killed while refining the dense half
    again = geoseg.segment(half, PROMPTS, segmenter=CountingSegmenter(max_objects=CAP), **TILING)
    assert_identical(again, got)
    resumed = tmp_path / "resumed.gpkg"
    with pytest.raises(RunError, match="fell over"):
        geoseg.segment(half, PROMPTS, segmenter=CountingSegmenter(max_objects=CAP, fail_after=30, batch_size=2),
                       output=resumed, **TILING)
    with pytest.raises(UsageError, match="neighbour_start=True, this run has neighbour_start=False"):
        geoseg.segment(half, PROMPTS, segmenter=CountingSegmenter(max_objects=CAP), output=resumed,
                       neighbour_start=False, **TILING)  # the start levels decide what is staged
    finish = CountingSegmenter(max_objects=CAP, batch_size=2)
    geoseg.segment(half, PROMPTS, segmenter=finish, output=resumed, **TILING)
    assert finish.tiles < passes  # what was staged is not segmented again
    assert_identical(pyogrio.read_dataframe(resumed), pyogrio.read_dataframe(out))
    assert read_provenance(resumed)["cost"] == meta["cost"]


def assert_identical(a, b):
    assert len(a) == len(b)
    assert (a["id"].to_numpy() == b["id"].to_numpy()).all() and (a["level"].to_numpy() == b["level"].to_numpy()).all()
    assert a.geometry.geom_equals_exact(b.geometry, tolerance=0).all()


def test_a_tile_starts_where_its_finished_neighbours_ended():
    # the three tiles above it, or in the first row the one to its left; never one not yet done
    nb = Neighbours((3, 4), {0: {"red": 2}, 1: {"red": 0, "green": 1}})
    assert nb.of(2) == [1] and nb.of(5) == [0, 1, 2] and nb.of(4) == [0, 1] and nb.of(7) == [2, 3]
    assert nb.ready(2) and not nb.ready(5)
    nb.add(2, {})
    # the level all of them needed: starting too deep costs far more passes than starting too shallow
    assert nb.ready(5) and nb.start(5) == {"red": 0, "green": 0} and not nb.ready(6)
    nb.add(3, {"green": 2})
    nb.add(4, {"red": 2, "green": 2})
    assert nb.start(6) == {"red": 0, "green": 0} and nb.start(2) == {"red": 0, "green": 1}
    nb.add(5, {"red": 1, "green": 2})
    assert nb.start(0) == {} and nb.start(8) == {"red": 1, "green": 2}


def test_needed_is_the_level_every_part_of_the_tile_needed():
    plan = plan_tiles(256, 256, 256, 32)
    sizes = levels(256, 32)  # 256, 136 and 76 px

    def grid(step, stop=256):
        return [Piece("red", 0.9, 0, r, c, np.ones((3, 3), bool)) for r in range(0, stop, step)
                for c in range(0, stop, step)]

    # 100 objects in one corner: the tile is full, but three of its four sub-tiles are empty: level 1
    # (the corner's sub-tile refines further by itself); 4 objects need nothing
    assert needed(grid(6, 60), plan.tile(0), ["red", "green"], sizes, 32) == {"red": 1, "green": 0}
    # 1,024 objects all over: every 136 px sub-tile holds >= 32, so level 2 everywhere
    assert needed(grid(8), plan.tile(0), ["red"], sizes, 32) == {"red": 2}
    # 49 objects all over: full as a tile, not in any sub-tile
    assert needed(grid(40), plan.tile(0), ["red"], sizes, 32) == {"red": 1}


def test_dask_workers_refine_as_this_process_does(dense):
    from geoseg.run.distributed import DaskEngine, connect
    from geoseg.run.pipeline import run as run_pipeline
    from geoseg.run.settings import Settings

    want = geoseg.segment(dense, PROMPTS, segmenter=CountingSegmenter(max_objects=CAP), **TILING)
    settings = Settings.of(PROMPTS, tile_size=256, overlap=32, cpu_workers=0)
    with connect(workers=1) as client:
        summary = run_pipeline([dense], settings, DaskEngine(client, CountingSegmenter(max_objects=CAP), block=5),
                               collect=True)
    got = summary.frame
    assert summary.files[0].refined == (25, 100, 1)
    assert got.geometry.geom_equals_exact(want.geometry, tolerance=0).all()
    assert (got["level"].to_numpy() == want["level"].to_numpy()).all()


class Encoding(CountingSegmenter):
    """A backend with vision features (the tile itself), counting the tiles encoded."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.encoded = 0

    def vision_features(self, tiles):
        self.encoded += len(tiles)
        return [t.copy() for t in tiles]

    def segment_features(self, features, prompts):
        return self.segment(np.stack(features), prompts)


def test_a_session_refines_and_keeps_the_sub_tiles_features(dense, truth):
    seg = Encoding(max_objects=CAP)
    session = geoseg.Segmentation(dense, segmenter=seg, tile_size=256, overlap=32)
    first = session.segment(PROMPTS)
    assert seg.encoded == 125  # 25 tiles and the 100 sub-tiles of the refined ones
    again = session.segment(PROMPTS)
    assert seg.encoded == 125  # no tile nor sub-tile encoded twice
    ious, hits = match(truth, first)
    assert len(first) == len(truth) and ious.min() >= 0.98 and (hits == 1).all()
    assert again.geometry.geom_equals_exact(first.geometry, tolerance=0).all()


def test_bad_refinement_options_are_one_line_errors(dense, tmp_path):
    with pytest.raises(UsageError, match=r"saturation=0 must be in \(0, 1\]"):
        Refine.of(saturation=0)
    line = one_line_error(run("segment", dense, "-p", "red", "--backend", "colors", "--tile-size", "256",
                              "--zoom", "4", "-o", tmp_path / "o.gpkg"))
    assert "--zoom 4 would make sub-tiles smaller than 64 px from --tile-size 256: use --zoom 2 at most" in line
    assert not list(tmp_path.iterdir())


def test_tiny_sam3_reads_its_capacity_from_its_config_and_refines(tmp_path, caplog):
    pytest.importorskip("torch")
    from geoseg.backends.sam3 import Sam3Segmenter
    from geoseg.testing import build_tiny_sam3

    sam = Sam3Segmenter(model=str(build_tiny_sam3(tmp_path / "tiny")), device="cpu", score_threshold=0.3)
    assert sam.max_objects == sam.model.config.detr_decoder_config.num_queries == 16
    seen = []
    encoder = sam.model.get_vision_features

    def spy(*args, **kwargs):
        seen.append(tuple(kwargs["pixel_values"].shape))
        return encoder(*args, **kwargs)

    sam.model.get_vision_features = spy
    with caplog.at_level(logging.INFO, logger="geoseg"):
        got = geoseg.segment("sample_data/OSBS_029.tif", "tree", segmenter=sam, tile_size=256, overlap=32,
                             saturation=0.25, refine_depth=1, cpu_workers=0, neighbour_start=False)
    refined = got.attrs["geoseg"]["refined"]
    assert got.attrs["geoseg"]["refine"]["max_objects"] == 16
    assert refined["tiles"] > 0 and refined["deepest_level"] == 1
    assert sum(n for n, *_ in seen) == 4 + refined["sub_tiles"]  # 4 tiles, then the sub-tiles of saturated ones
    assert {shape[2:] for shape in seen} == {(1008, 1008)}  # 256 and 136 px tiles, both at the model's input size
    assert set(got["level"]) <= {0, 1} and (got["level"] == 1).any()
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"(+{refined['sub_tiles']} sub-tiles)" in m for m in messages)
    # the forward passes counted are the images the vision encoder saw; starting where the
    # neighbours ended never costs more
    cascade = got.attrs["geoseg"]["cost"]["forward_passes"]
    assert cascade == sum(n for n, *_ in seen)
    seen.clear()
    again = geoseg.segment("sample_data/OSBS_029.tif", "tree", segmenter=sam, tile_size=256, overlap=32,
                           saturation=0.25, refine_depth=1, cpu_workers=0)
    assert again.attrs["geoseg"]["refine"]["neighbour_start"] is True
    assert again.attrs["geoseg"]["cost"]["forward_passes"] == sum(n for n, *_ in seen) <= cascade


def test_info_shows_how_large_objects_look_to_the_model_and_the_zoom_to_use():
    import json

    text = run("info", "sample_data/OSBS_029.tif", "--object-size", "0.4")  # 0.1 m pixels: 4 px
    assert text.exit_code == 0, text.output
    assert "0.4 m = 4 px = 4 at level 0, 7.5 at level 1, 14.2 at level 2, 26.9 at level 3" in text.output
    assert "use --zoom 3" in text.output
    out = run("info", "sample_data/OSBS_029.tif", "--object-size", "2", "--tile-size", "256", "--overlap", "32",
              "--json")
    size = json.loads(out.output)["rasters"][0]["object_size"]
    assert size["pixels"] == 20 and size["zoom"] == 0
    assert [s["tile_px"] for s in size["levels"]] == [256, 136, 72]
    line = one_line_error(run("info", "sample_data/OSBS_029.tif", "--object-size", "2", "--pixel-coords"))
    assert "has no CRS, so its pixels have no size in metres" in line


@pytest.mark.qgis
def test_qgis_runs_with_zoom_and_refinement_depth(qgis_profile, dense, truth, tmp_path):  # noqa: F811
    from test_qgis import run_in_qgis

    out = tmp_path / "zoom.gpkg"
    got = run_in_qgis(qgis_profile, {"INPUT": dense, "PROMPTS": "red,green,blue", "BACKEND": "colors",
                                     "TILE_SIZE": 256, "OVERLAP": 32, "ZOOM": 1, "REFINE_DEPTH": 0,
                                     "OUTPUT": str(out)})
    assert got["error"] is None and got["count"] == len(truth), got
    back = pyogrio.read_dataframe(out)
    assert (back["level"] == 1).all()
    meta = read_provenance(out, "zoom")["refine"]
    assert (meta["zoom"], meta["depth"]) == (1, 0)
