"""SAM 3's single-object head, on the tiny random SAM 3 saved as `facebook/sam3` is (a video
checkpoint: detector, tracker, the tracker's neck): the same masks and scores as transformers'
own `Sam3TrackerProcessor` + `Sam3TrackerModel`, the backbone shared and run once per window."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely

torch = pytest.importorskip("torch", reason="the sam3 extra (torch, transformers) is not installed")
pytest.importorskip("transformers", reason="the sam3 extra (torch, transformers) is not installed")

from test_sam3 import MASK_IOU, SCORE_TOL, cpu_segmenter, iou, make_tiles, paste  # noqa: E402

import geoseg  # noqa: E402
from geoseg.core.objects import ObjectPrompt  # noqa: E402
from geoseg.testing import make_scene  # noqa: E402
from geoseg.testing.sam3 import build_tiny_sam3  # noqa: E402

PROMPTS = {
    "one click": ObjectPrompt(np.array([[500.5, 400.5]]), np.array([True]), None),
    "click and not": ObjectPrompt(np.array([[300.5, 320.5], [360.5, 330.5]]), np.array([True, False]), None),
    "box": ObjectPrompt(np.empty((0, 2)), np.empty(0, bool), (200.0, 150.0, 520.0, 470.0)),
    "box and click": ObjectPrompt(np.array([[350.5, 300.5]]), np.array([True]), (200.0, 150.0, 520.0, 470.0)),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(build_tiny_sam3(tmp_path_factory.mktemp("tiny_sam3_objects")))


@pytest.fixture(scope="module")
def reference(tiny):
    from transformers import Sam3TrackerModel, Sam3TrackerProcessor

    return Sam3TrackerProcessor.from_pretrained(tiny), Sam3TrackerModel.from_pretrained(tiny).eval()


def theirs(reference, tile, prompt):
    """(score, mask) by transformers' own path: the processor on the image and prompts, the model
    on its pixels, the best of three masks for one click (one mask otherwise), post-processed."""
    processor, model = reference
    given = {}
    if len(prompt.points):
        given["input_points"] = [[prompt.points.tolist()]]
        given["input_labels"] = [[[int(v) for v in prompt.positive]]]
    if prompt.box is not None:
        given["input_boxes"] = [[list(prompt.box)]]
    inputs = processor(images=[tile], return_tensors="pt", **given)
    single = len(prompt.points) == 1 and prompt.box is None
    with torch.inference_mode():
        out = model(**inputs, multimask_output=single)
    masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"])[0][0]
    best = int(out.iou_scores[0, 0].argmax())
    return float(out.iou_scores[0, 0, best]), masks[best].numpy().astype(bool)


def test_the_object_head_matches_transformers_on_one_model_input(tiny, reference):
    seg = cpu_segmenter(tiny)
    tile = make_tiles(1, size=1008, seed=21)[0]
    for name, prompt in PROMPTS.items():
        (ours,) = seg.segment_objects(tile, [prompt])
        score, mask = theirs(reference, tile, prompt)
        assert ours is not None and mask.any(), name
        assert ours.score == pytest.approx(score, abs=SCORE_TOL), name
        assert iou(paste(ours, tile.shape[:2]), mask) >= MASK_IOU, name
    # one backbone in memory: the object head runs on the detector's
    assert seg._tracker is not None and seg._tracker.net.vision_encoder.backbone is seg.model.vision_encoder.backbone


def test_a_second_click_on_a_window_runs_no_backbone(tiny, monkeypatch):
    seg = cpu_segmenter(tiny)
    calls = []
    real = seg.model.get_vision_features
    monkeypatch.setattr(seg.model, "get_vision_features", lambda **kw: calls.append(1) or real(**kw))
    tiles = make_tiles(2, size=1008, seed=22)
    first = seg.segment_objects(tiles[0], [PROMPTS["one click"]])
    assert len(calls) == 1
    again = seg.segment_objects(tiles[0], [PROMPTS["box"], PROMPTS["one click"]])  # the same window: cached
    assert len(calls) == 1 and iou(paste(first[0], (1008, 1008)), paste(again[1], (1008, 1008))) == 1.0
    seg.segment_objects(tiles[1], [PROMPTS["one click"]])
    assert len(calls) == 2


def test_clicks_on_a_raster_through_sam3(tiny, tmp_path):
    """The whole path with SAM 3: read, place, segment, polygons (random weights: any mask)."""
    scene = make_scene(tmp_path / "scene.tif", size=600, seed=4, n_objects=20)
    x, y = 404000 + 150, 3286000 - 150
    clicks = gpd.GeoDataFrame({"object": ["a", "b"], "label": ["pond", "field"]},
                              geometry=[shapely.Point(x, y), shapely.Point(x + 100, y - 100)], crs="EPSG:32617")
    clicks.to_file(tmp_path / "clicks.gpkg")
    out = tmp_path / "out.gpkg"
    gdf = geoseg.segment(scene, segmenter="sam3", model=tiny, device="cpu", objects=tmp_path / "clicks.gpkg",
                         output=out)
    assert list(gdf.columns) == ["id", "object", "label", "score", "whole", "area_m2", "source", "geometry"]
    assert set(gdf["object"]) <= {"a", "b"} and len(gdf) >= 1
    assert gdf["whole"].all()  # the 600 px raster fits in one 1008 px window: nothing is cut
    assert gdf.attrs["geoseg"]["backend"] == "sam3" and gdf.attrs["geoseg"]["objects"].startswith("clicks.gpkg")


def test_a_session_clicks_twice_near_one_place_with_one_backbone_pass(tiny, tmp_path, monkeypatch):
    scene = make_scene(tmp_path / "scene.tif", size=600, seed=4, n_objects=20)
    seg = geoseg.Segmentation(scene, segmenter="sam3", model=tiny, device="cpu")
    calls = []
    real = seg.segmenter.segmenter.model.get_vision_features
    monkeypatch.setattr(seg.segmenter.segmenter.model, "get_vision_features",
                        lambda **kw: calls.append(1) or real(**kw))
    x, y = 404000 + 150, 3286000 - 150
    first = seg.segment_objects(gpd.GeoSeries([shapely.Point(x, y)], crs="EPSG:32617"))
    second = seg.segment_objects(gpd.GeoSeries([shapely.Point(x + 20, y - 20)], crs="EPSG:32617"))
    assert len(calls) == 1, "the second click's window is the first's: its features are kept"
    assert list(first.columns) == list(second.columns) and "whole" in first.columns


def test_text_and_object_prompts_share_one_backbone_pass_per_window(tiny, tmp_path, monkeypatch):
    """A click held well inside a tile of the run is read in that tile: the backbone pass of the text
    prompts serves it (calls counted: one per tile, none more for the click)."""
    from geoseg.backends.sam3 import Sam3Segmenter
    from geoseg.run import objects

    monkeypatch.setattr(objects, "GROWTH", (1,))  # random masks reach every edge: no wider window read
    scene = make_scene(tmp_path / "scene.tif", size=600, seed=4, n_objects=20)
    seg = Sam3Segmenter(model=tiny, device="cpu", score_threshold=0.3)
    calls = []
    real = seg.model.get_vision_features
    monkeypatch.setattr(seg.model, "get_vision_features", lambda **kw: calls.append(1) or real(**kw))
    clicks = gpd.GeoSeries([shapely.Point(404000 + 80, 3286000 - 80)], crs="EPSG:32617")  # well inside a tile
    alone = geoseg.segment(scene, "tree", segmenter=seg, tile_size=336, overlap=32, refine_depth=0)
    tiles = len(calls)
    calls.clear()
    both = geoseg.segment(scene, "tree", segmenter=seg, objects=clicks, tile_size=336, overlap=32, refine_depth=0)
    assert len(calls) == tiles, (len(calls), tiles)  # the click's window is one of the text run's tiles
    assert len(both) >= len(alone) and both["object"].notna().sum() <= 1
