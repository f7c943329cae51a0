"""Exemplars with SAM 3, on the tiny random SAM 3 (geoseg.testing.sam3): the same results as
transformers' own in-image path, tokens encoded once per box and level, batched with text."""

from __future__ import annotations

import os

import geopandas as gpd
import numpy as np
import pytest
import shapely

os.environ["HF_HUB_OFFLINE"] = "1"
torch = pytest.importorskip("torch", reason="the sam3 extra (torch, transformers) is not installed")
pytest.importorskip("transformers", reason="the sam3 extra (torch, transformers) is not installed")

from test_sam3 import MASK_IOU, SCORE_TOL, assert_close, assert_same, cpu_segmenter, make_tiles  # noqa: E402

import geoseg  # noqa: E402
from geoseg.core.exemplars import EncodedExemplars  # noqa: E402
from geoseg.testing import write_geotiff  # noqa: E402
from geoseg.testing.sam3 import build_tiny_sam3  # noqa: E402

BOXES = np.array([[100, 120, 300, 340], [500, 500, 700, 650]], float)
POSITIVE = np.array([True, False])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import Sam3Model, Sam3Processor

    d = str(build_tiny_sam3(tmp_path_factory.mktemp("tiny_sam3")))
    return d, Sam3Processor.from_pretrained(d), Sam3Model.from_pretrained(d).eval()


@pytest.fixture(scope="module")
def seg(tiny):
    return cpu_segmenter(tiny[0], score_threshold=0.3, batch_size=4)


def in_image(tiny, tile, text, boxes, positive, threshold):
    """(score, mask) of each instance by transformers' own path: boxes given with the image."""
    _, processor, model = tiny
    inputs = processor(images=tile, text=text, input_boxes=[boxes.tolist()],
                       input_boxes_labels=[positive.astype(int).tolist()], return_tensors="pt")
    with torch.inference_mode():
        out = model(**inputs)
    res = processor.post_process_instance_segmentation(out, threshold=threshold, mask_threshold=0.5,
                                                       target_sizes=[tile.shape[:2]])[0]
    found = [(float(s), m.numpy().astype(bool)) for s, m in zip(res["scores"], res["masks"], strict=True)]
    return sorted([f for f in found if f[1].any()], key=lambda f: -f[0])


@pytest.mark.parametrize("text", [None, "red"])
def test_on_the_boxes_own_tile_equals_transformers(tiny, seg, text):
    tile = make_tiles(1, seed=1)[0]
    tokens = seg.encode_exemplars(tile, BOXES, POSITIVE)
    label = text or "sheds"
    ours = seg.segment(tile[None], [label], exemplars={label: EncodedExemplars((tokens,), text is not None)})[0]
    theirs = in_image(tiny, tile, text, BOXES, POSITIVE, seg.score_threshold)
    assert len(theirs) >= 3, "the tiny model should find something to compare"
    assert all(d.label == label for d in ours)
    assert_same(ours, theirs, tile.shape[:2], SCORE_TOL, MASK_IOU)
    plain = seg.segment(tile[None], ["red"])[0]
    assert [d.score for d in plain] != pytest.approx([d.score for d in ours])  # the boxes changed something


def test_text_and_exemplar_only_concepts_run_batched(seg):
    tiles = make_tiles(2, seed=3)
    tokens = seg.encode_exemplars(tiles[0], BOXES, POSITIVE)
    more = seg.encode_exemplars(tiles[1], BOXES[:1], POSITIVE[:1])
    given = {"red": EncodedExemplars((tokens,), True), "sheds": EncodedExemplars((tokens, more), False)}
    calls = []
    hook = seg.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        batched = seg.segment(tiles, ["red", "green", "sheds"], exemplars=given)
    finally:
        hook.remove()
    assert len(calls) == 1  # 2 tiles x 3 prompts, of three lengths, in one call of the heads
    # one prompt at a time, on the same vision features: only the heads run again
    features = seg.vision_features(tiles)
    single = [[] for _ in tiles]
    for p in ("red", "green", "sheds"):
        for t, found in enumerate(seg.segment_features(features, [p], {k: v for k, v in given.items() if k == p})):
            single[t] += found
    assert {d.label for ds in batched for d in ds} == {"red", "green", "sheds"}
    assert_close([sorted(ds, key=lambda d: (d.label, -d.score)) for ds in batched],
                 [sorted(ds, key=lambda d: (d.label, -d.score)) for ds in single])


def test_geometry_encoder_runs_once_per_box_and_level(tiny, tmp_path):
    d = tiny[0]
    rgb = np.concatenate([make_tiles(1, seed=4)[0], make_tiles(1, seed=5)[0][:, :600]], axis=1)  # 2 tiles
    path = write_geotiff(tmp_path / "two.tif", rgb)
    x, y = 404000.0 + 0.5 * 150, 3286000.0 - 0.5 * 150
    boxes = tmp_path / "boxes.gpkg"
    gpd.GeoDataFrame({"prompt": ["sheds"]}, geometry=[shapely.box(x, y - 60, x + 60, y)],
                     crs="EPSG:32617").to_file(boxes)
    seg = cpu_segmenter(d, score_threshold=0.0)
    calls = []
    hook = seg.model.geometry_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        # every query kept: every tile saturates and is refined one level down
        gdf = geoseg.segment(path, segmenter=seg, exemplars=boxes, saturation=0.1, refine_depth=1, cpu_workers=0)
    finally:
        hook.remove()
    assert gdf.attrs["geoseg"]["refined"]["deepest_level"] == 1
    assert len(calls) == 2  # the box, at level 0 and at level 1, for 2 tiles and 8 sub-tiles
    assert len(gdf) and set(gdf["label"]) == {"sheds"}
