"""Object prompts: a click (or a box) comes back as the one object under it, whole, wherever it
lies: inside a tile, astride a seam, at the raster's edge, larger than the window.

The colors test backend answers a click with the shape of its colour family under it (touching
objects of one family are one shape), less the objects under negative clicks; a box with the
largest shape in it. A scene with placed objects gives the exact answers.
"""

from __future__ import annotations

import re

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from affine import Affine
from conftest import one_line_error, run

import geoseg
from geoseg.errors import UsageError
from geoseg.testing import draw, write_geotiff
from geoseg.testing.scenes import disc, rectangle, ring

SIZE, TILE = 1024, 256
ORIGIN = Affine(0.5, 0, 404000.0, 0, -0.5, 3286000.0)
CRS = "EPSG:32617"

OBJECTS = {  # name -> the scene object: where a click lands is its own pixel
    "interior": disc("red", 1, 130, 130, 30),
    "astride": disc("blue", 2, 256, 512, 40),  # across the seams of a 256 px grid
    "edge": rectangle("green", 3, 900, 990, 80, 34),  # cut by the raster's right edge
    "large": ring("green", 4, 640, 330, 320, 130),  # 640 px across: two and a half windows
    "left": rectangle("red", 5, 120, 700, 60, 60),
    "right": rectangle("red", 6, 120, 760, 60, 60),  # touches "left": one shape of the red family
    "boxed": disc("blue", 7, 60, 420, 40),
}


def xy(row, col):
    """Map coordinates of the centre of pixel (row, col)."""
    return ORIGIN * (col + 0.5, row + 0.5)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("objects")
    path = write_geotiff(d / "scene.tif", draw(SIZE, SIZE, list(OBJECTS.values())), transform=ORIGIN)
    truth = geoseg.segment(path, ["red", "green", "blue"], segmenter="colors", tile_size=SIZE, overlap=0,
                           simplify=0)
    return d, path, truth


