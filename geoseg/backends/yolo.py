"""A student model: Ultralytics YOLO instance segmentation, trained by `geoseg train`.

The model folder holds the weights and `geoseg.json` (classes, chip size, ground
resolution, bands, training settings). Prompts are the student's class names.
Tiles go through the network at their own size (padded to the stride, never
resized), so objects keep the pixel size the student learnt at; masks come back at tile
resolution, cut to their boxes.

Ultralytics (AGPL-3.0) is imported only when a `YoloSegmenter` is built, with
its network checks off and its settings in a temporary folder: nothing here
goes online or writes to the user's home.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.core.detections import Detections
from geoseg.core.segmenter import check_prompts
from geoseg.errors import ModelLoadError, PromptError, UsageError, option

MANIFEST = "geoseg.json"
WEIGHTS = "weights.pt"
INSTALL = 'pip install ultralytics (AGPL-3.0; in a clone of geoseg: pip install ".[yolo]")'
STRIDE = 32
DEFAULT_SCORE = 0.25


def import_ultralytics() -> Any:
    """The ultralytics package, set up offline with its settings in a temporary folder.

    Raises ModelLoadError, in one line saying what to install, when it is missing.
    """
    if "ultralytics" not in sys.modules:
        os.environ.setdefault("YOLO_OFFLINE", "1")  # else it resolves DNS names at import
        os.environ.setdefault("YOLO_VERBOSE", "False")  # geoseg says what happens
        if "YOLO_CONFIG_DIR" not in os.environ:
            folder = tempfile.mkdtemp(prefix="geoseg-ultralytics-")
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            os.environ["YOLO_CONFIG_DIR"] = folder
    try:
        import ultralytics
        from ultralytics.data import utils as data_utils
    except ImportError:
        raise ModelLoadError(f"the yolo student needs Ultralytics, which is not installed: {INSTALL}") from None
    # Checking a dataset downloads a font for plots; geoseg never plots with it.
    data_utils.check_font = lambda *args, **kwargs: None
    return ultralytics


def keep_torch_threads() -> None:
    """Ultralytics sets torch's CPU threads to cores - 1 when it picks a device; keep the caller's."""
    import torch
    from ultralytics.utils import torch_utils

    torch_utils.NUM_THREADS = torch.get_num_threads()


def half_precision(half: bool) -> dict[str, Any]:
    """Ultralytics' argument for fp16 or fp32: `quantize` since 8.4, `half` before."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    if "quantize" in DEFAULT_CFG_DICT:
        return {"quantize": 16 if half else None}
    return {"half": half}


def read_manifest(model: str | os.PathLike[str]) -> dict[str, Any]:
    """The `geoseg.json` of a model folder made by `geoseg train`; ModelLoadError if it is none."""
    folder = Path(model).expanduser()
    shown = option("model", str(model))
    if not folder.is_dir():
        raise ModelLoadError(f"{shown}: no such folder; pass a model folder made by `geoseg train`")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        raise ModelLoadError(f"{shown}: the folder has no readable {MANIFEST}, so `geoseg train` did not make it; "
                             f"train a student with `geoseg train DATASET -o DIR`") from None
    if not (folder / manifest.get("weights", WEIGHTS)).is_file():
        raise ModelLoadError(f"{shown}: its weights file {manifest.get('weights', WEIGHTS)} is missing")
    return manifest  # type: ignore[no-any-return]


def metres(manifest: dict[str, Any]) -> float | None:
    """A student's training resolution in metres (`resolution_m`; a folder from before it was
    recorded: `resolution`, taken as metres)."""
    value = manifest.get("resolution_m", manifest.get("resolution"))
    return None if value is None else float(value)


