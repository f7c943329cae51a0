"""Exemplars: boxes drawn on the map, in one tile, find their kind on every tile of every raster.

The colors test backend reads a box as the colour family with the most object
pixels in it, so a scene with known truth shows what the boxes find.
"""

from __future__ import annotations

import json
import os
import re

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from affine import Affine
from conftest import one_line_error, run
from test_mosaic import matches

import geoseg
from geoseg.core.exemplars import Exemplars, Shot, WithExemplars, centrality, concepts, home_tile
from geoseg.core.tiling import plan_tiles
from geoseg.errors import UsageError
from geoseg.testing import ColorSegmenter, draw, write_geotiff
from geoseg.testing.scenes import random_objects

SIZE, TILE, OVERLAP = 768, 192, 32  # 5 x 5 tiles
ORIGIN = Affine(0.5, 0, 404000.0, 0, -0.5, 3286000.0)
CRS = "EPSG:32617"


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A scene of the three families across the tiles; its objects; the untiled truth of each family."""
    d = tmp_path_factory.mktemp("exemplars")
    objs = random_objects(SIZE, SIZE, 70, seed=11, r_range=(10, 36))
    rgb = draw(SIZE, SIZE, objs)
    path = write_geotiff(d / "scene.tif", rgb, transform=ORIGIN)
    truth = {}
    for family in ("red", "green", "blue"):
        truth[family] = geoseg.segment(path, family, segmenter=ColorSegmenter(), tile_size=SIZE, overlap=0)
    return d, path, objs, rgb, truth


def box_of(objs, label, number=0, pad=2):
    """The map box (EPSG:32617) around the `number`-th object of `label` lying inside the scene."""
    inside = [o for o in objs if o.label == label and o.row > pad and o.col > pad
              and o.row + o.mask.shape[0] + pad < SIZE and o.col + o.mask.shape[1] + pad < SIZE]
    o = inside[number]
    x0, y0 = ORIGIN @ (o.col - pad, o.row - pad)
    x1, y1 = ORIGIN @ (o.col + o.mask.shape[1] + pad, o.row + o.mask.shape[0] + pad)
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def write_boxes(path, boxes, crs="EPSG:4326", **columns):
    """Boxes (in EPSG:32617) written in `crs` with `columns`: a real vector file."""
    gpd.GeoDataFrame(columns, geometry=boxes, crs=CRS).to_crs(crs).to_file(path)
    return path


def segment(*args):
    return run("segment", *args, "--backend", "colors", "--tile-size", TILE, "--overlap", OVERLAP, "-q")


def relabel(truth, label):
    truth = truth.copy()
    truth["label"] = label
    return truth


def assert_found(result, truth):
    """Every object of the truth found once and whole, nothing else."""
    assert len(result) == len(truth)
    assert matches(truth, result).min() >= 0.98


# -- the scene ------------------------------------------------------------------------


def test_boxes_in_one_tile_find_their_family_on_every_tile(scene, tmp_path):
    d, path, objs, _, truth = scene
    boxes = write_boxes(tmp_path / "boxes.gpkg", [box_of(objs, "blue", 0), box_of(objs, "blue", 1)],
                        prompt=["mine", "mine"])
    r = segment(path, "--exemplars", boxes, "-o", tmp_path / "out.gpkg")
    assert r.exit_code == 0, r.output
    out = pyogrio.read_dataframe(tmp_path / "out.gpkg")
    assert set(out["label"]) == {"mine"}  # no other family
    assert (out["n_tiles"] > 1).any()  # objects astride seams, whole
    assert_found(out, relabel(truth["blue"], "mine"))


def test_a_negative_box_takes_a_family_away(scene, tmp_path):
    d, path, objs, _, truth = scene
    boxes = write_boxes(tmp_path / "boxes.geojson", [box_of(objs, "blue"), box_of(objs, "red"), box_of(objs, "red", 1)],
                        positive=[True, True, False])
    r = segment(path, "--exemplars", boxes, "-o", tmp_path / "out.gpkg")
    assert r.exit_code == 0, r.output
    out = pyogrio.read_dataframe(tmp_path / "out.gpkg")
    assert_found(out, relabel(truth["blue"], "exemplar"))  # boxes without a prompt and no -p: "exemplar"


def test_boxes_add_to_text_prompts(scene, tmp_path):
    d, path, objs, _, truth = scene
    boxes = write_boxes(tmp_path / "boxes.gpkg", [box_of(objs, "blue"), box_of(objs, "green", 2)],
                        prompt=["red", None])
    gdf = geoseg.segment(path, ["red", "green"], segmenter="colors", exemplars=boxes, tile_size=TILE,
                         overlap=OVERLAP)
    # red: its text and its box (blue); the box without a prompt serves both, and adds green to green
    red = gdf[gdf["label"] == "red"]
    geoms = [*truth["red"].geometry, *truth["blue"].geometry, *truth["green"].geometry]
    want = gpd.GeoDataFrame({"label": ["red"] * len(geoms)}, geometry=geoms, crs=gdf.crs)
    assert_found(red, want)
    assert_found(gdf[gdf["label"] == "green"], truth["green"])
    assert gdf.attrs["geoseg"]["prompts"] == ["red", "green"]
    assert gdf.attrs["geoseg"]["exemplars"].startswith("boxes.gpkg (")


def test_mosaic_of_files_and_dask(scene, tmp_path):
    from geoseg.run import pipeline
    from geoseg.run.distributed import DaskEngine, connect

    d, path, objs, rgb, truth = scene
    files = tmp_path / "files"
    files.mkdir()
    step = SIZE // 3
    for i in range(3):
        for j in range(3):
            write_geotiff(files / f"t{i}{j}.tif", rgb[i * step:(i + 1) * step, j * step:(j + 1) * step],
                          transform=ORIGIN @ Affine.translation(j * step, i * step))
    boxes = write_boxes(tmp_path / "boxes.gpkg", [box_of(objs, "green", 3)], prompt=["roofs"])
    r = segment(files, "--mosaic", "--exemplars", boxes, "-o", tmp_path / "mosaic.gpkg")
    assert r.exit_code == 0, r.output
    want = relabel(truth["green"], "roofs")
    assert_found(pyogrio.read_dataframe(tmp_path / "mosaic.gpkg"), want)

    # file shards: the box lies in one file, in one shard; the other shard uses it too
    (tmp_path / "shards").mkdir()
    for k in (1, 2):
        r = segment(files, "--exemplars", boxes, "--shard", f"{k}/2", "--output-dir", tmp_path / "shards")
        assert r.exit_code == 0, r.output
    parts = [pyogrio.read_dataframe(p) for p in sorted((tmp_path / "shards").glob("*.gpkg"))]
    assert len(parts) == 9 and sum(map(len, parts)) >= len(want)  # objects on file edges: in parts
    assert {lab for p in parts for lab in p["label"]} == {"roofs"}

    # the mosaic's rows in two shards, combined: each shard used the box
    (tmp_path / "rows").mkdir()
    for k in (1, 2):
        r = segment(files, "--mosaic", "--exemplars", boxes, "--shard", f"{k}/2", "--output-dir", tmp_path / "rows")
        assert r.exit_code == 0, r.output
    r = run("combine", tmp_path / "rows", "-o", tmp_path / "combined.gpkg")
    assert r.exit_code == 0, r.output
    assert_found(pyogrio.read_dataframe(tmp_path / "combined.gpkg"), want)

    client = connect(workers=2)
    try:
        settings = pipeline.Settings.of(None, tile_size=TILE, overlap=OVERLAP, exemplars=boxes)
        engine = DaskEngine(client, "colors", block=3)
        summary = pipeline.run([path], settings, engine, output=tmp_path / "dask.gpkg")
        assert not summary.failed
        assert_found(pyogrio.read_dataframe(tmp_path / "dask.gpkg"), want)
        # each worker that segmented encoded the box once (level 0 only), and kept the tokens
        kept = client.run(lambda: [len(w.cache) for w in __import__(
            "geoseg.run.distributed").run.distributed._EXEMPLARS.values()])
        assert sum(map(sum, kept.values())) >= 1 and all(n <= 1 for ns in kept.values() for n in ns)
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()


def test_aoi_label_raster_and_info(scene, tmp_path):
    d, path, objs, _, truth = scene
    box = box_of(objs, "blue")
    boxes = write_boxes(tmp_path / "boxes.gpkg", [box], prompt=["mine"])
    left = (~ORIGIN @ (box.centroid.x, box.centroid.y))[0] < SIZE / 2
    cols = (SIZE // 2, SIZE) if left else (0, SIZE // 2)
    far = shapely.box(*ORIGIN @ (cols[0], SIZE), *ORIGIN @ (cols[1], 0))  # the half without the box
    assert not far.intersects(box)
    aoi = write_boxes(tmp_path / "aoi.gpkg", [far])
    r = segment(path, "-p", "red", "--exemplars", boxes, "--aoi", aoi, "-o", tmp_path / "out.gpkg",
                "--raster-out", tmp_path / "labels.tif", "--raster-values", "class")
    assert r.exit_code == 0, r.output
    out = pyogrio.read_dataframe(tmp_path / "out.gpkg")
    assert set(out["label"]) == {"red", "mine"} and out.geometry.centroid.within(
        gpd.GeoSeries([far], crs=CRS).iloc[0]).all()
    import rasterio

    with rasterio.open(tmp_path / "labels.tif") as src:
        assert set(np.unique(src.read(1))) == {0, 1, 2}  # red, then mine

    r = run("info", path, "--exemplars", boxes, "--tile-size", TILE, "--overlap", OVERLAP, "--json")
    assert r.exit_code == 0, r.output
    (placed,) = json.loads(r.output)["exemplars"]
    assert placed["prompt"] == "mine" and placed["positive"] and placed["source"] == "scene.tif"
    assert 0 <= placed["tile"] < 25 and min(placed["model_px"]) > 40
    text = run("info", path, "--exemplars", boxes, "--tile-size", TILE, "--overlap", OVERLAP)
    assert text.exit_code == 0 and "box 1" in text.output and "model px" in text.output


# -- encoding once per box and level --------------------------------------------------


class CountingEncoder(ColorSegmenter):
    """The colors backend capped at `max_objects`, counting the boxes it encodes at each tile size."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.max_objects = 2
        self.encoded: list[tuple[int, int]] = []  # (tile side, boxes)

    def encode_exemplars(self, tile, boxes, positive):
        self.encoded.append((tile.shape[0], len(boxes)))
        return super().encode_exemplars(tile, boxes, positive)


