"""Training a student: a YOLO dataset from `export-dataset` -> one model folder.

The folder holds `weights.pt` (the epoch best on the val split), `results.csv`
(the training curve) and `geoseg.json`: classes, chip size, ground resolution
and bands (so the `yolo` backend reads as the student was trained), the
dataset's provenance, the training settings and the validation metrics.

Ultralytics runs inside a work folder next to the output (its runs, label
caches and settings never land in the working directory, the dataset or the
home folder); the output appears only once training has finished.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from pyproj import CRS
from tqdm import tqdm

from geoseg.analysis.dataset import MANIFEST as DATASET_MANIFEST
from geoseg.analysis.dataset import export_dataset
from geoseg.analysis.folders import building, check_out_dir
from geoseg.backends.yolo import MANIFEST, WEIGHTS, file_hash, import_ultralytics, keep_torch_threads, pick_device
from geoseg.errors import UsageError, option
from geoseg.io.raster import crs_resolution
from geoseg.io.review import read_reviewed

log = logging.getLogger("geoseg")

ARCHITECTURE = "yolo11n-seg.yaml"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
METRICS = {"mask_map50": "metrics/mAP50(M)", "mask_map50_95": "metrics/mAP50-95(M)",
           "box_map50": "metrics/mAP50(B)", "box_map50_95": "metrics/mAP50-95(B)",
           "mask_precision": "metrics/precision(M)", "mask_recall": "metrics/recall(M)"}


def read_dataset(dataset: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a YOLO dataset written by `export-dataset`; UsageError naming the fix otherwise."""
    folder = Path(dataset)
    try:
        manifest = json.loads((folder / DATASET_MANIFEST).read_text())
    except (OSError, ValueError):
        raise UsageError(f"DATASET {dataset}: no {DATASET_MANIFEST} in it, so export-dataset did not write it; "
                         f"export one with `geoseg export-dataset RASTERS VECTOR -o DIR --format yolo`, or give "
                         f"RASTERS VECTOR") from None
    if manifest.get("format") != "yolo":
        raise UsageError(f"DATASET {dataset} is in {manifest.get('format')} format: export it again with "
                         f"--format yolo")
    summary = manifest.get("summary", {})
    for split in ("train", "val"):
        if not summary.get("chips", {}).get(split):
            raise UsageError(f"DATASET {dataset}: its {split} split holds no chip; export it again from more "
                             f"rasters or with a smaller --chip-size")
    return manifest  # type: ignore[no-any-return]


def check_start(weights: str | None) -> None:
    """Refuse, in one line, a `--weights` checkpoint or architecture yaml Ultralytics cannot build a
    model from: before any work (needs `import_ultralytics` first)."""
    if weights is None:
        return
    shown = option("weights", weights)
    if not weights.endswith(".yaml") and not Path(weights).is_file():
        raise UsageError(f"{shown}: no such file; download the checkpoint first (geoseg never does), or leave it "
                         f"out to train from {ARCHITECTURE}")
    from ultralytics import YOLO

    try:
        YOLO(weights, task="segment")
    except Exception as err:  # a missing yaml, a file that is no checkpoint: Ultralytics' own words, on one line
        reason = " ".join(str(err).split()) or type(err).__name__
        what = "an architecture yaml Ultralytics can read" if weights.endswith(".yaml") else "a YOLO checkpoint"
        raise UsageError(f"{shown}: not {what} ({reason}); give one, or leave it out to train from "
                         f"{ARCHITECTURE}") from None