def truth_of(truth, name):
    """The untiled object `name`: the polygon of its pixels."""
    o = OBJECTS[name]
    inside = truth.geometry.contains(shapely.Point(xy(o.row + o.mask.shape[0] // 2, o.col + int(
        np.flatnonzero(o.mask[o.mask.shape[0] // 2])[0]))))
    return truth[inside & (truth["label"] == o.label)].geometry.iloc[0]


def iou(a, b):
    return shapely.intersection(a, b).area / shapely.union(a, b).area


def on(name, dy=0.5, dx=0.5):
    """A point on object `name` (a pixel of its own, near its middle row)."""
    o = OBJECTS[name]
    r = o.mask.shape[0] // 2
    c = int(np.flatnonzero(o.mask[r])[0]) + 2
    return shapely.Point(xy(o.row + r, o.col + c))


def write(path, features, crs=CRS):
    """A real vector file of `features`; a `positive` given to some is true for the others (a boolean field)."""
    if any("positive" in f for f in features):
        features = [{"positive": True, **f} for f in features]
    gpd.GeoDataFrame([{k: v for k, v in f.items() if k != "geometry"} for f in features],
                     geometry=[f["geometry"] for f in features], crs=CRS).to_crs(crs).to_file(path)
    return path


def test_a_click_gives_the_whole_object_wherever_it_lies(scene, tmp_path):
    d, path, truth = scene
    names = ["interior", "astride", "edge", "large"]
    clicks = write(tmp_path / "clicks.gpkg", [{"object": n, "geometry": on(n)} for n in names], crs="EPSG:4326")
    out = tmp_path / "out.gpkg"
    r = run("segment", path, "--objects", clicks, "--backend", "colors", "--tile-size", TILE, "--simplify", "0",
            "-o", out)
    assert r.exit_code == 0, r.output
    got = pyogrio.read_dataframe(out)
    assert list(got["object"]) == names and got["whole"].all()
    assert list(got.columns) == ["id", "object", "label", "score", "whole", "area_m2", "source", "geometry"]
    for name, geom, label in zip(names, got.geometry, got["label"]):
        assert label == "object" and iou(geom, truth_of(truth, name)) >= 0.98, name
    # the ring is read at 4 times the pixel (640 px, over two windows): its outline is coarser, its area the same
    assert abs(got.geometry.iloc[3].area / truth_of(truth, "large").area - 1) < 0.02
    assert geoseg.io.export.read_provenance(out)["objects"].startswith("clicks.gpkg (")


def test_negative_clicks_boxes_and_several_clicks(scene, tmp_path):
    d, path, truth = scene
    left, right = truth_of(truth, "left"), truth_of(truth, "right")
    b = truth_of(truth, "boxed").buffer(6, join_style="mitre").envelope
    features = [
        {"object": "both", "geometry": on("left")},  # touching squares of one family: one shape
        {"object": "split", "geometry": on("left")},
        {"object": "split", "positive": False, "geometry": on("right")},  # a negative click takes one away
        {"object": "box", "label": "pond", "geometry": b},
        {"object": "two clicks", "geometry": on("interior")},
        {"object": "two clicks", "geometry": on("astride")},
    ]
    got = geoseg.segment(path, segmenter="colors", objects=write(tmp_path / "o.gpkg", features), tile_size=TILE,
                         simplify=0)
    by = dict(zip(got["object"], got.geometry))
    assert iou(by["both"], shapely.union(left, right)) >= 0.98
    assert iou(by["split"], left) >= 0.98
    assert iou(by["box"], truth_of(truth, "boxed")) >= 0.98 and got.set_index("object").loc["box", "label"] == "pond"
    assert iou(by["two clicks"], shapely.union(truth_of(truth, "interior"), truth_of(truth, "astride"))) >= 0.98


def test_an_object_larger_than_every_window_is_said_not_whole(scene, tmp_path, monkeypatch):
    from geoseg.run import objects

    d, path, truth = scene
    monkeypatch.setattr(objects, "GROWTH", (1, 2))  # at most 512 px: the 640 px ring cannot fit
    got = geoseg.segment(path, segmenter="colors", objects=write(tmp_path / "o.gpkg", [{"geometry": on("large")}]),
                         tile_size=TILE, simplify=0)
    assert len(got) == 1 and not got["whole"].iloc[0]
    assert got.geometry.iloc[0].area < 0.9 * truth_of(truth, "large").area


@pytest.mark.parametrize("features, words", [
    ([{"geometry": shapely.LineString([(404100, 3285900), (404110, 3285910)])}], "feature 1 is a LineString"),
    ([{"positive": False, "geometry": shapely.Point(404100, 3285900)}], "has negative clicks only"),
    ([{"geometry": shapely.Point(504100, 3285900)}], "lies outside every input"),
    ([{"object": "a", "geometry": shapely.box(404000, 3285500, 404100, 3285600)},
      {"object": "a", "geometry": shapely.box(404200, 3285500, 404300, 3285600)}], "has two boxes"),
    ([{"geometry": shapely.Point(404256, 3285744).buffer(2300).envelope}], "more than 8192 a side"),
    ([{"positive": "yes", "geometry": shapely.Point(404100, 3285900)}], "positive column is not boolean"),
    ([{"label": "a\nb", "geometry": shapely.Point(404100, 3285900)}], "holds a control character"),
])
def test_refusals_before_the_model_loads(scene, tmp_path, features, words):
    d, path, _ = scene
    f = write(tmp_path / "o.gpkg", features)
    line = one_line_error(run("segment", path, "--objects", f, "--backend", "colors", "-o", tmp_path / "out.gpkg"))
    assert words in line and "--objects" in line, line
    with pytest.raises(UsageError, match=re.escape(words)):
        geoseg.segment(path, segmenter="colors", objects=f)
    assert not (tmp_path / "out.gpkg").exists()


def test_a_segmenter_without_object_prompts_and_text_with_objects_are_refused(scene, tmp_path):
    d, path, _ = scene

    class Plain:
        def segment(self, tiles, prompts):
            return [[] for _ in tiles]

    f = write(tmp_path / "o.gpkg", [{"geometry": on("interior")}])
    with pytest.raises(UsageError, match="the Plain segmenter takes no object prompts"):
        geoseg.segment(path, segmenter=Plain(), objects=f)
    line = one_line_error(run("segment", path, "-p", "red", "--objects", f, "--backend", "colors", "-o",
                              tmp_path / "o2.geojson"))
    assert "writes two layers: give -o OUT.gpkg" in line and not (tmp_path / "o2.geojson").exists()


def test_text_and_object_prompts_in_one_run(scene, tmp_path):
    """Text prompts find every object of their kind (layer `detections`); the clicks outline theirs
    (layer `detections_objects`) in the same GeoPackage; Python gets both in one frame."""
    d, path, truth = scene
    f = write(tmp_path / "o.gpkg", [{"object": "ring", "geometry": on("large")}])
    out = tmp_path / "both.gpkg"
    r = run("segment", path, "-p", "blue", "--objects", f, "--backend", "colors", "--tile-size", TILE,
            "--simplify", "0", "-o", out)
    assert r.exit_code == 0, r.output
    assert "(layer detections_objects): 1 objects clicked (1 whole)" in r.output
    assert {"detections", "detections_objects"} <= set(pyogrio.list_layers(out)[:, 0])
    blue = pyogrio.read_dataframe(out, layer="detections")
    ring = pyogrio.read_dataframe(out, layer="detections_objects")
    assert set(blue["label"]) == {"blue"} and len(blue) == (truth["label"] == "blue").sum()
    assert iou(ring.geometry.iloc[0], truth_of(truth, "large")) >= 0.98
    both = geoseg.segment(path, "blue", segmenter="colors", objects=f, tile_size=TILE, simplify=0)
    assert len(both) == len(blue) + 1 and list(both["id"]) == list(range(1, len(both) + 1))
    assert both["object"].notna().sum() == 1 and both.attrs["geoseg"]["objects"].startswith("o.gpkg (")
