"""geoseg.Segmentation: one raster, a loaded model, many prompts; the vision encoder runs once per tile."""

from __future__ import annotations

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

import geoseg  # noqa: E402
from geoseg.analysis.session import Segmentation  # noqa: E402
from geoseg.testing import ColorSegmenter  # noqa: E402

SCENE = "sample_data/seam_scene.tif"


def test_session_with_a_plain_backend_matches_segment():
    seg = Segmentation(SCENE, segmenter="colors")
    assert not seg.caches_features
    for prompts in (["red"], ["green", "blue"]):
        got = seg.segment(prompts)
        want = geoseg.segment(SCENE, prompts, segmenter=ColorSegmenter())
        assert len(got) == len(want) > 0
        assert got.geometry.equals(want.geometry)
        assert list(got.columns) == list(want.columns)
    assert "9 tiles" in repr(seg)


def test_session_takes_a_dataarray(tmp_path):
    rioxarray = pytest.importorskip("rioxarray")
    da = rioxarray.open_rasterio(SCENE).chunk({"x": 512, "y": 512})
    got = Segmentation(da, segmenter="colors", tile_size=512, overlap=64).segment("red")
    want = geoseg.segment(SCENE, "red", segmenter="colors", tile_size=512, overlap=64)
    assert got.geometry.equals(want.geometry)
    assert got["source"].iloc[0] == "seam_scene.tif"


def test_vision_encoder_runs_once_per_tile_across_prompts(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from geoseg.backends.sam3 import Sam3Segmenter
    from geoseg.testing import build_tiny_sam3

    model = str(build_tiny_sam3(tmp_path / "tiny"))
    sam = Sam3Segmenter(model=model, device="cpu", score_threshold=0.3, batch_size=2, max_detections=8)
    calls = []
    encoder = sam.model.get_vision_features

    def spy(*args, **kwargs):
        calls.append(len(kwargs["pixel_values"]))
        return encoder(*args, **kwargs)

    sam.model.get_vision_features = spy
    seg = Segmentation("sample_data/OSBS_029.tif", segmenter=sam, tile_size=256, overlap=32)
    n_tiles = len(seg.plan)
    assert n_tiles == 4
    frames = [seg.segment(p) for p in ("tree", "dead tree", ["tree", "shadow"])]
    assert sum(calls) == n_tiles and len(calls) == 2  # two batches of two, once for all three calls
    assert len(seg.features) == n_tiles

    # the same objects as the one-shot pipeline, which runs the encoder every time
    want = geoseg.segment("sample_data/OSBS_029.tif", ["tree", "shadow"], segmenter=sam, tile_size=256, overlap=32)
    for got in (frames[2], frames[2][frames[2].label == "tree"]):
        if len(got) != len(want):
            want = want[want.label == "tree"]
        assert len(got) == len(want) > 0
        assert got["label"].tolist() == want["label"].tolist()
        assert got["score"].round(4).tolist() == want["score"].round(4).tolist()
        assert got.geometry.symmetric_difference(want.geometry).area.sum() <= 1e-6 * want.area.sum()
    seg.clear()
    assert not seg.features