def test_tokens_are_encoded_once_per_box_and_level(scene, tmp_path):
    d, path, objs, _, truth = scene
    boxes = write_boxes(tmp_path / "boxes.gpkg", [box_of(objs, "blue", k) for k in range(3)], prompt=["mine"] * 3)
    seg = CountingEncoder()
    # at most 2 objects per call: tiles saturate, and are refined
    gdf = geoseg.segment(path, segmenter=seg, exemplars=boxes, tile_size=TILE, overlap=OVERLAP, saturation=1.0)
    sizes = sorted({s for s, _ in seg.encoded}, reverse=True)
    assert sizes == [TILE, 104]  # the plan's tiles and their sub-tiles (the last level of 192 px tiles)
    for size in sizes:
        assert sum(n for s, n in seg.encoded if s == size) == 3  # each box once at each level
    assert len(gdf) and set(gdf["label"]) == {"mine"}

    # a box without a prompt serves both prompts: still encoded once
    seg = CountingEncoder()
    seg.max_objects = None
    boxes = write_boxes(tmp_path / "one.gpkg", [box_of(objs, "blue")])
    geoseg.segment(path, ["red", "green"], segmenter=seg, exemplars=boxes, tile_size=TILE, overlap=OVERLAP)
    assert seg.encoded == [(TILE, 1)]