def check_dataset(dataset: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    """What Ultralytics would trip over, said in one line naming the file: every split of data.yaml
    holds images (val at least one), each image has its label file, every label line parses as
    `class x1 y1 x2 y2 ...` (3 points or more, coordinates in [0, 1]) with a class id below nc."""
    folder = Path(dataset)
    try:
        yaml = (folder / "data.yaml").read_text()
    except OSError:
        raise UsageError(f"DATASET {dataset}: no data.yaml in it: export it again with --format yolo") from None
    found = re.search(r"^nc:\s*(\d+)\s*$", yaml, re.M)
    nc = int(found.group(1)) if found else len(manifest.get("categories", []))
    splits = [m.group(1) for m in re.finditer(r"^(train|val|test):\s*\S", yaml, re.M)]
    for split in ("train", "val"):
        if split not in splits:
            raise UsageError(f"DATASET {folder / 'data.yaml'}: names no {split} images: export the dataset again")
    for split in splits:
        images = folder / "images" / split
        chips = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if images.is_dir() else []
        if not chips:
            raise UsageError(f"DATASET {dataset}: {images} holds no image: Ultralytics needs {split} images; export "
                             f"the dataset again (from more rasters, or with a smaller --chip-size)")
        for chip in chips:
            label = folder / "labels" / split / f"{chip.stem}.txt"
            if not label.is_file():
                raise UsageError(f"DATASET {dataset}: image {chip} has no label file {label} (an empty file marks "
                                 f"a chip without objects): export the dataset again")
            _check_label(label, nc)


def _check_label(path: Path, nc: int) -> None:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"label file {path}: cannot read it ({err}): export the dataset again") from None
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words:
            continue
        where = f"label file {path} line {n}"
        try:
            cls, coords = int(words[0]), [float(w) for w in words[1:]]
        except ValueError:
            raise UsageError(f"{where}: {line[:60]!r} is not `class x1 y1 x2 y2 ...` (a class id, then "
                             f"coordinates): fix it or export the dataset again") from None
        if not 0 <= cls < nc:
            raise UsageError(f"{where}: class id {cls} is not one of the {nc} classes of data.yaml (0 to {nc - 1}): "
                             f"fix it or export the dataset again")
        if len(coords) < 6 or len(coords) % 2 or not all(0 <= v <= 1 for v in coords):
            raise UsageError(f"{where}: a polygon needs 3 or more x y pairs between 0 and 1 (got {len(coords)} "
                             f"numbers): fix it or export the dataset again")


def ground_metres(manifest: dict[str, Any]) -> float | None:
    """The pixel size of the dataset's rasters in metres (in degrees: at each raster's centre), or None
    when they differ (by over 1 %)."""
    sizes = []
    for r in manifest["rasters"]:
        a, _, c, _, e, f = r["transform"][:6]
        bounds = (c, f + e * r["height"], c + a * r["width"], f) if e < 0 else (c, f, c + a * r["width"],
                                                                               f + e * r["height"])
        per_metre = crs_resolution(1.0, r["crs"], bounds)  # CRS units per metre, x and y
        sizes.append(abs(float(a)) / math.sqrt(per_metre[0] * per_metre[1]))
    if not sizes or max(sizes) > 1.01 * min(sizes):
        return None
    return round(sizes[0], 6)


def ground_resolution(manifest: dict[str, Any]) -> float | None:
    """The pixel size of the dataset's rasters (CRS units), or None when they differ (by over 1 %)."""
    sizes = [abs(float(r["transform"][0])) for r in manifest["rasters"]]
    if not sizes or max(sizes) > 1.01 * min(sizes):
        return None
    return round(sizes[0], 9)


