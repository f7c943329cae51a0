import sys
import warnings

import numpy as np
import pyogrio
import pytest

import geoseg
from geoseg.core.detections import Detections
from geoseg.core.merge import to_piece, to_pieces
from geoseg.core.segmenter import Detection
from geoseg.core.tiling import plan_tiles
from geoseg.errors import UsageError
from geoseg.testing import ColorSegmenter, disc, draw, make_scene, rectangle

with warnings.catch_warnings():  # supervision warns on import when OpenCV is missing
    warnings.simplefilter("ignore")
    import supervision as sv


def masks3():
    a = np.zeros((4, 5), bool)
    a[1:3, 1:4] = True  # a crop with an empty margin
    b = np.ones((2, 2), bool)
    c = np.zeros((3, 1), bool)
    c[0, 0] = c[2, 0] = True
    return [a, b, c]


def three():
    return Detections(["red", "blue", "red"], [0.9, 0.4, 0.7], [(0, 0), (10, 20), (5, 30)], masks3())


def tile_detections():
    """What the colors backend finds in one 256 px tile of a drawn scene (shapes cut by its edge)."""
    rgb = draw(256, 256, [disc("red", 1, 60, 60, 20), rectangle("green", 2, 150, 200, 40, 80),
                          disc("red", 7, 240, 10, 30), disc("blue", 3, 120, 120, 15)])
    return ColorSegmenter().segment(rgb[None], ["red", "green", "blue"])[0]


def test_columns_length_iteration_and_rows():
    dets = three()
    assert len(dets) == 3 and dets.labels.tolist() == ["red", "blue", "red"]
    assert dets.scores.dtype == np.float64 and dets.origins.shape == (3, 2)
    rows = list(dets)
    assert all(isinstance(d, Detection) for d in rows)
    assert [(d.label, d.score, d.origin) for d in rows] == [("red", 0.9, (0, 0)), ("blue", 0.4, (10, 20)),
                                                           ("red", 0.7, (5, 30))]
    assert all(d.mask is m for d, m in zip(rows, dets.masks))
    one = dets[1]
    assert isinstance(one, Detection) and one.label == "blue" and one.origin == (10, 20) and dets[-1].score == 0.7
    with pytest.raises(IndexError):
        dets[3]


def test_one_label_for_all():
    dets = Detections("tree", [0.5, 0.6], [(0, 0), (1, 1)], masks3()[:2])
    assert dets.labels.tolist() == ["tree", "tree"]


def test_indexing_selects_rows_without_copying_masks():
    dets = three()
    kept = dets[dets.scores >= 0.7]
    assert kept.labels.tolist() == ["red", "red"] and kept.origins.tolist() == [[0, 0], [5, 30]]
    assert np.shares_memory(kept.masks[0], dets.masks[0]) and np.shares_memory(kept.masks[1], dets.masks[2])
    picked = dets[[2, 0]]
    assert picked.scores.tolist() == [0.7, 0.9] and picked.masks[0] is dets.masks[2]
    by_array = dets[np.array([1])]
    assert by_array.labels.tolist() == ["blue"] and np.shares_memory(by_array.masks[0], dets.masks[1])
    tail = dets[1:]
    assert tail.labels.tolist() == ["blue", "red"] and tail.masks[1] is dets.masks[2]
    assert len(dets[dets.labels == "green"]) == 0 and len(dets[[]]) == 0


def test_concat_joins_one_tiles_parts_in_order():
    dets = three()
    joined = Detections.concat([dets[[0]], Detections.empty(), dets[1:]])
    assert joined.labels.tolist() == dets.labels.tolist() and joined.scores.tolist() == dets.scores.tolist()
    assert joined.origins.tolist() == dets.origins.tolist() and all(a is b for a, b in zip(joined.masks, dets.masks))
    assert len(Detections.concat([])) == 0


def test_empty():
    empty = Detections.empty()
    assert len(empty) == 0 and list(empty) == [] and empty.to_list() == []
    assert empty.boxes().shape == (0, 4) and empty.origins.shape == (0, 2)
    assert len(Detections.of([])) == 0 and len(empty[np.zeros(0, bool)]) == 0


def test_boxes_are_the_crops_edges():
    assert three().boxes().tolist() == [[0, 0, 5, 4], [20, 10, 22, 12], [30, 5, 31, 8]]


def test_list_round_trip_keeps_every_detection():
    found = tile_detections()
    assert isinstance(found, Detections) and len(found) == 4
    as_list = found.to_list()
    back = Detections.of(as_list)
    assert back.labels.tolist() == found.labels.tolist() and back.scores.tolist() == found.scores.tolist()
    assert back.origins.tolist() == found.origins.tolist()
    assert all(a is b for a, b in zip(back.masks, found.masks))  # bool masks are taken as they are
    # 0/1 masks, as some models give, become bool as `to_piece` reads them
    ints = Detections.of([Detection("red", 0.5, np.array([[0, 1], [1, 1]], np.uint8), (3, 4))])
    assert ints.masks[0].dtype == bool and ints.masks[0].tolist() == [[False, True], [True, True]]