def test_a_session_keeps_the_tokens(scene, tmp_path):
    d, path, objs, _, truth = scene
    boxes = write_boxes(tmp_path / "boxes.gpkg", [box_of(objs, "red")], prompt=["mine"])
    seg = CountingEncoder()
    seg.max_objects = None
    session = geoseg.Segmentation(path, segmenter=seg, exemplars=boxes, tile_size=TILE, overlap=OVERLAP)
    first = session.segment()
    again = session.segment(["green"])
    assert_found(first, relabel(truth["red"], "mine"))
    assert set(again["label"]) == {"green", "mine"}
    assert seg.encoded == [(TILE, 1)]  # once in the session


def test_concepts():
    labels, only, serves = concepts(["a", "b"], ["a", None, "c", "c"], [True, True, True, False], "f")
    assert labels == ["a", "b", "c"] and only == ["c"]
    assert serves == [("a",), ("a", "b"), ("c",), ("c",)]
    with pytest.raises(UsageError, match="prompt 'c' has negative boxes only"):
        concepts(["a"], ["c"], [False], "f")
    assert concepts([], [None], [True], "f")[0] == ["exemplar"]


def test_home_tile_is_the_most_central():
    rng = np.random.default_rng(0)
    for _ in range(50):
        plan = plan_tiles(int(rng.integers(300, 2000)), int(rng.integers(300, 2000)), 256, 32)
        x0, y0 = rng.uniform(0, plan.width - 60), rng.uniform(0, plan.height - 60)
        box = (x0, y0, x0 + rng.uniform(1, 60), y0 + rng.uniform(1, 60))
        margins = [centrality(box, (t.window.row, t.window.col, 256, 256)) for t in plan]
        assert margins[home_tile(box, plan)] == max(margins)