def train(dataset: Any, out_dir: str | os.PathLike[str], *, vector: Any = None, epochs: int = 100,
          patience: int = 20, batch_size: int = 16, device: str | None = None, weights: str | None = None,
          chip_size: int = 512, label_field: str | None = None, split: str = "0.8,0.2", bands: str | None = None,
          seed: int = 0, workers: int = 2, progress: bool = False, reviewed: bool = False,
          overwrite: bool = False, **hyper: Any) -> dict[str, Any]:
    """Train a YOLO segmentation student; return its `geoseg.json`.

    Args:
        dataset: a YOLO dataset folder from `export_dataset`, or (with `vector`) rasters to export
            one from first (kept in the model folder, under dataset/).
        vector: the polygon layer labelling `dataset`'s rasters.
        epochs, patience: at most this many epochs; stop after `patience` without a better val score.
        batch_size: chips per step. device: "cpu", "cuda", "cuda:1", "mps" (default: CUDA if any).
        weights: a checkpoint to start from (e.g. yolo11n-seg.pt, much faster to train) or an
            architecture yaml; default yolo11n-seg.yaml with random weights (offline).
        chip_size, label_field, split, bands: for the export (chip_size is also the training size).
        reviewed: `vector` has a `review` column: accepted objects are the labels, rejected ones
            background (see `export_dataset`).
        hyper: other Ultralytics training arguments (lr0, mosaic, degrees, ...).
    """
    if epochs < 1 or patience < 1 or batch_size < 1:
        raise UsageError(f"{option('epochs')}, {option('patience')} and {option('batch_size')} must be 1 or more")
    out = check_out_dir(out_dir, overwrite, what="model")
    if vector is None:
        if reviewed:
            raise UsageError(f"{option('reviewed')} is for RASTERS... VECTOR: DATASET {dataset} is exported "
                             f"already (export it with {option('reviewed')}, or give the rasters and the file)")
        manifest = read_dataset(dataset)
        check_dataset(dataset, manifest)
    elif reviewed:  # before any model loads
        read_reviewed(vector, "VECTOR")
    import_ultralytics()  # before any work: without it, one line saying what to install
    check_start(weights)
    device = pick_device(device)
    with building(out, "model") as tmp:
        if vector is not None:
            export_dataset(dataset, vector, tmp / "dataset", fmt="yolo", chip_size=chip_size, split=split,
                           label_field=label_field, bands=bands, seed=seed, reviewed=reviewed)
            dataset = tmp / "dataset"
            manifest = read_dataset(dataset)
            check_dataset(dataset, manifest)
        info = _fit(Path(dataset), manifest, tmp, epochs=epochs, patience=patience, batch_size=batch_size,
                    device=device, weights=weights, seed=seed, workers=workers, progress=progress, hyper=hyper)
        if vector is not None:
            info["dataset"]["path"] = "dataset"
        (tmp / MANIFEST).write_text(json.dumps(info, indent=1))
    return info


