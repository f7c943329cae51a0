"""--reviewed: a result reviewed in the explorer through export-dataset, train, distill and evaluate.

The scene's objects are found by the `colors` backend; some are then accepted,
some rejected (the largest, a ring across most chips, among them) and those
in the bottom-right corner left unreviewed. The labels written are read back
and compared, piece by piece, with what the objects of the reviewed file
should give: the accepted ones exactly, never a rejected one, and no chip
where an unreviewed one lies.
"""

import json
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from conftest import one_line_error, run

import geoseg
from geoseg.analysis.dataset import export_dataset, to_pixels
from geoseg.analysis.evaluate import evaluate
from geoseg.errors import UsageError
from geoseg.io.review import ACCEPTED, REJECTED, REVIEW, decision, decisions, reviewed_decisions
from geoseg.testing import make_scene

PROMPTS = ["red", "green", "blue"]
TINY = ["--chip-size", 128, "--epochs", 1, "--batch-size", 8, "--workers", 0, "-q"]  # as test_distill's


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """The scene, its reviewed result (accepted, rejected, unreviewed) and that result as a GeoDataFrame."""
    root = tmp_path_factory.mktemp("reviewed")
    raster = make_scene(root / "scene.tif", size=512, seed=7, n_objects=60)
    gdf = geoseg.segment(raster, PROMPTS, segmenter="colors", tile_size=256, overlap=32)
    with rasterio.open(raster) as src:
        centre = to_pixels(gdf.geometry.centroid.values, src.transform)
    review = np.where(np.arange(len(gdf)) % 2, REJECTED, ACCEPTED).astype(object)
    review[(shapely.get_x(centre) > 384) & (shapely.get_y(centre) > 384)] = None
    review[int(np.argmax(gdf.geometry.area))] = REJECTED  # the ring: a piece of it in most chips
    review[np.flatnonzero(review == ACCEPTED)[0]] = " Accepted"  # read case-blind, spaces trimmed
    gdf[REVIEW] = review
    path = root / "reviewed.gpkg"
    gdf.to_file(path)
    gdf[REVIEW] = [decision(v) for v in review]
    return raster, path, gdf


def expected_pieces(gdf, transform, chip):
    """What export-dataset should write for each object over `chip` (col, row, width, height; raster px):
    {row of gdf: [exterior polygons of its parts inside the chip]}, pieces under 1 px left out."""
    col, row, w, h = chip
    box = shapely.box(col, row, col + w, row + h)
    out = {}
    for k, g in enumerate(to_pixels(gdf.geometry.values, transform)):
        parts = [p for p in shapely.get_parts(shapely.intersection(g, box)) if p.geom_type == "Polygon" and p.area > 0]
        if parts and sum(p.area for p in parts) >= 1:
            out[k] = [shapely.Polygon(p.exterior) for p in parts]
    return out


def yolo_chips(dataset):
    """Each chip of a YOLO dataset: (raster transform, (col, row, w, h), its label polygons in raster px)."""
    manifest = json.loads((dataset / "dataset.json").read_text())
    rasters = {r["name"]: (Affine(*r["transform"]), r) for r in manifest["rasters"]}
    size = manifest["chip_size"]
    for c in manifest["chips"]:
        transform, _ = rasters[c["source"]]
        label = dataset / Path(c["file"].replace("images/", "labels/", 1)).with_suffix(".txt")
        polys = []
        for line in label.read_text().splitlines():
            xy = np.array(line.split()[1:], float).reshape(-1, 2) * size + (c["col"], c["row"])
            polys.append(shapely.Polygon(xy))
        yield transform, (c["col"], c["row"], size, size), polys


