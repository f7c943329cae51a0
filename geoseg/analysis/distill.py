"""Distilling a teacher (SAM 3) into a fast student, in one call.

rasters + prompts -> sample blocks cut out as GeoTIFFs (`sample/`) -> the
teacher labels them (`teacher.gpkg`, `teacher-heldout.gpkg`) -> a YOLO dataset
of the training blocks (`dataset/`) -> a student (`model/`) -> the student on
the held-out blocks, scored against the teacher there (F1 at IoU 0.5) and
timed against it on the same pixels -> the student over every raster
(`student.gpkg`) -> `report.json` and `report.txt`.

The sample is a set of square blocks (2 chips a side) of the rasters: those
touching `sample_aoi`, or a random `sample_fraction` of them. Each block is
its own small raster: the teacher sees exactly what the chips show, so an
object cut by a block edge is labelled as cut, as the student sees it. A
share `holdout` of the blocks (at least one) is kept out of training.

With `reviewed` (a result reviewed in the explorer) no teacher runs: the
sample is the blocks touching a reviewed (accepted or rejected) object of the
prompts, or those touching `sample_aoi`; the file's objects of the prompts,
cut at the blocks' edges, are the labels (`reviewed.gpkg`,
`reviewed-heldout.gpkg`), exported with `export_dataset(reviewed=True)` and
scored with `evaluate(reviewed=True)`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sqlite3
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from pyproj import CRS
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from geoseg.analysis.dataset import MANIFEST as DATASET_MANIFEST
from geoseg.analysis.dataset import export_dataset, to_pixels
from geoseg.analysis.evaluate import evaluate
from geoseg.analysis.folders import building, check_out_dir, seal
from geoseg.analysis.train import check_start, train
from geoseg.backends.yolo import DEFAULT_SCORE, MANIFEST, import_ultralytics, pick_device
from geoseg.core.segmenter import as_backend, check_prompts, load_segmenter, takes_option
from geoseg.errors import GeosegWarning, UsageError, option
from geoseg.io.export import write
from geoseg.io.inputs import list_inputs
from geoseg.io.review import ACCEPTED, REVIEW, counts, decision, read_reviewed
from geoseg.io.sources import unique_names
from geoseg.io.vectors import Vector, polygons_only, read_vector, shown
from geoseg.run.pipeline import segment

log = logging.getLogger("geoseg")

REPORT = "report.json"
LOW = 0.01  # the student's held-out run keeps objects scoring this or more, to choose its threshold
UNDERTRAINED = 0.05  # a best threshold below this: the student is undertrained (warned)


@dataclass(frozen=True)
class Block:
    """One sample block: a window of one raster, cut out to `path`."""

    raster: Any
    window: Window
    path: Path
    heldout: bool


def plan_blocks(rasters: list[Any], size: int, *, aoi: Any = None, fraction: float | None = None,
                seed: int = 0) -> list[tuple[Any, Window]]:
    """The sample's blocks (`size` px a side, clipped to each raster): those touching `aoi`'s
    polygons, or a random `fraction` of all blocks (at least two)."""
    grid = []
    for path in rasters:
        with rasterio.open(path) as src:
            area = None
            if aoi is not None:
                polys = aoi.to_crs(src.crs) if aoi.crs is not None and not CRS(aoi.crs).equals(CRS(src.crs)) else aoi
                area = shapely.union_all(to_pixels(np.asarray(polys.geometry.values), src.transform))
            for row in range(0, src.height, size):
                for col in range(0, src.width, size):
                    w = Window(col, row, min(size, src.width - col), min(size, src.height - row))
                    box = shapely.box(col, row, col + w.width, row + w.height)
                    if area is None or shapely.intersection(area, box).area > 0:
                        grid.append((path, w))
    if fraction is not None:
        rng = np.random.default_rng(seed)
        n = min(len(grid), max(2, math.ceil(fraction * len(grid))))
        grid = [grid[k] for k in sorted(rng.choice(len(grid), n, replace=False))]
    return grid


def cut_blocks(blocks: list[tuple[Any, Window]], names: list[str], folder: Path, holdout: float,
               seed: int) -> list[Block]:
    """Write each block (two or more) as a GeoTIFF (the raster's bands and type as they are); deal
    `holdout` of them (at least one, and one left to train on) to the held-out part."""
    rng = np.random.default_rng(seed + 1)
    n_held = min(len(blocks) - 1, max(1, round(holdout * len(blocks))))
    held = set(rng.choice(len(blocks), n_held, replace=False).tolist())
    folder.mkdir(parents=True)
    out = []
    for k, ((raster, w), name) in enumerate(zip(blocks, names)):
        part = "heldout" if k in held else "train"
        path = folder / part / f"{name}_r{w.row_off}_c{w.col_off}.tif"
        path.parent.mkdir(exist_ok=True)
        with rasterio.open(raster) as src:
            meta = src.profile | {"driver": "GTiff", "height": w.height, "width": w.width,
                                  "transform": window_transform(w, src.transform), "compress": "deflate"}
            meta.pop("blockxsize", None), meta.pop("blockysize", None), meta.pop("tiled", None)
            with rasterio.open(path, "w", **meta) as dst:
                dst.write(src.read(window=w))
        out.append(Block(raster, w, path, k in held))
    return out


def reviewed_labels(source: Vector, prompts: list[str]) -> gpd.GeoDataFrame:
    """The objects of a reviewed file labelled with one of `prompts`, their `review` read (ACCEPTED,
    REJECTED or None); refused in one line without a `label` column, a CRS or an accepted object."""
    named = shown("GeoDataFrame" if isinstance(source, gpd.GeoDataFrame) else str(source), "reviewed")
    gdf = read_reviewed(source, name="reviewed")
    if "label" not in gdf.columns:
        raise UsageError(f"{named} has no label column: give a geoseg result reviewed in the explorer (its label "
                         f"column names each object's prompt)")
    if gdf.crs is None:
        raise UsageError(f"{named} has no CRS: set it (e.g. ogr2ogr -a_srs EPSG:XXXX)")
    gdf = gdf[gdf["label"].isin(prompts)].copy()
    gdf[REVIEW] = [decision(v) for v in gdf[REVIEW]]  # checked by read_reviewed
    if not (gdf[REVIEW] == ACCEPTED).any():
        raise UsageError(f"{named}: no object labelled {' or '.join(prompts)} is {ACCEPTED}: accept some in the "
                         f"explorer, or give the prompts of those you accepted")
    return gdf


def clip_to_blocks(gdf: gpd.GeoDataFrame, blocks: list[Block]) -> gpd.GeoDataFrame:
    """The objects of `gdf` on each block, cut at its edges as the block's raster shows them (in gdf's CRS)."""
    frames = [gdf.iloc[:0]]
    for b in blocks:
        with rasterio.open(b.path) as src:
            crs, box = src.crs, shapely.box(*src.bounds)
        local = gdf if CRS(gdf.crs).equals(CRS(crs)) else gdf.to_crs(crs)
        hit = local[local.intersects(box)]
        cut = [_polygonal(g) for g in shapely.intersection(hit.geometry.values, box)]
        part = hit.set_geometry(gpd.GeoSeries(cut, index=hit.index, crs=crs))
        frames.append(part[~part.geometry.is_empty].to_crs(gdf.crs))
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=gdf.crs)


def _polygonal(geom: Any) -> Any:
    parts = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon") and p.area > 0]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def distill(rasters: Any, prompts: Any, out_dir: str | os.PathLike[str], *, teacher: str = "sam3",
            teacher_options: dict[str, Any] | None = None, sample_aoi: Any = None,
            sample_fraction: float | None = None, holdout: float = 0.2, chip_size: int = 512,
            tile_size: int = 1008, overlap: int = 128, epochs: int = 100, patience: int = 20,
            batch_size: int = 16, device: str | None = None, weights: str | None = None, seed: int = 0,
            workers: int = 2, run_all: bool = True, progress: bool = False, overwrite: bool = False,
            reviewed: Vector | None = None, **hyper: Any) -> dict[str, Any]:
    """Label a sample with `teacher`, train a student on it, score and time it, and run it over `rasters`.

    Args:
        rasters: files or folders (each raster is sampled on its own).
        prompts: what the teacher finds; they become the student's classes.
        teacher, teacher_options: a registered backend ("sam3"; "colors" in tests) and its options.
        sample_aoi, sample_fraction: the sample: blocks touching these polygons, or this share of all
            blocks (exactly one of the two).
        holdout: the share of the sample's blocks kept out of training, to score the student on.
        chip_size: training chip side; sample blocks are 2 chips a side.
        tile_size, overlap: the tiling of every run (teacher and student).
        epochs, patience, batch_size, device, weights, workers, hyper: for `train`.
        run_all: also run the student over every raster (student.gpkg).
        reviewed: a result reviewed in the explorer, instead of a teacher: its accepted objects are the
            labels, its rejected ones background (hard negatives); chips where one of its objects is not
            reviewed yet are left out. The sample is the blocks touching its reviewed objects (or
            `sample_aoi`); `sample_fraction`, `teacher` and `teacher_options` are not used with it.
    Returns the report (also written to report.json and report.txt in `out_dir`).
    """
    prompts = check_prompts(prompts)
    if reviewed is not None and sample_fraction is not None:
        raise UsageError(f"{option('sample_fraction')} is not for {option('reviewed')}: the sample is the blocks "
                         f"where objects were reviewed (narrow it with {option('sample_aoi')})")
    if reviewed is None and (sample_aoi is None) == (sample_fraction is None):
        raise UsageError(f"name the sample to label with the teacher: {option('sample_aoi', 'FILE')} or "
                         f"{option('sample_fraction', 0.1)}")
    if sample_fraction is not None and not 0 < sample_fraction <= 1:
        raise UsageError(f"{option('sample_fraction', sample_fraction)}: give a share in (0, 1]")
    if not 0 < holdout < 1:
        raise UsageError(f"{option('holdout', holdout)}: give a share in (0, 1)")
    labels = None if reviewed is None else reviewed_labels(reviewed, prompts)  # before any model loads
    import_ultralytics()  # before any work: without it, one line saying what to install
    out = check_out_dir(out_dir, overwrite, what="distillation")
    check_start(weights)
    if device is not None:
        pick_device(device)
    paths = list_inputs(rasters)
    aoi = None if sample_aoi is None else polygons_only(read_vector(sample_aoi, name="sample_aoi"), "sample_aoi")
    if aoi is None and labels is not None:  # where a person looked: the reviewed objects
        aoi = labels[labels[REVIEW].notna()]
    planned = plan_blocks(paths, 2 * chip_size, aoi=aoi, fraction=sample_fraction, seed=seed)
    if len(planned) < 2:
        more = ("review objects over more ground" if labels is not None else
                f"sample more with {option('sample_fraction')} or {option('sample_aoi')}")
        raise UsageError(f"the sample holds {len(planned)} block of {2 * chip_size} px: it needs two or more (one "
                         f"to train on, one held out); {more}, or use a smaller {option('chip_size')}")
    labeller = None
    if labels is None:
        options = {k: v for k, v in (teacher_options or {}).items() if v is not None}
        if "device" in options and not takes_option(teacher, "device"):  # a teacher with no device (colors: numpy)
            del options["device"]
        # loaded once for both of its runs; the prompts checked before any pixel is read
        labeller = as_backend(load_segmenter(teacher, **options))
        labeller.check_prompts(prompts)
    else:
        teacher = "GeoDataFrame" if isinstance(reviewed, gpd.GeoDataFrame) else str(reviewed)
    with building(out, "distillation") as tmp:
        report = _distill(tmp, out, paths, planned, prompts, labeller, teacher=teacher, holdout=holdout,
                          chip_size=chip_size, tile_size=tile_size, overlap=overlap, seed=seed, run_all=run_all,
                          progress=progress, student={"device": device} if device else {},
                          training=dict(epochs=epochs, patience=patience, batch_size=batch_size, device=device,
                                        weights=weights, seed=seed, workers=workers, progress=progress, **hyper),
                          reviewed=labels)
    return report


def _distill(tmp: Path, out: Path, paths: list[Any], planned: list[tuple[Any, Window]], prompts: list[str],
             labeller: Any, *, teacher: str, holdout: float, chip_size: int, tile_size: int, overlap: int,
             seed: int, run_all: bool, progress: bool, student: dict[str, Any], training: dict[str, Any],
             reviewed: gpd.GeoDataFrame | None = None) -> dict[str, Any]:
    """The steps of `distill`, written into `tmp` (renamed to `out` once complete): labelled by
    `labeller`, or by the `reviewed` objects (`teacher` then names their file)."""
    steps: dict[str, float] = {}
    clock = _Clock(steps)
    (tmp / ".work").mkdir()
    with clock("sample"):
        stems = [str(n).rsplit(".", 1)[0].replace("/", "_") for n in unique_names(paths)]
        names = [stems[paths.index(r)] for r, _ in planned]
        blocks = cut_blocks(planned, names, tmp / "sample", holdout, seed)
    train_paths = [str(b.path) for b in blocks if not b.heldout]
    held_paths = [str(b.path) for b in blocks if b.heldout]
    common = dict(tile_size=tile_size, overlap=overlap, progress=progress)
    if reviewed is None:
        labels_file = tmp / "teacher.gpkg"
        log.info("distill: the %s teacher labels %d sample blocks", teacher, len(blocks))
        with clock("teacher"):
            labels = segment(train_paths, prompts, segmenter=labeller.segmenter, output=labels_file,
                             work_dir=tmp / ".work" / "teacher", **common)
        with clock("teacher_heldout"):
            truth = segment(held_paths, prompts, segmenter=labeller.segmenter, output=tmp / "teacher-heldout.gpkg",
                            work_dir=tmp / ".work" / "teacher-heldout", **common)
        accepted, accepted_held = labels, truth
    else:
        labels_file = tmp / "reviewed.gpkg"
        with clock("reviewed"):
            provenance = {"geoseg": "distill", "reviewed": teacher}
            labels = clip_to_blocks(reviewed, [b for b in blocks if not b.heldout])
            write(labels, labels_file, provenance=provenance | {"blocks": "train"})
            truth = clip_to_blocks(reviewed, [b for b in blocks if b.heldout])
            write(truth, tmp / "reviewed-heldout.gpkg", provenance=provenance | {"blocks": "heldout"})
        accepted, accepted_held = labels[labels[REVIEW] == ACCEPTED], truth[truth[REVIEW] == ACCEPTED]
    found = sorted(set(accepted["label"]))
    missing = [p for p in prompts if p not in found]
    if not found:
        what = f"the {teacher} teacher found" if reviewed is None else f"{shown(teacher, 'reviewed')} has accepted"
        raise UsageError(f"{what} none of {', '.join(prompts)} in the sample's training blocks: nothing to learn; "
                         f"check the prompts or sample another area")
    if reviewed is not None and accepted_held.empty:
        raise UsageError(f"the held-out blocks hold no {ACCEPTED} object of {shown(teacher, 'reviewed')} to score "
                         f"the student on: accept more objects, or deal the blocks again with another "
                         f"{option('seed')}")
    with clock("dataset"):
        export_dataset(train_paths, labels_file, tmp / "dataset", fmt="yolo", chip_size=chip_size, seed=seed,
                       reviewed=reviewed is not None)
    with clock("train"):
        info = train(tmp / "dataset", tmp / "model", **training)
    model = {"model": str(tmp / "model")} | student
    with clock("student_heldout"):  # every object scoring LOW or more, to choose the threshold on
        found_held = segment(held_paths, found, segmenter="yolo", output=tmp / "student-heldout.gpkg",
                             work_dir=tmp / ".work" / "student-heldout", score_threshold=LOW, **common, **model)
    threshold, scored, at_default = choose_threshold(found_held, truth, reviewed=reviewed is not None)
    model_info = json.loads((tmp / "model" / MANIFEST).read_text())
    model_info["score_threshold"] = threshold  # the yolo backend's default from now on
    (tmp / "model" / MANIFEST).write_text(json.dumps(model_info, indent=1))
    if run_all:
        with clock("student_all"):
            segment(paths, found, segmenter="yolo", output=tmp / "student.gpkg", work_dir=tmp / ".work" / "student",
                    **common, **model)
    shutil.rmtree(tmp / ".work", ignore_errors=True)
    relocate(tmp, out)
    held_px = sum(b.window.width * b.window.height for b in blocks if b.heldout)
    teacher_s = steps.get("teacher_heldout")
    report = {
        "geoseg": "distill", "prompts": prompts, "classes": found, "not_found_by_teacher": missing,
        "teacher": ({"backend": labeller.name, **labeller.config()} if reviewed is None
                    else {"backend": "reviewed", "file": teacher}),
        "sample": {"blocks": len(blocks), "block_px": 2 * chip_size, "heldout_blocks": len(held_paths),
                   "teacher_objects": len(accepted), "teacher_objects_heldout": len(accepted_held)},
        "dataset": info["dataset"]["chips"], "val": info["val"],
        "training": {k: info["training"][k] for k in ("start", "epochs", "epochs_run", "seconds", "device")},
        "score_threshold": threshold, "f1_at_default_threshold": at_default,
        "heldout": {s.label: {"f1": _round(s.f1), "precision": _round(s.precision), "recall": _round(s.recall),
                              "tp": s.tp, "fp": s.fp, "fn": s.fn} for s in scored.scores},
        "speed": {"heldout_mpx": round(held_px / 1e6, 3),
                  "teacher_s": None if teacher_s is None else round(teacher_s, 2),
                  "student_s": round(steps["student_heldout"], 2),
                  "student_vs_teacher": None if teacher_s is None else _round(
                      teacher_s / max(steps["student_heldout"], 1e-9), 2)},
        "steps_s": {k: round(v, 1) for k, v in steps.items()},
        "outputs": {"model": "model", "student": "student.gpkg" if run_all else None},
    }
    if reviewed is not None:
        report["reviewed"] = {"train": counts(labels[REVIEW].to_numpy(object)),
                              "heldout": counts(truth[REVIEW].to_numpy(object)), "heldout_scores": scored.review}
    (tmp / REPORT).write_text(json.dumps(report, indent=1))
    (tmp / "report.txt").write_text(format_report(report) + "\n")
    return report


def relocate(tmp: Path, out: Path) -> None:
    """The paths into `tmp` that the steps stored (the dataset's rasters and vector, the model's dataset,
    the student's model folder in the GeoPackages' provenance) made paths into `out`, where the folder
    is about to be renamed."""
    for gpkg in tmp.glob("*.gpkg"):
        with contextlib.closing(sqlite3.connect(gpkg)) as db, db:
            db.execute("UPDATE gpkg_metadata SET metadata = replace(metadata, ?, ?)", (str(tmp), str(out)))
    for folder, manifest, what in (("dataset", DATASET_MANIFEST, "dataset"), ("model", MANIFEST, "model")):
        path = tmp / folder / manifest
        path.write_text(path.read_text().replace(json.dumps(str(tmp))[1:-1], json.dumps(str(out))[1:-1]))
        seal(tmp / folder, what)


def choose_threshold(found: Any, truth: Any, reviewed: bool = False) -> tuple[float, Any, float | None]:
    """The score threshold giving the best F1 (IoU 0.5) of the student's objects against the teacher's
    (or the `reviewed` truth's accepted ones), the scores there, and the F1 at the default threshold. A best
    threshold under `UNDERTRAINED` is kept, with a warning: the student is unsure of what it finds."""
    # every distinct score is tried (quantiles of them could miss the best), up to a few thousand
    swept = evaluate(found, truth, iou=0.5, sweep="score", sweep_steps=min(max(len(found), 50), 5000),
                     reviewed=reviewed) if len(found) else None
    best = None if swept is None else swept.best
    threshold = DEFAULT_SCORE if best is None or not best.f1 > 0 else _short(best.threshold, found["score"])
    if threshold < UNDERTRAINED:
        warnings.warn(f"the student's best score threshold on the held-out blocks is {threshold:g} (under "
                      f"{UNDERTRAINED:g}): it is undertrained; it is kept as the student's default, but train it "
                      f"longer ({option('epochs')}), label more ({option('sample_fraction')}) or start from a "
                      f"checkpoint ({option('weights')})", GeosegWarning, stacklevel=2)
    scored = evaluate(found[found["score"] >= threshold], truth, iou=0.5, reviewed=reviewed)
    default = evaluate(found[found["score"] >= DEFAULT_SCORE], truth, iou=0.5, reviewed=reviewed)
    return threshold, scored, _round(next(s.f1 for s in default.scores if s.label == "all"))


def _short(threshold: float, scores: Any) -> float:
    """`threshold` written short: the shortest decimal that keeps the same objects (above the next lower
    score, not above the threshold; rounding 0.29266 to 0.2927 would drop the object scoring 0.29266)."""
    below = scores[scores < threshold]
    lower = float(below.max()) if len(below) else -math.inf
    for digits in range(2, 12):
        value = math.floor(threshold * 10**digits) / 10**digits
        if lower < value <= threshold:
            return value
    return float(threshold)


def format_report(r: dict[str, Any]) -> str:
    """The report in a few lines."""
    a = r["heldout"].get("all", {})
    s = r["speed"]
    rv = r.get("reviewed")
    teacher = "teacher" if rv is None else "the accepted objects"
    labelled = f"objects on the blocks: {rv['train']} (train); {rv['heldout']} (held out)" if rv else (
        f"teacher objects {r['sample']['teacher_objects']} (train) + {r['sample']['teacher_objects_heldout']} "
        f"(held out)")
    lines = [
        f"student for {', '.join(r['classes'])} (teacher: {r['teacher']['backend']})" if rv is None else
        f"student for {', '.join(r['classes'])} (labels: the accepted objects of {r['teacher']['file']})",
        f"sample: {r['sample']['blocks']} blocks of {r['sample']['block_px']} px, {r['sample']['heldout_blocks']} "
        f"held out; {labelled}; chips {r['dataset']}",
        f"training: {r['training']['epochs_run']} epochs from {r['training']['start']} in "
        f"{r['training']['seconds'] / 60:.1f} min on {r['training']['device']}; val mask mAP50 "
        f"{r['val']['mask_map50']:.3f}",
        f"held out, student vs {teacher} at IoU 0.5: F1 {a.get('f1')}, precision {a.get('precision')}, "
        f"recall {a.get('recall')} (TP {a.get('tp')}, FP {a.get('fp')}, FN {a.get('fn')}) at score >= "
        f"{r['score_threshold']} (the best; kept as the student's default); F1 {r['f1_at_default_threshold']} at "
        f"{DEFAULT_SCORE}",
    ]
    for label, v in r["heldout"].items():
        if label != "all":
            lines.append(f"  {label}: F1 {v['f1']}")
    if rv is not None and rv["heldout_scores"]["unscored"]:
        lines.append(f"  {rv['heldout_scores']['unscored']} of the student's objects lie on objects not reviewed: "
                     f"not scored")
    if s["teacher_s"] is None:
        lines.append(f"speed on the held-out blocks ({s['heldout_mpx']} Mpx): student {s['student_s']} s")
    else:
        lines.append(f"speed on the held-out blocks ({s['heldout_mpx']} Mpx): teacher {s['teacher_s']} s, student "
                     f"{s['student_s']} s: the student is {s['student_vs_teacher']}x the teacher's speed")
    lines.append("time per step (s): " + ", ".join(f"{k} {v}" for k, v in r["steps_s"].items()))
    if r["not_found_by_teacher"]:
        names = ", ".join(r["not_found_by_teacher"])
        found = f"the teacher found no {names}" if rv is None else f"no {names} was accepted"
        lines.append(f"{found} in the sample: the student does not know them")
    return "\n".join(lines)


def _round(v: float, digits: int = 3) -> float | None:
    return None if v is None or math.isnan(v) else round(float(v), digits)


class _Clock:
    """`with clock("step"):` adds the step's wall time to `steps`."""

    def __init__(self, steps: dict[str, float]) -> None:
        self.steps = steps

    def __call__(self, name: str) -> _Clock:
        self.name = name
        return self

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.steps[self.name] = time.perf_counter() - self.started