def file_hash(path: str | os.PathLike[str]) -> str:
    """sha256 of a file (a student's weights are a few MB: cheap at every start)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class YoloSegmenter:
    """Segment tiles with a student trained by `geoseg train`.

    Args:
        model: the model folder (weights + geoseg.json).
        device: "cuda", "cuda:1", "mps" or "cpu"; default CUDA when there is one.
        dtype: "fp16" or "fp32"; default fp16 on CUDA, fp32 elsewhere.
        batch_size: tiles per forward pass (default 16 on CUDA, 4 elsewhere).
        score_threshold: keep instances scoring at least this (default: the threshold `geoseg distill`
            chose on held-out blocks, kept in geoseg.json, else 0.25).
        max_detections: the most instances per tile (the model's `max_det`).
        nms_iou: non-maximum suppression IoU of boxes of one class.
    """

    name = "yolo"

    def __init__(self, *, model: str | None = None, device: str | None = None, dtype: str | None = None,
                 batch_size: int | None = None, score_threshold: float | None = None, max_detections: int = 300,
                 nms_iou: float = 0.7) -> None:
        if model is None:
            raise UsageError(f"the yolo backend needs {option('model', 'DIR')}: a folder made by `geoseg train`")
        self.folder = Path(model).expanduser()
        self.manifest = read_manifest(self.folder)
        import_ultralytics()
        from ultralytics import YOLO

        self.device = pick_device(device)
        if dtype not in (None, "fp16", "fp32"):
            raise UsageError(f"{option('dtype', dtype)}: the yolo backend runs in fp16 or fp32")
        self.half = (dtype or ("fp16" if self.device.startswith("cuda") else "fp32")) == "fp16"
        if self.half and not self.device.startswith("cuda"):
            raise UsageError(f"{option('dtype', 'fp16')} needs a CUDA device; use {option('dtype', 'fp32')}")
        self._precision = half_precision(self.half)
        weights = self.folder / self.manifest.get("weights", WEIGHTS)
        self.sha256 = file_hash(weights)
        try:
            self.model = YOLO(str(weights), task="segment")
        except Exception as err:
            raise ModelLoadError(f"{option('model', str(model))}: cannot load {weights.name} ({err})") from err
        self.classes: list[str] = [str(n) for n in self.manifest["classes"]]
        self.resolution: float | None = metres(self.manifest)
        self.bands: list[int] | None = self.manifest.get("bands")
        self.batch_size = int(batch_size or (16 if self.device.startswith("cuda") else 4))
        if self.batch_size < 1:
            raise UsageError(f"{option('batch_size', batch_size)}: give 1 or more")
        self.score_threshold = float(self.manifest.get("score_threshold", DEFAULT_SCORE) if score_threshold is None
                                     else score_threshold)
        self.max_objects = int(max_detections)
        self.nms_iou = float(nms_iou)

    @staticmethod
    def preferred_resolution(*, model: str | None = None, **_: Any) -> float | None:
        """The ground resolution the student was trained at, in metres, from its folder (no model loads)."""
        return None if model is None else metres(read_manifest(model))

    @staticmethod
    def preferred_bands(*, model: str | None = None, **_: Any) -> list[int] | None:
        """The bands the student was trained on (None: the raster's default three), from its folder."""
        return None if model is None else read_manifest(model).get("bands")

    def config(self) -> dict[str, Any]:
        """What changes the results: the weights (by hash) and the thresholds."""
        return {"model": str(self.folder), "sha256": self.sha256, "half": self.half,
                "score_threshold": self.score_threshold, "max_detections": self.max_objects,
                "nms_iou": self.nms_iou}

    def check_prompts(self, prompts: Sequence[str]) -> None:
        for p in check_prompts(prompts):
            if p not in self.classes:
                raise PromptError(f"prompt {p!r} is not a class of the student {self.folder}: it knows "
                                  f"{', '.join(self.classes)}")

    def segment(self, tiles: np.ndarray, prompts: Sequence[str]) -> list[Detections]:
        """One `Detections` per tile (uint8 N x H x W x 3), masks cut to their boxes."""
        self.check_prompts(prompts)
        wanted = [self.classes.index(p) for p in prompts]
        out: list[Detections] = []
        for lo in range(0, len(tiles), self.batch_size):
            out += self._batch(tiles[lo:lo + self.batch_size], wanted)
        return out

    def _batch(self, tiles: np.ndarray, wanted: list[int]) -> list[Detections]:
        h, w = tiles.shape[1:3]
        size = (-(-h // STRIDE) * STRIDE, -(-w // STRIDE) * STRIDE)
        # Padded (with 0, as export-dataset pads edge chips) to the stride, never resized: objects keep
        # the pixel size the student learnt. BGR, as OpenCV reads the training chips.
        padded = np.zeros((len(tiles), *size, 3), np.uint8)
        padded[:, :h, :w] = tiles[..., ::-1]
        images = list(padded)
        keep_torch_threads()
        results = self.model.predict(images, imgsz=size, conf=self.score_threshold, iou=self.nms_iou,
                                     max_det=self.max_objects, classes=wanted, device=self.device,
                                     retina_masks=True, verbose=False, **self._precision)
        return [self._detections(r, h, w) for r in results]

    def _detections(self, result: Any, h: int, w: int) -> Detections:
        if result.masks is None or len(result.boxes) == 0:
            return Detections.empty()
        xyxy = result.boxes.xyxy.cpu().numpy()  # floor and ceil: every mask pixel inside the crop
        boxes = np.concatenate([np.floor(xyxy[:, :2]), np.ceil(xyxy[:, 2:])], axis=1).astype(int)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        masks = result.masks.data  # (N, H, W) at the padded tile's size, zero outside each box
        labels, scores, origins, crops = [], [], [], []
        for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            if x1 <= x0 or y1 <= y0:
                continue
            crop = (masks[k, y0:y1, x0:x1] > 0.5).cpu().numpy()
            if not crop.any():
                continue
            labels.append(self.classes[int(result.boxes.cls[k])])
            scores.append(float(result.boxes.conf[k]))
            origins.append((y0, x0))
            crops.append(crop)
        return Detections(labels, scores, origins, crops) if crops else Detections.empty()


def pick_device(device: str | None) -> str:
    """The device for Ultralytics ("cpu", "mps", "cuda:N"); UsageError for one torch cannot use."""
    import torch

    if device is None:
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"{option('device', device)}: no CUDA GPU is visible to torch; use {option('device', 'cpu')}")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise UsageError(f"{option('device', device)}: use cuda, cuda:N, mps or cpu")
    return "cuda:0" if device == "cuda" else device