def check_labels(dataset, gdf):
    """Every chip's labels are exactly the pieces of the accepted objects there; no chip holds an
    unreviewed object. Returns the accepted and rejected objects' pieces (one per object and chip) and
    the chips."""
    review = gdf[REVIEW].to_numpy(object)
    labels = negatives = chips = 0
    for transform, chip, polys in yolo_chips(dataset):
        chips += 1
        pieces = expected_pieces(gdf, transform, chip)
        assert not [k for k in pieces if review[k] is None], f"chip {chip} holds an object not reviewed"
        want = [p for k, ps in pieces.items() if review[k] == ACCEPTED for p in ps]
        rejected = [p for k, ps in pieces.items() if review[k] == REJECTED for p in ps]
        assert len(polys) == len(want), chip
        for poly in polys:  # each label is one accepted piece, to rounding
            ious = [shapely.area(shapely.intersection(poly, p)) / shapely.area(shapely.union(poly, p)) for p in want]
            assert max(ious) > 0.99, chip
        for p in rejected:  # and none is a rejected one
            assert all(shapely.area(shapely.intersection(poly, p)) < 0.5 * p.area for poly in polys if p.area > 4)
        labels += sum(review[k] == ACCEPTED for k in pieces)
        negatives += sum(review[k] == REJECTED for k in pieces)
    return labels, negatives, chips


def test_the_review_column_is_read_case_blind_and_checked():
    assert [decision(v) for v in ["accepted", " Rejected ", "", None, math.nan]] == [ACCEPTED, REJECTED, None,
                                                                                      None, None]
    gdf = gpd.GeoDataFrame({REVIEW: ["accepted", "maybe"]}, geometry=[shapely.box(0, 0, 1, 1)] * 2)
    with pytest.raises(UsageError, match="holds 'maybe': use accepted, rejected or leave it empty"):
        decisions(gdf, "F")
    with pytest.raises(UsageError, match="has no review column"):
        decisions(gdf.drop(columns=REVIEW), "F")
    nothing = gdf.assign(review=["rejected", None])
    assert list(decisions(nothing, "F")) == [REJECTED, None]  # the explorer reads such a file
    with pytest.raises(UsageError, match=r"none of its 2 objects is accepted \(0 accepted, 1 rejected, 1 not"):
        reviewed_decisions(nothing, "F")  # --reviewed refuses it


def test_export_dataset_labels_only_accepted_objects(scene, tmp_path):
    raster, path, gdf = scene
    r = run("export-dataset", raster, path, "-o", tmp_path / "ds", "--format", "yolo", "--chip-size", 128,
            "--reviewed")
    assert r.exit_code == 0, r.output
    labels, negatives, chips = check_labels(tmp_path / "ds", gdf)
    manifest = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    s = manifest["summary"]
    assert manifest["reviewed"] and s["negatives"] == negatives and sum(s["objects"].values()) == labels
    assert labels > 10 and negatives > 10 and chips == 16 - s["skipped_unreviewed"] and s["skipped_unreviewed"] > 0
    assert f"{negatives} pieces of rejected objects kept as background" in r.output

    # without --reviewed every object is a label, with a warning saying so
    r = run("export-dataset", raster, path, "-o", tmp_path / "all", "--format", "yolo", "--chip-size", 128)
    assert r.exit_code == 0 and "has a review column" in r.output and "pass --reviewed" in r.output
    everything = json.loads((tmp_path / "all" / "dataset.json").read_text())["summary"]["objects"]
    assert sum(everything.values()) > labels + negatives


def test_coco_keeps_the_row_of_each_accepted_object_and_skip_empty_keeps_hard_negatives(scene, tmp_path):
    raster, path, gdf = scene
    s = export_dataset(raster, path, tmp_path / "coco", chip_size=32, reviewed=True, skip_empty=True)
    assert s.skipped_empty > 0
    anns = []
    for split in ("train", "val"):
        coco = json.loads((tmp_path / "coco" / "annotations" / f"instances_{split}.json").read_text())
        anns += coco["annotations"]
    assert anns and {gdf[REVIEW].iloc[a["source_index"]] for a in anns} == {ACCEPTED}
    export_dataset(raster, path, tmp_path / "every", chip_size=32, reviewed=True)
    every = json.loads((tmp_path / "every" / "dataset.json").read_text())["chips"]
    kept = json.loads((tmp_path / "coco" / "dataset.json").read_text())["chips"]
    # skip_empty leaves out the chips without a reviewed object, and only those: hard negatives stay
    assert [c["file"] for c in kept] == [c["file"] for c in every if c["objects"] or c["negatives"]]
    assert len(kept) < len(every) and any(c["negatives"] and not c["objects"] for c in kept)


