"""The SAM 3 backend, on a tiny random SAM 3 built offline (geoseg.testing.sam3).

The reference for equivalence is transformers' own path: Sam3Processor -> Sam3Model
-> post_process_instance_segmentation, one tile and one prompt at a time.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

# Before anything imports huggingface_hub, which reads it once.
os.environ["HF_HUB_OFFLINE"] = "1"

torch = pytest.importorskip("torch", reason="the sam3 extra (torch, transformers) is not installed")
transformers = pytest.importorskip("transformers", reason="the sam3 extra (torch, transformers) is not installed")

from geoseg.backends.sam3 import Sam3Segmenter  # noqa: E402
from geoseg.core.segmenter import Detection, load_segmenter  # noqa: E402
from geoseg.errors import ModelLoadError, PromptError, RunError, UsageError  # noqa: E402
from geoseg.testing.sam3 import build_tiny_sam3  # noqa: E402

# Scores from the same weights and pixels: float32 rounding only. Masks: a pixel whose
# probability sits on the threshold may flip between two bilinear implementations.
SCORE_TOL = 1e-4
MASK_IOU = 0.99


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_sam3(tmp_path_factory.mktemp("tiny_sam3")))


@pytest.fixture(scope="session")
def reference_model(tiny_dir: str):
    from transformers import Sam3Model, Sam3Processor

    return Sam3Processor.from_pretrained(tiny_dir), Sam3Model.from_pretrained(tiny_dir).eval()


def cpu_segmenter(model: str, **options) -> Sam3Segmenter:
    """On the CPU whatever the machine, so results compare with the CPU reference."""
    return Sam3Segmenter(model=model, device="cpu", **options)


@pytest.fixture(scope="module")
def seg(tiny_dir: str) -> Sam3Segmenter:
    return cpu_segmenter(tiny_dir, score_threshold=0.3, batch_size=4)


def make_tiles(n: int, size: int = 1008, seed: int = 0) -> np.ndarray:
    """`n` tiles of coloured rectangles on grass green, with a little noise."""
    rng = np.random.default_rng(seed)
    tiles = np.empty((n, size, size, 3), np.uint8)
    for t in tiles:
        t[:] = (60, 110, 50)
        for _ in range(6):
            r, c = rng.integers(0, size * 3 // 4, 2)
            h, w = rng.integers(size // 10, size // 3, 2)
            t[r : r + h, c : c + w] = rng.integers(0, 256, 3)
        t[:] = np.clip(t + rng.normal(0, 6, t.shape), 0, 255).astype(np.uint8)
    return tiles


def paste(det: Detection, shape: tuple[int, int]) -> np.ndarray:
    full = np.zeros(shape, bool)
    r, c = det.origin
    full[r : r + det.mask.shape[0], c : c + det.mask.shape[1]] = det.mask
    return full


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def reference(reference_model, tile: np.ndarray, prompt: str, threshold: float) -> list[tuple[float, np.ndarray]]:
    """(score, full mask) of each instance, best first, by transformers' own pipeline."""
    processor, model = reference_model
    inputs = processor(images=tile, text=prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model(**inputs)
    res = processor.post_process_instance_segmentation(
        out, threshold=threshold, mask_threshold=0.5, target_sizes=[tile.shape[:2]]
    )[0]
    found = [(float(s), m.numpy().astype(bool)) for s, m in zip(res["scores"], res["masks"], strict=True)]
    return sorted([f for f in found if f[1].any()], key=lambda f: -f[0])


def assert_same(ours: list[Detection], theirs: list[tuple[float, np.ndarray]], shape, score_tol, mask_iou) -> None:
    ours = sorted(ours, key=lambda d: -d.score)
    assert len(ours) == len(theirs), ([d.score for d in ours], [s for s, _ in theirs])
    for det, (score, mask) in zip(ours, theirs, strict=True):
        assert det.score == pytest.approx(score, abs=score_tol)
        assert iou(paste(det, shape), mask) >= mask_iou


def assert_close(a: list[list[Detection]], b: list[list[Detection]], shape=(1008, 1008)) -> None:
    """Same detections in the same order, up to float32 noise between batch shapes."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert [d.label for d in x] == [d.label for d in y]
        assert [d.score for d in x] == pytest.approx([d.score for d in y], abs=1e-5)
        assert all(iou(paste(p, shape), paste(q, shape)) >= 0.999 for p, q in zip(x, y, strict=True))


# -- equivalence ---------------------------------------------------------------------


def test_matches_transformers_postprocessing(seg, reference_model):
    tiles = make_tiles(2, seed=1)
    found = seg.segment(tiles, ["red"])
    assert len(found) == 2
    for tile, ours in zip(tiles, found, strict=True):
        theirs = reference(reference_model, tile, "red", seg.score_threshold)
        assert len(theirs) >= 3, "the tiny model should find something to compare"
        assert_same(ours, theirs, tile.shape[:2], SCORE_TOL, MASK_IOU)


@pytest.mark.parametrize("size", [512, 1500])
def test_tiles_of_other_sizes_are_resized_like_the_processor(seg, reference_model, size):
    # The processor resizes uint8 and rounds to uint8 before normalising; we resize in
    # float on the device. So pixels may differ by one uint8 level: 2/255 once normalised.
    processor, _ = reference_model
    tile = make_tiles(1, size=size, seed=2)[0]
    ours = seg._preprocess(tile[None])
    theirs = processor(images=tile, return_tensors="pt").pixel_values
    assert ours.shape == theirs.shape == (1, 3, 1008, 1008)
    assert (ours - theirs).abs().max().item() <= 2 / 255 + 1e-5


def test_masks_are_mapped_back_to_a_512_tile(tiny_dir, reference_model, monkeypatch):
    # Same pixels as the reference (see above), so the mask path alone is compared.
    processor, _ = reference_model
    seg = cpu_segmenter(tiny_dir, score_threshold=0.3)
    tile = make_tiles(1, size=512, seed=2)[0]
    same_pixels = lambda tiles: processor(images=list(tiles), return_tensors="pt").pixel_values  # noqa: E731
    monkeypatch.setattr(seg, "_preprocess", same_pixels)
    ours = seg.segment(tile[None], ["green"])[0]
    assert ours
    for det in ours:
        r, c = det.origin
        assert r + det.mask.shape[0] <= 512 and c + det.mask.shape[1] <= 512
    assert_same(ours, reference(reference_model, tile, "green", seg.score_threshold), (512, 512), SCORE_TOL, MASK_IOU)


def test_batched_equals_one_by_one(seg):
    tiles = make_tiles(4, seed=3)
    batched = seg.segment(tiles, ["red", "green"])
    single = [seg.segment(t[None], ["red", "green"])[0] for t in tiles]
    assert len(batched) == 4 and all(batched)
    assert_close(batched, single)


def test_prompts_reuse_vision_and_text_features(tiny_dir, monkeypatch):
    seg = cpu_segmenter(tiny_dir, score_threshold=0.3, batch_size=2)
    calls = {"vision": 0, "text": 0}
    for name, key in (("get_vision_features", "vision"), ("get_text_features", "text")):
        real = getattr(seg.model, name)

        def spy(*args, _real=real, _key=key, **kwargs):
            calls[_key] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(seg.model, name, spy)
    tiles = make_tiles(4, seed=4)
    together = seg.segment(tiles, ["red", "green", "blue"])
    assert calls == {"vision": 2, "text": 3}  # 2 batches of 2 tiles; 3 prompts
    apart = [seg.segment(tiles, [p]) for p in ("red", "green", "blue")]
    assert calls == {"vision": 8, "text": 3}  # text features cached across calls
    merged = [[d for run in apart for d in run[i]] for i in range(4)]
    assert_close(together, merged)
    assert {d.label for tile in together for d in tile} == {"red", "green", "blue"}


def count_head_rows(seg: Sam3Segmenter, monkeypatch) -> list[int]:
    """The rows (tile x prompt) of each call of the heads, as the calls happen."""
    rows: list[int] = []
    real = seg.model.forward

    def spy(*args, **kwargs):
        rows.append(kwargs["vision_embeds"].fpn_hidden_states[0].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(seg.model, "forward", spy)
    return rows


def test_tiles_times_prompts_in_one_call_match_transformers(tiny_dir, reference_model, monkeypatch):
    seg = cpu_segmenter(tiny_dir, score_threshold=0.3, batch_size=3)
    rows = count_head_rows(seg, monkeypatch)
    tiles, prompts = make_tiles(3, seed=10), ["red", "green", "blue"]
    found = seg.segment(tiles, prompts)
    assert rows == [9]  # 3 tiles x 3 prompts in one call
    for tile, ours in zip(tiles, found, strict=True):
        labels = [d.label for d in ours]
        assert labels == sorted(labels, key=prompts.index)  # prompt by prompt, each best first
        for prompt in prompts:
            theirs = reference(reference_model, tile, prompt, seg.score_threshold)
            assert theirs, "the tiny model should find something to compare"
            assert_same([d for d in ours if d.label == prompt], theirs, tile.shape[:2], SCORE_TOL, MASK_IOU)


def test_many_prompts_split_evenly_over_calls(tiny_dir, monkeypatch):
    import geoseg.backends.sam3.detector as backend

    tiles, prompts = make_tiles(2, size=336, seed=11), ["red", "green", "blue", "grey", "white"]
    seg = cpu_segmenter(tiny_dir, score_threshold=0.3, batch_size=2)
    together = seg.segment(tiles, prompts)
    monkeypatch.setattr(backend, "HEAD_ROWS", 4)
    rows = count_head_rows(seg, monkeypatch)
    split = seg.segment(tiles, prompts)
    assert rows == [4, 4, 2]  # 2 + 2 + 1 prompts: three calls are needed, none of them wasted
    assert_close(split, together, shape=(336, 336))
    assert {d.label for tile in split for d in tile} == set(prompts)


def test_tiles_of_536_px_and_a_prompt_subset_match_transformers(tiny_dir, reference_model, monkeypatch):
    # As refinement calls it: sub-tiles smaller than the model's input, some of the prompts.
    # Same pixels as the reference (see above), so resizing back to 536 px is what is compared.
    processor, _ = reference_model
    seg = cpu_segmenter(tiny_dir, score_threshold=0.3, batch_size=2)
    tiles = make_tiles(2, size=536, seed=12)
    same_pixels = lambda tiles: processor(images=list(tiles), return_tensors="pt").pixel_values  # noqa: E731
    monkeypatch.setattr(seg, "_preprocess", same_pixels)
    found = seg.segment(tiles, ["green", "blue"])
    for tile, ours in zip(tiles, found, strict=True):
        for det in ours:
            r, c = det.origin
            assert r + det.mask.shape[0] <= 536 and c + det.mask.shape[1] <= 536
        for prompt in ("green", "blue"):
            theirs = reference(reference_model, tile, prompt, seg.score_threshold)
            assert_same([d for d in ours if d.label == prompt], theirs, (536, 536), SCORE_TOL, MASK_IOU)
    assert any(ours for ours in found)


def test_next_batch_is_uploaded_ahead_once(tiny_dir, monkeypatch):
    seg = cpu_segmenter(tiny_dir, score_threshold=0.3, batch_size=2)
    tiles = make_tiles(5, size=256, seed=13)
    expected = [seg.segment(t[None], ["red"])[0] for t in tiles]
    uploads = []
    real = seg._upload

    def spy(batch):
        uploads.append(batch[:, 0, 0, 0].tolist())
        return real(batch)

    monkeypatch.setattr(seg, "_upload", spy)
    found = seg.segment(tiles, ["red"])
    assert uploads == [tiles[i:i + 2, 0, 0, 0].tolist() for i in (0, 2, 4)]  # each tile once, in order
    assert_close(found, expected, shape=(256, 256))


# CUDA's way (in one gather, or in several of at most 50 pixels) and the CPU's
@pytest.mark.parametrize(("gather", "limit"), [(True, 2**26), (True, 50), (False, None)])
def test_crops_and_origins_of_masks(gather, limit, monkeypatch):
    import geoseg.backends.sam3.postprocess as backend
    from geoseg.backends.sam3.postprocess import crops as _crops

    monkeypatch.setattr(backend, "GATHER_PIXELS", limit)

    rng = np.random.default_rng(14)
    masks = np.zeros((5, 40, 30), bool)
    masks[0, 3:9, 4:20] = rng.random((6, 16)) > 0.3
    masks[0, 3, 4] = masks[0, 8, 19] = True
    masks[2] = True  # the whole tile
    masks[3, 39, 29] = True  # one corner pixel
    masks[4, 10:12, 0:2] = True
    origins, crops = _crops(torch.from_numpy(masks), gather=gather)
    assert origins[1] is None and crops[1] is None  # empty
    for mask, origin, crop in zip(masks, origins, crops, strict=True):
        if origin is None:
            continue
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert origin == (rows[0], cols[0])
        np.testing.assert_array_equal(crop, mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
    assert _crops(torch.zeros((0, 4, 4), dtype=torch.bool), gather=gather) == ([], [])
    assert _crops(torch.zeros((2, 4, 4), dtype=torch.bool), gather=gather) == ([None, None], [None, None])


def test_compiled_vision_encoder_gives_the_same_detections(tiny_dir, monkeypatch):
    # Dynamo's own "eager" backend: the encoder is traced and run as a graph, with no C++
    # build (the default inductor backend takes ~30 s here; benchmarks/ measures it on GPU).
    import functools

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    tiles = make_tiles(3, size=256, seed=15)
    plain = cpu_segmenter(tiny_dir, score_threshold=0.3, batch_size=2).segment(tiles, ["red", "green"])
    seg = cpu_segmenter(tiny_dir, score_threshold=0.3, batch_size=2, compile=True)
    assert seg.model.vision_encoder._compiled_call_impl is not None
    assert "compile" not in seg.config()  # it changes no result
    compiled = seg.segment(tiles, ["red", "green"])  # batches of 2 and 1: a second shape
    assert_close(compiled, plain, shape=(256, 256))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu.sh runs it)")


@cuda
@pytest.mark.parametrize("size", [1008, 536])
def test_cuda_path_matches_the_cpu(tiny_dir, size):
    # The CUDA-only parts: pinned uploads on a side stream, the next batch uploaded ahead,
    # crops cut by one gather. cuDNN convolutions use TF32 by default, so fp32 is near,
    # not bit-equal; bf16 as test_bf16_on_cpu_casts_inputs allows.
    tiles, prompts = make_tiles(5, size=size, seed=16), ["red", "green", "blue"]
    cpu = cpu_segmenter(tiny_dir, score_threshold=0.3, batch_size=2).segment(tiles, prompts)
    gpu = Sam3Segmenter(model=tiny_dir, device="cuda", dtype="fp32", score_threshold=0.3, batch_size=2)
    assert gpu._copy_stream is not None
    found = gpu.segment(tiles, prompts)  # batches of 2, 2 and 1
    for ours, theirs in zip(found, cpu, strict=True):
        assert [d.label for d in ours] == [d.label for d in theirs]
        assert [d.score for d in ours] == pytest.approx([d.score for d in theirs], abs=2e-3)
        shape = (size, size)
        assert all(iou(paste(a, shape), paste(b, shape)) >= 0.98 for a, b in zip(ours, theirs, strict=True))
    half = Sam3Segmenter(model=tiny_dir, device="cuda", dtype="bf16", score_threshold=0.3, batch_size=2)
    for ours, theirs in zip(half.segment(tiles, prompts), cpu, strict=True):
        for prompt in prompts:  # each prompt's best instance is found in bf16 too (order may differ)
            best = next(d for d in theirs if d.label == prompt)
            mask = paste(best, (size, size))
            assert any(abs(d.score - best.score) <= 0.05 and iou(paste(d, (size, size)), mask) >= 0.8
                       for d in ours if d.label == prompt)


# -- selection and output ------------------------------------------------------------


def test_masks_are_cropped_to_their_box(seg):
    found = seg.segment(make_tiles(1, seed=5), ["red"])[0]
    assert found
    for det in found:
        assert det.mask.dtype == bool and det.mask.ndim == 2
        # tight box: every edge row and column holds a mask pixel
        assert det.mask[0].any() and det.mask[-1].any() and det.mask[:, 0].any() and det.mask[:, -1].any()
        assert det.origin[0] >= 0 and det.origin[1] >= 0
        assert 0.3 <= det.score <= 1


def test_score_threshold_and_max_detections(tiny_dir):
    tiles = make_tiles(2, seed=6)
    everything = cpu_segmenter(tiny_dir, score_threshold=0.0, batch_size=2).segment(tiles, ["red"])
    best3 = cpu_segmenter(tiny_dir, score_threshold=0.0, max_detections=3, batch_size=2).segment(tiles, ["red"])
    for all_, top in zip(everything, best3, strict=True):
        assert len(all_) > 3
        assert [d.score for d in top] == pytest.approx(sorted((d.score for d in all_), reverse=True)[:3])
    high = cpu_segmenter(tiny_dir, score_threshold=0.7, batch_size=2).segment(tiles, ["red"])
    for all_, few in zip(everything, high, strict=True):
        assert [d.score for d in few] == pytest.approx([d.score for d in all_ if d.score >= 0.7])
        assert 0 < len(few) < len(all_)


def test_nms_drops_overlapping_masks(tiny_dir):
    tiles = make_tiles(1, seed=7)
    plain = cpu_segmenter(tiny_dir, score_threshold=0.0).segment(tiles, ["red", "green"])[0]
    nms = cpu_segmenter(tiny_dir, score_threshold=0.0, nms_iou=0.3).segment(tiles, ["red", "green"])[0]
    assert 0 < len(nms) < len(plain)
    kept = {(d.label, d.score) for d in plain}
    assert all((d.label, d.score) in kept for d in nms)
    for label in ("red", "green"):
        masks = [paste(d, (1008, 1008)) for d in nms if d.label == label]
        # NMS runs on the 288 px mask grid; full-resolution IoU differs slightly.
        worst = max((iou(a, b) for i, a in enumerate(masks) for b in masks[i + 1 :]), default=0.0)
        assert worst <= 0.3 + 0.03


def test_empty_batch(seg):
    assert seg.segment(np.zeros((0, 1008, 1008, 3), np.uint8), ["red"]) == []


def test_rejects_tiles_that_are_not_uint8_rgb(seg):
    with pytest.raises(UsageError, match="uint8"):
        seg.segment(np.zeros((1, 64, 64, 3), np.float32), ["red"])


# -- dtype and device ----------------------------------------------------------------


def test_bf16_on_cpu_casts_inputs(tiny_dir, monkeypatch):
    seg = cpu_segmenter(tiny_dir, dtype="bf16", score_threshold=0.3)
    assert seg.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in seg.model.parameters())
    seen = []
    real = seg.model.get_vision_features

    def spy(pixel_values, **kwargs):
        seen.append(pixel_values.dtype)
        return real(pixel_values=pixel_values, **kwargs)

    monkeypatch.setattr(seg.model, "get_vision_features", spy)
    tiles = make_tiles(1, seed=8)
    half = seg.segment(tiles, ["red"])[0]
    assert seen == [torch.bfloat16]
    full = cpu_segmenter(tiny_dir, dtype="fp32", score_threshold=0.3).segment(tiles, ["red"])[0]
    # bf16 keeps ~3 significant digits: the best instance is the same one.
    assert half and full
    assert half[0].score == pytest.approx(full[0].score, abs=0.05)
    assert iou(paste(half[0], (1008, 1008)), paste(full[0], (1008, 1008))) >= 0.8


def test_defaults(tiny_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="geoseg"):
        plain = Sam3Segmenter(model=tiny_dir)
    assert plain.score_threshold == 0.5 and plain.mask_threshold == 0.5
    assert plain.max_detections is None and plain.nms_iou is None
    if torch.cuda.is_available():
        assert plain.device.type == "cuda" and plain.dtype in (torch.bfloat16, torch.float16)
        assert plain.batch_size >= 1
    elif torch.backends.mps.is_available():
        assert plain.device.type == "mps" and plain.dtype == torch.float32
    else:
        assert plain.device.type == "cpu" and plain.dtype == torch.float32 and plain.batch_size == 1
        assert sum("running on the CPU" in r.getMessage() for r in caplog.records) == 1


def test_cpu_estimate_is_measured_after_warming_up(seg, caplog):
    import re
    import time

    tiles = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    with caplog.at_level(logging.WARNING, logger="geoseg"):
        seg.begin(120, ["red", "green"])
        seg.segment(tiles, ["red", "green"])  # warms up: nothing measured yet
        assert not [r for r in caplog.records if "estimated" in r.getMessage()]
        t0 = time.perf_counter()
        seg.segment(tiles, ["red", "green"])
        took = time.perf_counter() - t0
        seg.segment(tiles, ["red", "green"])  # logged once per run
    [record] = [r for r in caplog.records if "estimated" in r.getMessage()]
    message = record.getMessage()
    assert "116 tile(s) x 2 prompt(s) left of 120" in message
    per_tile = float(re.search(r"\(([0-9.e+-]+) s per tile", message).group(1))
    assert 0.2 * took / 2 <= per_tile <= took / 2 * 1.1  # measured inside the call timed here (2 digits shown)


@pytest.mark.parametrize(("option", "value", "match"), [("dtype", "fp8", "dtype='fp8'"),
                                                              ("device", "tpu9", "device='tpu9'")])
def test_bad_dtype_or_device(tiny_dir, option, value, match):
    with pytest.raises(UsageError, match=match):
        Sam3Segmenter(model=tiny_dir, **{option: value})


def test_registry_takes_every_cli_option(tiny_dir):
    seg = load_segmenter(
        "sam3", model=tiny_dir, device="cpu", dtype="fp32", batch_size=3, score_threshold=0.4,
        mask_threshold=0.6, max_detections=5, nms_iou=0.5, compile=True,
    )  # fmt: skip
    assert isinstance(seg, Sam3Segmenter)
    assert (seg.batch_size, seg.score_threshold, seg.mask_threshold, seg.max_detections, seg.nms_iou) == (
        3, 0.4, 0.6, 5, 0.5,
    )  # fmt: skip
    assert seg.compiled  # compiles at its first batch, not here


# -- out of memory -------------------------------------------------------------------


def test_oom_halves_the_batch_and_loses_no_tile(tiny_dir, monkeypatch, caplog):
    tiles = make_tiles(5, seed=9)
    expected = cpu_segmenter(tiny_dir, score_threshold=0.3, batch_size=1).segment(tiles, ["red"])
    seg = cpu_segmenter(tiny_dir, score_threshold=0.3, batch_size=4)
    sizes = []
    real = seg._segment_batch

    def fits_two(batch, prompts, **kwargs):
        sizes.append(len(batch))
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(batch, prompts, **kwargs)

    monkeypatch.setattr(seg, "_segment_batch", fits_two)
    with caplog.at_level(logging.WARNING, logger="geoseg"):
        found = seg.segment(tiles, ["red"])
    assert sizes == [4, 2, 2, 1]
    assert seg.batch_size == 2
    assert any("lowered from 4 to 2" in r.getMessage() for r in caplog.records)
    assert_close(found, expected)
    seg.segment(tiles[:2], ["red"])  # the next call starts at the lowered size
    assert sizes[4:] == [2]


def test_oom_with_one_tile_is_a_run_error(tiny_dir, monkeypatch):
    seg = cpu_segmenter(tiny_dir, batch_size=2)

    def never_fits(batch, prompts, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(seg, "_segment_batch", never_fits)
    with pytest.raises(RunError, match="out of GPU memory"):
        seg.segment(make_tiles(2, size=64), ["red"])


# -- loading -------------------------------------------------------------------------


def assert_one_line(err: pytest.ExceptionInfo, *words: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError) as err:
        Sam3Segmenter(model=str(tmp_path / "nowhere"))
    assert_one_line(err, "nowhere", "no such folder", "model=")


def test_folder_without_a_model(tmp_path):
    with pytest.raises(ModelLoadError) as err:
        Sam3Segmenter(model=str(tmp_path))
    assert_one_line(err, str(tmp_path), "config.json", "model='DIR'")


def test_folder_with_broken_weights(tiny_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError) as err:
        Sam3Segmenter(model=str(broken))
    assert_one_line(err, str(broken), "model='DIR'")


def test_hub_id_offline_and_not_cached(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelLoadError) as err:
        Sam3Segmenter(model="facebook/sam3")
    assert_one_line(err, "facebook/sam3", "HF_HUB_OFFLINE=1", "https://huggingface.co/facebook/sam3", "model='DIR'")


def test_gated_repo(tmp_path, monkeypatch):
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError
    from transformers import Sam3Model

    # Cached config, offline: the load itself meets the gate (a hub that says so: test_sam3_offline).
    repo = tmp_path / "models--facebook--sam3"
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def gated(*args, **kwargs):
        cause = GatedRepoError.__new__(GatedRepoError)
        Exception.__init__(cause, "401 Client Error: access to model facebook/sam3 is restricted")
        raise OSError("You are trying to access a gated repo.\nMake sure to have access to it") from cause

    monkeypatch.setattr(Sam3Model, "from_pretrained", gated)
    with pytest.raises(ModelLoadError) as err:
        Sam3Segmenter(model="facebook/sam3")
    assert_one_line(err, "gated", "https://huggingface.co/facebook/sam3", "hf auth login", "model='DIR'")


# -- prompts -------------------------------------------------------------------------


def test_long_prompt_names_the_token_count(seg):
    # The tiny tokenizer has one token per character, plus start and end tokens.
    with pytest.raises(PromptError, match=r"42 tokens .* at most 32"):
        seg.check_prompts(["red", "a" * 40])
    seg.check_prompts(["a" * 30])  # 32 tokens: fits
    with pytest.raises(PromptError, match="42 tokens"):
        seg.segment(make_tiles(1, size=64), ["a" * 40])


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt(seg, prompt):
    with pytest.raises(PromptError, match="empty prompt"):
        seg.check_prompts(["red", prompt])


def test_importing_the_backend_does_not_import_torch():
    code = "import sys, geoseg.backends.sam3; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))


# -- end to end ----------------------------------------------------------------------


def test_cli_end_to_end(tiny_dir, tmp_path):
    import pyogrio
    from click.testing import CliRunner

    from geoseg.cli import main
    from geoseg.testing import make_scene

    raster = make_scene(tmp_path / "scene.tif", size=600, seed=2)
    out = tmp_path / "out.gpkg"
    args = ["segment", str(raster), "-p", "red", "-p", "green", "-o", str(out), "--backend", "sam3"]
    result = CliRunner().invoke(main, [*args, "--model", tiny_dir, "--score-threshold", "0"])
    assert result.exit_code == 0, result.output
    frame = pyogrio.read_dataframe(out)
    assert set(frame["label"]) == {"red", "green"}
    assert frame.geometry.is_valid.all() and not frame.geometry.is_empty.any()


def test_cli_compile_reaches_the_backend(tmp_path):
    from click.testing import CliRunner

    from geoseg.cli import main
    from geoseg.testing import make_scene

    raster = make_scene(tmp_path / "scene.tif", size=64, seed=2)
    args = ["segment", str(raster), "-p", "red", "-o", str(tmp_path / "out.gpkg"), "--compile"]
    result = CliRunner().invoke(main, [*args, "--backend", "colors"])
    assert result.exit_code == 2, result.output  # only sam3 takes it: said before any work
    assert "does not take --compile" in result.output
    assert not (tmp_path / "out.gpkg").exists()


def test_resume_refuses_a_model_folder_whose_weights_were_replaced(tmp_path):
    # a local --model folder is recorded by more than its path: new weights in the same folder
    # would mix two models' detections in one output
    from click.testing import CliRunner

    from geoseg.cli import main
    from geoseg.testing import make_scene

    model = build_tiny_sam3(tmp_path / "model")
    (tmp_path / "in").mkdir()
    make_scene(tmp_path / "in" / "a.tif", size=128, seed=1)
    (tmp_path / "in" / "b.tif").write_bytes(b"II*\0 not a raster")  # this file fails
    out = tmp_path / "out"
    out.mkdir()
    args = ["segment", str(tmp_path / "in"), "-p", "tree", "--model", str(model), "--device", "cpu",
            "--output-dir", str(out), "--tile-size", "128", "--overlap", "16", "-q"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 1 and "1 of 2 files failed" in first.output  # its work folder is kept
    same = CliRunner().invoke(main, args)  # the same weights: resumes (and b.tif fails again)
    assert same.exit_code == 1 and "1 of 2 files failed" in same.output
    build_tiny_sam3(model, seed=7)  # other weights, same folder
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2, again.output
    line = again.output.strip().splitlines()[-1]
    assert "other weights in the model folder (folder:" in line and "--restart" in line