def test_supervision_round_trip():
    dets = three()
    out = dets.to_supervision((16, 40))
    assert isinstance(out, sv.Detections) and len(out) == 3
    assert out.mask.shape == (3, 16, 40) and out.mask.dtype == bool
    assert out.mask[0].sum() == 6 and out.mask[0, 1:3, 1:4].all()
    # supervision's boxes hold the last pixel (as its own mask_to_xyxy); the first mask has a margin
    assert out.xyxy.tolist() == [[0, 0, 4, 3], [20, 10, 21, 11], [30, 5, 30, 7]]
    assert sv.mask_to_xyxy(out.mask[1:]).tolist() == out.xyxy[1:].tolist()
    assert out.confidence.tolist() == [0.9, 0.4, 0.7] and out.data["class_name"].tolist() == ["red", "blue", "red"]
    assert out.class_id.tolist() == [1, 0, 1]  # sorted labels: blue, red
    assert dets.to_supervision((16, 40), classes=["red", "blue"]).class_id.tolist() == [0, 1, 0]
    back = Detections.from_supervision(out)
    assert back.labels.tolist() == dets.labels.tolist() and back.scores.tolist() == dets.scores.tolist()
    assert back.origins.tolist() == dets.origins.tolist() and back.boxes().tolist() == dets.boxes().tolist()
    assert all(np.array_equal(a, b) for a, b in zip(back.masks, dets.masks))
    # the crops are copies: the (N, H, W) array can be freed
    assert not any(np.shares_memory(m, out.mask) for m in back.masks)
    again = Detections.from_supervision(back.to_supervision((16, 40)))
    assert all(np.array_equal(a, b) for a, b in zip(again.masks, dets.masks))


def test_supervision_masks_outside_their_boxes_are_kept_whole():
    mask = np.zeros((2, 50, 60), bool)
    mask[0, 10:20, 30:45] = True
    mask[1, 0:5, 0:3] = True
    # a model's box that cuts its own mask, and a float box of pixel edges
    boxes = np.array([[32.0, 12.0, 40.0, 18.0], [0.0, 0.0, 3.0, 5.0]], np.float32)
    found = sv.Detections(xyxy=boxes, mask=mask, confidence=np.array([0.8, 0.6]), class_id=np.array([1, 0]))
    dets = Detections.from_supervision(found, labels=["tree", "roof"])
    assert dets.labels.tolist() == ["roof", "tree"]
    assert dets.origins.tolist() == [[10, 30], [0, 0]] and dets.masks[0].shape == (10, 15)
    assert dets.masks[0].all() and dets.masks[1].sum() == 15
    assert Detections.from_supervision(found, labels="tree").labels.tolist() == ["tree", "tree"]
    full = dets.to_supervision((50, 60)).mask
    assert np.array_equal(full, mask)


def test_supervision_compact_masks_give_their_crops():
    # CompactMask (crops + offsets, no full masks) is in recent supervision releases only
    CompactMask = pytest.importorskip("supervision.detection.compact_mask").CompactMask
    mask = np.zeros((2, 30, 30), bool)
    mask[0, 3:9, 4:6] = True
    mask[1, 20:30, 25:30] = True
    boxes = sv.mask_to_xyxy(mask).astype(np.float32)
    compact = CompactMask.from_dense(mask, boxes, image_shape=(30, 30))
    found = sv.Detections(xyxy=boxes, mask=compact, confidence=np.array([0.3, 0.9]),
                          data={"class_name": np.array(["a", "b"])})
    dets = Detections.from_supervision(found)
    assert dets.origins.tolist() == [[3, 4], [20, 25]] and [m.shape for m in dets.masks] == [(6, 2), (10, 5)]
    assert np.array_equal(dets.to_supervision((30, 30)).mask, mask)


def test_empty_supervision_detections():
    assert len(Detections.from_supervision(sv.Detections.empty())) == 0
    out = Detections.empty().to_supervision((8, 8))
    assert len(out) == 0 and out.mask.shape == (0, 8, 8)


def test_bad_supervision_detections():
    boxes = np.array([[0, 0, 1, 1]], np.float32)
    mask = np.ones((1, 4, 4), bool)
    with pytest.raises(UsageError, match="no masks"):
        Detections.from_supervision(sv.Detections(xyxy=boxes, confidence=np.array([0.5])), labels="x")
    with pytest.raises(UsageError, match="no confidence"):
        Detections.from_supervision(sv.Detections(xyxy=boxes, mask=mask), labels="x")
    with pytest.raises(UsageError, match="labels="):
        Detections.from_supervision(sv.Detections(xyxy=boxes, mask=mask, confidence=np.array([0.5])))
    with pytest.raises(UsageError, match="class_id 3"):
        Detections.from_supervision(sv.Detections(xyxy=boxes, mask=mask, confidence=np.array([0.5]),
                                                  class_id=np.array([3])), labels=["a", "b"])
    with pytest.raises(UsageError, match="past the 4 x 4 tile"):
        three().to_supervision((4, 4))
    with pytest.raises(UsageError, match="not in classes"):
        three().to_supervision((16, 40), classes=["red"])