@pytest.mark.parametrize("review, words", [
    (None, "has no review column: --reviewed needs a file reviewed in the explorer"),
    (["rejected", None], "is accepted (0 accepted"),
    (["yes", "no"], "holds 'yes': use accepted, rejected or leave it empty"),
])
def test_export_dataset_refuses_a_file_that_is_not_reviewed(scene, tmp_path, review, words):
    raster, _, gdf = scene
    bad = gdf.iloc[:2].drop(columns=REVIEW)
    if review is not None:
        bad[REVIEW] = review
    bad.to_file(tmp_path / "bad.gpkg")
    line = one_line_error(run("export-dataset", raster, tmp_path / "bad.gpkg", "-o", tmp_path / "ds", "--reviewed"))
    assert words in line and "bad.gpkg" in line
    assert not (tmp_path / "ds").exists()


def test_train_from_a_reviewed_file(scene, tmp_path):
    raster, path, gdf = scene
    r = run("train", raster, path, "-o", tmp_path / "student", "--reviewed", *TINY)
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "student" / "geoseg.json").read_text())
    assert info["dataset"]["reviewed"] is True
    labels, negatives, _ = check_labels(tmp_path / "student" / "dataset", gdf)
    assert labels and negatives


def test_train_refuses_a_bad_reviewed_file_before_any_model(scene, tmp_path):
    raster, _, gdf = scene
    gdf.drop(columns=REVIEW).to_file(tmp_path / "plain.gpkg")
    # --weights names no file: the review is checked first, before Ultralytics is asked to load anything
    line = one_line_error(run("train", raster, tmp_path / "plain.gpkg", "-o", tmp_path / "m", "--reviewed",
                              "--weights", tmp_path / "no.pt"))
    assert "has no review column" in line
    export_dataset(raster, tmp_path / "plain.gpkg", tmp_path / "ds", fmt="yolo", chip_size=128)
    line = one_line_error(run("train", tmp_path / "ds", "-o", tmp_path / "m", "--reviewed"))
    assert "--reviewed is for RASTERS... VECTOR" in line
    assert not (tmp_path / "m").exists()


def test_distill_learns_from_the_accepted_objects_only(scene, tmp_path):
    raster, path, gdf = scene
    r = run("distill", raster, "-p", "red,green,blue", "--reviewed", path, "-o", tmp_path / "d", "--tile-size", 256,
            "--overlap", 32, *TINY)
    assert r.exit_code == 0, r.output
    out = tmp_path / "d"
    report = json.loads((out / "report.json").read_text())
    assert report["teacher"] == {"backend": "reviewed", "file": str(path)}
    assert set(report["steps_s"]) == {"sample", "reviewed", "dataset", "train", "student_heldout", "student_all"}
    assert report["speed"]["teacher_s"] is None and "labels: the accepted objects of" in r.output
    labels, negatives, _ = check_labels(out / "dataset", gdf)
    assert labels and negatives
    # the held-out score: the student against the accepted objects of the held-out blocks, as evaluate --reviewed
    truth = pyogrio.read_dataframe(out / "reviewed-heldout.gpkg")
    pred = pyogrio.read_dataframe(out / "student-heldout.gpkg")
    kept = pred[pred["score"] >= report["score_threshold"]]
    a, scores = report["heldout"]["all"], report["reviewed"]["heldout_scores"]
    assert a["tp"] + a["fn"] == (truth[REVIEW] == ACCEPTED).sum() == report["sample"]["teacher_objects_heldout"]
    assert a["tp"] + a["fp"] + scores["unscored"] == len(kept)
    again = evaluate(kept, truth, iou=0.5, reviewed=True).score()
    assert (again.tp, again.fp, again.fn) == (a["tp"], a["fp"], a["fn"])