def test_groups_place_each_box_on_its_most_central_sub_tile():
    rgb = np.zeros((TILE, TILE, 3), np.uint8)
    shot = Shot(rgb, np.array([[150.0, 150, 170, 170], [0, 0, TILE, TILE]]), np.array([True, True]), (("a",), ("a",)))
    ex = Exemplars((shot,), ("a",), TILE, OVERLAP)
    level1 = ex.groups(1)
    sides = sorted(g[2].shape[0] for g in level1)
    assert sides == [104, 104]  # two sub-tiles of ceil((192 + 16) / 2) px
    (whole,) = [g[3][0] for g in level1 if g[3][0][2] - g[3][0][0] > 50]
    assert whole.tolist() == [0, 0, 104, 104]  # a box larger than the sub-tile is clipped to it
    wrapped = WithExemplars(ColorSegmenter(), ex)
    with pytest.raises(UsageError, match="no level"):
        wrapped.segment(np.zeros((1, 100, 100, 3), np.uint8), ["a"])


# -- refusals, before the model loads -------------------------------------------------


@pytest.fixture
def bad(scene, tmp_path):
    d, path, objs, _, _ = scene
    return path, objs, tmp_path


def test_a_box_outside_every_input(bad):
    path, objs, tmp = bad
    far = shapely.affinity.translate(box_of(objs, "red"), 10_000, 0)
    line = one_line_error(segment(path, "--exemplars", write_boxes(tmp / "b.gpkg", [far]), "-o", tmp / "o.gpkg"))
    assert "box 1" in line and "outside every input" in line


def test_a_box_too_small_or_larger_than_a_tile(bad):
    path, objs, tmp = bad
    x, y = ORIGIN @ (300, 300)
    tiny = shapely.box(x, y - 0.25, x + 0.25, y)  # half a pixel
    line = one_line_error(segment(path, "--exemplars", write_boxes(tmp / "s.gpkg", [tiny]), "-o", tmp / "o.gpkg"))
    assert "model pixels across" in line and "--zoom" in line
    huge = shapely.box(x, y - 150, x + 150, y)  # 300 px, the tiles are 192
    line = one_line_error(segment(path, "--exemplars", write_boxes(tmp / "h.gpkg", [huge]), "-o", tmp / "o.gpkg"))
    assert "larger than a tile" in line and "--tile-size" in line


def test_negative_boxes_only(bad):
    path, objs, tmp = bad
    boxes = write_boxes(tmp / "n.gpkg", [box_of(objs, "red")], prompt=["sheds"], positive=[False])
    line = one_line_error(segment(path, "--exemplars", boxes, "-o", tmp / "o.gpkg"))
    assert "prompt 'sheds' has negative boxes only" in line


def test_unreadable_file_and_positive_not_boolean(bad):
    path, objs, tmp = bad
    (tmp / "junk.gpkg").write_bytes(b"not a geopackage")
    line = one_line_error(segment(path, "--exemplars", tmp / "junk.gpkg", "-o", tmp / "o.gpkg"))
    assert "--exemplars" in line and "not a readable vector file" in line
    boxes = write_boxes(tmp / "p.gpkg", [box_of(objs, "red")], positive=["yes"])
    line = one_line_error(segment(path, "--exemplars", boxes, "-o", tmp / "o.gpkg"))
    assert "positive column is not boolean" in line


def test_no_prompt_and_no_exemplars(bad):
    path, _, tmp = bad
    line = one_line_error(segment(path, "-o", tmp / "o.gpkg"))
    assert "no prompt given" in line


def test_a_segmenter_that_takes_no_exemplars(bad):
    path, objs, tmp = bad

    class Plain:
        def segment(self, tiles, prompts):
            return [[] for _ in tiles]

    boxes = write_boxes(tmp / "b.gpkg", [box_of(objs, "red")])
    with pytest.raises(UsageError, match="the Plain segmenter takes no exemplars"):
        geoseg.segment(path, segmenter=Plain(), exemplars=boxes)


def test_resume_refuses_a_changed_exemplar_file(tmp_path):
    from test_resume import one_good_one_bad

    folder, out = one_good_one_bad(tmp_path)
    x, y = ORIGIN @ (100, 100)
    boxes = write_boxes(tmp_path / "b.gpkg", [shapely.box(x, y - 10, x + 10, y)], prompt=["mine"])
    args = [folder, "--exemplars", boxes, "--output-dir", out, "-q", "--tile-size", 128, "--overlap", 16]
    first = run("segment", *args, "--backend", "colors")
    assert first.exit_code == 1  # b.tif failed: the work folder is kept
    write_boxes(boxes, [shapely.box(x, y - 12, x + 12, y)], prompt=["mine"])
    # refused before the (missing) model is looked for
    line = one_line_error(run("segment", *args, "--backend", "sam3", "--model", tmp_path / "none"))
    assert "made with --exemplars b.gpkg (" in line and "--restart" in line