def _fit(dataset: Path, manifest: dict[str, Any], tmp: Path, *, epochs: int, patience: int, batch_size: int,
         device: str, weights: str | None, seed: int, workers: int, progress: bool,
         hyper: dict[str, Any]) -> dict[str, Any]:
    from ultralytics import YOLO
    from ultralytics.utils import LOGGER

    on_gpu = device.startswith("cuda")
    work = tmp / ".work"
    data = _mirror(dataset, work / "data")
    model = YOLO(weights or ARCHITECTURE, task="segment")
    bar = _EpochBar(epochs, progress)
    model.add_callback("on_fit_epoch_end", bar.update)
    chip = int(manifest["chip_size"])
    args = dict(data=str(data), epochs=epochs, patience=patience, batch=batch_size, imgsz=chip,
                device=device.removeprefix("cuda:") if on_gpu else device, workers=workers, seed=seed,
                project=str(work), name="run", exist_ok=True, plots=False, amp=on_gpu, verbose=False,
                flipud=0.5,  # aerial views have no up: flip both ways
                nbs=batch_size)  # a step per batch: accumulating to 64 chips leaves small datasets few steps
    args.update(hyper)
    started = time.perf_counter()
    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING if not log.isEnabledFor(logging.DEBUG) else level)
    keep_torch_threads()
    try:
        model.train(**args)
    finally:
        LOGGER.setLevel(level)
        bar.close()
    seconds = time.perf_counter() - started
    trainer = model.trainer
    best = Path(trainer.best)
    if not best.is_file():
        best = Path(trainer.last)
    shutil.copyfile(best, tmp / WEIGHTS)
    periodic = sorted((Path(trainer.save_dir) / "weights").glob("epoch*.pt"))
    if periodic:  # hyper save_period=N: kept, to score the student as training went on
        (tmp / "checkpoints").mkdir()
        for f in periodic:
            shutil.move(f, tmp / "checkpoints" / f.name)
    if (Path(trainer.save_dir) / "results.csv").is_file():
        shutil.copyfile(Path(trainer.save_dir) / "results.csv", tmp / "results.csv")
    metrics = {k: round(float(trainer.metrics.get(v, float("nan"))), 4) for k, v in METRICS.items()}
    curve = tmp / "results.csv"
    epochs_run = max(0, len(curve.read_text().splitlines()) - 1) if curve.is_file() else bar.done
    shutil.rmtree(work, ignore_errors=True)
    return {
        "geoseg": "train", "format": "ultralytics-yolo-segment", "weights": WEIGHTS,
        "sha256": file_hash(tmp / WEIGHTS),
        "classes": list(manifest["categories"]), "chip_size": chip, "resolution": ground_resolution(manifest),
        "resolution_m": ground_metres(manifest),
        "crs": _short_crs(manifest),
        "bands": manifest.get("bands"),
        "dataset": {"path": str(dataset.resolve()), "vector": manifest.get("vector"),
                    "reviewed": bool(manifest.get("reviewed")),
                    "rasters": [r["path"] for r in manifest["rasters"]], "chips": manifest["summary"]["chips"],
                    "objects": manifest["summary"]["objects"], "split": manifest.get("split"),
                    "seed": manifest.get("seed")},
        "training": {"start": weights or ARCHITECTURE, "epochs": epochs, "epochs_run": epochs_run,
                     "patience": patience, "batch_size": batch_size, "imgsz": chip, "device": device,
                     "seed": seed, "seconds": round(seconds, 1), "ultralytics": _version(),
                     **{k: v for k, v in hyper.items() if isinstance(v, (int, float, str, bool))}},
        "val": metrics,
    }


def _short_crs(manifest: dict[str, Any]) -> str | None:
    crs = {CRS(r["crs"]).to_string() for r in manifest["rasters"]}
    return crs.pop() if len(crs) == 1 else None


def _mirror(dataset: Path, where: Path) -> Path:
    """A data.yaml over the dataset whose label caches Ultralytics writes under `where`, not in the
    dataset: folders of links to the dataset's files (copies where links are not allowed)."""
    for kind in ("images", "labels"):
        for split in sorted(p for p in (dataset / kind).iterdir() if p.is_dir()):
            (where / kind / split.name).mkdir(parents=True)
            for f in split.iterdir():
                try:
                    os.symlink(f.resolve(), where / kind / split.name / f.name)
                except OSError:
                    shutil.copyfile(f, where / kind / split.name / f.name)
    text = (dataset / "data.yaml").read_text()
    (where / "data.yaml").write_text(f"path: {json.dumps(str(where.resolve()))}\n{text}")
    return where / "data.yaml"


class _EpochBar:
    """One line per epoch (a bar on a terminal): epoch, losses, val mask mAP50."""

    def __init__(self, epochs: int, show: bool) -> None:
        self.done = 0
        self.bar = None
        if show:
            self.bar = tqdm(total=epochs, unit="epoch", desc="training", leave=True)

    def update(self, trainer: Any) -> None:
        if int(trainer.epoch) + 1 <= self.done or int(trainer.epoch) >= int(trainer.epochs):
            return  # the final evaluation calls back once more
        self.done = int(trainer.epoch) + 1
        m = trainer.metrics or {}
        text = f"val mask mAP50 {float(m.get(METRICS['mask_map50'], float('nan'))):.3f}"
        if self.bar is not None:
            self.bar.update(self.done - self.bar.n)
            self.bar.set_postfix_str(text)
        else:
            log.getChild("run.progress").info("epoch %d/%d: %s", self.done, trainer.epochs, text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _version() -> str:
    return version("ultralytics")