@pytest.mark.parametrize("args, words", [
    (["--reviewed", "PLAIN", "--weights", "/no/such.pt"], "has no review column"),  # before any model
    (["--reviewed", "/no/such.gpkg"], "--reviewed /no/such.gpkg: no such file"),
    (["--reviewed", "REVIEWED", "-p", "tree"], "no object labelled tree is accepted"),
    (["--reviewed", "REVIEWED", "--teacher", "colors"], "leave out --teacher"),
    (["--reviewed", "REVIEWED", "--sample-fraction", 1], "--sample-fraction is not for --reviewed"),
])
def test_distill_refusals_of_a_reviewed_file_are_one_line(scene, tmp_path, args, words):
    raster, path, gdf = scene
    gdf.drop(columns=REVIEW).to_file(tmp_path / "plain.gpkg")
    args = [{"PLAIN": tmp_path / "plain.gpkg", "REVIEWED": path}.get(a, a) for a in args]
    if "-p" not in args:
        args += ["-p", "red"]
    line = one_line_error(run("distill", raster, "-o", tmp_path / "d", *args))
    assert words in line
    assert not (tmp_path / "d").exists()


def _squares(*xs, **columns):
    return gpd.GeoDataFrame(columns, geometry=[shapely.box(x, 0, x + 10, 10) for x in xs], crs=32617)


def test_evaluate_scores_against_the_accepted_objects():
    """Accepted: the truth. A prediction on a rejected object is a false positive (flagged), one on an
    unreviewed object is not scored, a rejected or unreviewed object is never a false negative."""
    ref = _squares(0, 20, 40, 60, review=["accepted", "accepted", "rejected", None])
    pred = _squares(0, 40, 61, 100, score=[0.9, 0.8, 0.7, 0.6])  # on A1, on R, on U (IoU 0.82), nowhere
    e = evaluate(pred, ref, reviewed=True, sweep="score")
    s = e.score()
    assert (s.tp, s.fp, s.fn) == (1, 2, 1)
    assert e.review == {"accepted": 2, "rejected": 1, "unreviewed": 1, "on_rejected": 1, "unscored": 1}
    assert list(e.fp["on_rejected"]) == [True, False] and list(e.fp["pred_index"]) == [1, 3]
    lowest = e.sweep[0]
    assert (lowest.tp, lowest.fp, lowest.fn) == (1, 2, 1)
    assert [r.fp for r in e.sweep] == [2, 1, 1, 0]  # from 0.6 (nowhere), 0.7 (unscored), 0.8 (on R), 0.9 (on A1)
    with pytest.warns(UserWarning, match="has a review column"):
        plain = evaluate(pred, ref).score()
    assert (plain.tp, plain.fp, plain.fn) == (3, 1, 1)


def test_evaluate_reviewed_on_the_command_line(tmp_path):
    _squares(0, 20, 40, 60, review=["accepted", "accepted", "rejected", None]).to_file(tmp_path / "ref.gpkg")
    _squares(0, 40, 61, 100).to_file(tmp_path / "pred.gpkg")
    r = run("evaluate", tmp_path / "pred.gpkg", tmp_path / "ref.gpkg", "--reviewed")
    assert r.exit_code == 0, r.output
    assert ("REF reviewed: 2 accepted (the reference), 1 rejected, 1 not reviewed; at IoU 0.50: 1 false positives "
            "on rejected objects, 1 predictions on objects not reviewed not scored") in r.output
    r = run("evaluate", tmp_path / "pred.gpkg", tmp_path / "ref.gpkg", "--reviewed", "--json")
    assert json.loads(r.output)["review"]["unscored"] == 1
    r = run("evaluate", tmp_path / "pred.gpkg", tmp_path / "ref.gpkg")
    assert r.exit_code == 0 and "geoseg: warning: REF" in r.output and "pass --reviewed" in r.output
    line = one_line_error(run("evaluate", tmp_path / "pred.gpkg", tmp_path / "pred.gpkg", "--reviewed"))
    assert "REF" in line and "has no review column" in line