def test_supervision_missing_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "supervision", None)  # as if not installed: import fails
    with pytest.raises(UsageError, match="pip install supervision"):
        three().to_supervision((16, 40))
    with pytest.raises(UsageError, match="pip install supervision"):
        Detections.from_supervision(object())


@pytest.mark.parametrize("args, match", [
    ((["a", "b"], [0.5], [(0, 0), (0, 0)], masks3()[:2]), "differ in length"),
    ((["a"], [0.5], [(0, 0), (1, 1)], masks3()[:1]), "differ in length"),
    (("a", [0.5, 0.6], [(0, 0), (1, 1)], masks3()[:1]), "differ in length"),
    ((["a"], [0.5], [(0, 0)], [np.ones((3, 3), np.uint8)]), "2-D bool"),
    ((["a"], [0.5], [(0, 0)], [np.ones((1, 3, 3), bool)]), "2-D bool"),
    ((["a"], [0.5], [(0, 0)], [[[True]]]), "2-D bool"),
    ((["a"], [0.5], [(0.5, 1.0)], masks3()[:1]), r"\(N, 2\) ints"),
    ((["a"], [0.5], [(-1, 0)], masks3()[:1]), ">= 0"),
    (([1], [0.5], [(0, 0)], masks3()[:1]), "one str per detection"),
    ((["a"], ["high"], [(0, 0)], masks3()[:1]), "scores must be numbers"),
])
def test_bad_columns(args, match):
    with pytest.raises(UsageError, match=match):
        Detections(*args)


def test_bad_index():
    with pytest.raises(UsageError, match="needs 3 values"):
        three()[np.array([True, False])]
    with pytest.raises(UsageError, match="needs 3 values"):
        three()[np.zeros(0, bool)]
    with pytest.raises(UsageError, match="index with"):
        three()[np.array([0.5])]


def test_pieces_from_columns_equal_pieces_from_detections():
    found = tile_detections()
    plan = plan_tiles(1000, 1000, 256, 32)
    tile = plan.tile(5)
    valid = np.ones((256, 256), bool)
    valid[:, 200:] = False  # nodata: the clip to valid pixels drops some and cuts others
    valid[:40, :] = False
    columns = to_pieces(found, tile, valid)
    rows = [p for p in (to_piece(d, tile, valid) for d in found.to_list()) if p is not None]
    assert 0 < len(columns) == len(rows) < len(found)
    for a, b in zip(columns, rows):
        assert (a.label, a.score, a.tile, a.row, a.col) == (b.label, b.score, b.tile, b.row, b.col)
        assert type(a.label) is str and np.array_equal(a.mask, b.mask)
    assert to_pieces(found.to_list(), tile, valid)[0].mask.tolist() == columns[0].mask.tolist()


class ListSegmenter(ColorSegmenter):
    """The colors backend, answering in lists of `Detection` as backends did."""

    def segment(self, tiles, prompts):
        return [dets.to_list() for dets in super().segment(tiles, prompts)]


class FilteringSegmenter(ColorSegmenter):
    """Keeps detections scored >= 0.75 by one index on the columns."""

    def segment(self, tiles, prompts):
        return [dets[dets.scores >= 0.75] for dets in super().segment(tiles, prompts)]


def test_a_segmenter_answering_in_columns_writes_what_one_answering_in_lists_writes(tmp_path):
    scene = make_scene(tmp_path / "scene.tif", size=900, seed=4)
    prompts = ["red", "green", "blue"]
    args = dict(tile_size=256, overlap=32)
    columns = geoseg.segment(scene, prompts, segmenter=ColorSegmenter(), output=tmp_path / "columns.gpkg", **args)
    lists = geoseg.segment(scene, prompts, segmenter=ListSegmenter(), output=tmp_path / "lists.gpkg", **args)
    assert len(columns) > 20
    a, b = pyogrio.read_dataframe(tmp_path / "columns.gpkg"), pyogrio.read_dataframe(tmp_path / "lists.gpkg")
    assert a.drop(columns="geometry").equals(b.drop(columns="geometry"))
    assert a.geometry.geom_equals_exact(b.geometry, tolerance=0).all()
    assert columns.drop(columns="geometry").equals(lists.drop(columns="geometry"))
    filtered = geoseg.segment(scene, prompts, segmenter=FilteringSegmenter(), **args)
    thresholded = geoseg.segment(scene, prompts, segmenter=ColorSegmenter(score_threshold=0.75), **args)
    assert 0 < len(filtered) < len(columns)
    assert filtered.drop(columns="geometry").equals(thresholded.drop(columns="geometry"))
    assert filtered.geometry.geom_equals_exact(thresholded.geometry, tolerance=0).all()