# -- hostile files: one line, exit 2, before the model loads; geoseg's own errors from Python

def hostile(tmp, objs):
    """(name, file, words the refusal says): the shapes of a file geoseg cannot use."""
    good = box_of(objs, "red")
    x, y = good.centroid.x, good.centroid.y
    frame = gpd.GeoDataFrame
    out = []
    path = tmp / "point.gpkg"
    frame(geometry=[shapely.Point(x, y)], crs=CRS).to_file(path)
    out.append(("a point", path, "feature 1 is a Point"))
    path = tmp / "line.gpkg"
    frame(geometry=[shapely.LineString([(x, y), (x + 5, y + 5)])], crs=CRS).to_file(path)
    out.append(("a line", path, "feature 1 is a LineString"))
    path = tmp / "degrees.gpkg"  # UTM metres in a file that says degrees
    frame(geometry=[good], crs="EPSG:4326").to_file(path)
    out.append(("metres in a file in degrees", path, "are not degrees, though its CRS is EPSG:4326"))
    path = tmp / "elsewhere.gpkg"  # degrees in a file that says UTM: far from every input
    frame(geometry=[shapely.box(-82.1, 29.6, -82.09, 29.61)], crs=CRS).to_file(path)
    out.append(("degrees in a file in metres", path, "outside every input"))
    for name, value in (("inf", np.inf), ("nan", np.nan)):
        path = tmp / f"{name}.gpkg"
        frame(geometry=[good, shapely.box(x, y, value, y + 5)], crs=CRS).to_file(path)
        words = "feature 2 has coordinates that are not numbers" if name == "inf" else "feature 2 has no geometry"
        out.append((f"{name} coordinates", path, words))
    path = tmp / "flat.gpkg"
    frame(geometry=[shapely.Polygon([(x, y), (x + 5, y), (x + 9, y), (x, y)])], crs=CRS).to_file(path)
    out.append(("a box of no area", path, "has no area"))
    path = tmp / "fifo.gpkg"
    os.mkfifo(path)  # reading it would wait for ever for a writer
    out.append(("a FIFO", path, "not a regular file"))
    path = tmp / "layers.gpkg"
    frame(geometry=[good], crs=CRS).to_file(path, layer="sheds")
    frame(geometry=[good], crs=CRS).to_file(path, layer="roofs")
    out.append(("two layers", path, "holds 2 layers (sheds, roofs): name one as"))
    out.append(("a layer it lacks", f"{path}:barns", "has no layer 'barns'"))
    path = tmp / "newline.gpkg"
    frame({"prompt": ["red\nshed"]}, geometry=[good], crs=CRS).to_file(path)
    out.append(("a prompt holding a newline", path, "holds a control character"))
    path = tmp / "long.gpkg"
    frame({"prompt": ["shed " * 60]}, geometry=[good], crs=CRS).to_file(path)
    out.append(("a prompt of 300 characters", path, "characters long"))
    return out


def test_hostile_exemplar_files_are_refused_in_one_line(bad):
    path, objs, tmp = bad
    for what, boxes, words in hostile(tmp, objs):
        r = segment(path, "-p", "red", "--exemplars", boxes, "-o", tmp / "o.gpkg")
        line = one_line_error(r)
        assert words in line and "--exemplars" in line, (what, line)
        with pytest.raises(UsageError, match=re.escape(words)):  # the Python API: geoseg's errors, not shapely's
            geoseg.segment(path, "red", segmenter="colors", exemplars=boxes, tile_size=TILE, overlap=OVERLAP)
    assert not (tmp / "o.gpkg").exists()


def test_a_layer_of_a_file_is_named_with_a_colon(bad):
    path, objs, tmp = bad
    two = tmp / "two.gpkg"
    gpd.GeoDataFrame(geometry=[box_of(objs, "blue")], crs=CRS).to_file(two, layer="sheds")
    gpd.GeoDataFrame(geometry=[box_of(objs, "red")], crs=CRS).to_file(two, layer="roofs")
    found = geoseg.segment(path, segmenter="colors", exemplars=f"{two}:roofs", tile_size=TILE, overlap=OVERLAP)
    assert len(found) and (found.geometry.intersects(box_of(objs, "red"))).any()
    assert not found.geometry.intersects(box_of(objs, "blue")).any()
