"""`geoseg distill`: the whole loop with the `colors` backend as the teacher (a one-epoch student)."""

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from conftest import one_line_error, run

from geoseg.analysis.distill import plan_blocks
from geoseg.io.export import read_provenance
from geoseg.testing import make_scene


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("scene") / "scene.tif", size=512, seed=7)


ARGS = ["-p", "red,green,blue", "--teacher", "colors", "--sample-fraction", 1, "--chip-size", 128, "--epochs", 1,
        "--batch-size", 8, "--workers", 0, "--tile-size", 256, "--overlap", 32, "-q"]


def ultralytics_runs():
    """What is in the folder where Ultralytics puts a run whose project path is relative: runs/segment/
    of the git checkout it is installed in (else of the working folder), or, under pytest, of its own
    tests/tmp/ (the geoseg processes the tests start see pytest's variables too)."""
    from types import SimpleNamespace

    from geoseg.backends.yolo import import_ultralytics

    import_ultralytics()
    from ultralytics.cfg import get_save_dir

    runs = get_save_dir(SimpleNamespace(project="", name="probe", task="segment", mode="train", exist_ok=True)).parent
    return sorted(str(p) for p in runs.rglob("*")) if runs.is_dir() else []


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_distill_end_to_end_with_the_colors_teacher(scene, tmp_path, monkeypatch):
    """With a relative -o (and --device, for the student: the colors teacher has none): the distillation,
    and nothing else, in the working folder."""
    monkeypatch.chdir(tmp_path)
    runs_before = ultralytics_runs()
    r = run("distill", scene, "-o", "distilled", *ARGS, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["distilled"]  # no Ultralytics runs/, no hidden build
    assert ultralytics_runs() == runs_before  # Ultralytics' runs_dir/segment/ (relative projects go there)
    assert "overlap" not in r.output  # the sample's blocks share edges, not ground
    out = tmp_path / "distilled"
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.txt").read_text().strip() in r.output  # printed as written
    assert "held out, student vs teacher at IoU 0.5: F1" in r.output and "time per step" in r.output
    # 512 px in blocks of 2 chips (256 px): 4 blocks, one held out
    held = sorted((out / "sample" / "heldout").glob("*.tif"))
    trained = sorted((out / "sample" / "train").glob("*.tif"))
    assert len(held) == 1 and len(trained) == 3 and report["sample"]["heldout_blocks"] == 1
    with rasterio.open(scene) as src, rasterio.open(held[0]) as block:
        assert block.crs == src.crs and block.res == src.res and (block.width, block.height) == (256, 256)
        window = rasterio.windows.from_bounds(*block.bounds, transform=src.transform)
        assert (src.read(window=window) == block.read()).all()  # the raster's own pixels
    # the score is the teacher's held-out objects against the student's, read back from the files
    truth = pyogrio.read_dataframe(out / "teacher-heldout.gpkg")
    pred = pyogrio.read_dataframe(out / "student-heldout.gpkg")
    everything = report["heldout"]["all"]
    assert everything["tp"] + everything["fn"] == len(truth) == report["sample"]["teacher_objects_heldout"]
    kept = pred[pred["score"] >= report["score_threshold"]]
    assert everything["tp"] + everything["fp"] == len(kept) and (pred["score"] >= 0.01).all()
    assert report["classes"] == ["blue", "green", "red"] and report["teacher"]["backend"] == "colors"
    assert set(report["steps_s"]) == {"sample", "teacher", "teacher_heldout", "dataset", "train", "student_heldout",
                                      "student_all"}
    speed = report["speed"]
    t, st = speed["teacher_s"], speed["student_s"]  # both rounded to 0.01 s
    assert (t - 0.005) / (st + 0.005) - 0.005 <= speed["student_vs_teacher"] <= (t + 0.005) / (st - 0.005) + 0.005
    assert report["training"]["epochs_run"] == 1 and report["dataset"]["train"] > 0
    model = json.loads((out / "model" / "geoseg.json").read_text())
    assert model["classes"] == report["classes"] and model["dataset"]["path"] == str((out / "dataset").resolve())
    assert model["training"]["device"] == "cpu" and report["training"]["device"] == "cpu"
    dataset = json.loads((out / "dataset" / "dataset.json").read_text())
    assert all(Path(r["path"]).is_relative_to(out) for r in dataset["rasters"])  # where they are now
    assert read_provenance(out / "student.gpkg")["model"] == str(out / "model")
    assert model["score_threshold"] == report["score_threshold"]  # chosen on the held-out blocks, kept
    everywhere = pyogrio.read_dataframe(out / "student.gpkg")
    assert set(everywhere["label"]) <= set(report["classes"])
    assert not (out / ".work").exists()

    line = one_line_error(run("distill", scene, "-p", "red", "-o", out, "--teacher", "colors",
                              "--sample-fraction", 1))
    assert "--overwrite" in line

    # a new run that fails keeps the finished distillation, whatever it fails on
    before = _snapshot(out)
    line = one_line_error(run("distill", scene, "-o", out, *ARGS, "--overwrite", "--weights", tmp_path / "no.pt"))
    assert "no such file" in line
    assert _snapshot(out) == before
    # a file of the user's in it (or one changed) is never deleted
    (out / "sample" / "my-notes.txt").write_text("mine")
    line = one_line_error(run("distill", scene, "-o", out, *ARGS, "--overwrite"))
    assert "my-notes.txt" in line and "did not write" in line
    assert (out / "sample" / "my-notes.txt").read_text() == "mine"
    (out / "sample" / "my-notes.txt").unlink()
    r = run("distill", scene, "-o", out, *ARGS, "--overwrite", "--sample-only")
    assert r.exit_code == 0, r.output
    assert not (out / "student.gpkg").exists() and (out / "report.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["distilled"]


def test_overwrite_refuses_a_folder_that_only_looks_like_a_distillation(scene, tmp_path):
    project = tmp_path / "project"
    (project / "sample").mkdir(parents=True)
    (project / "report.json").write_text("{}")
    (project / "thesis.tex").write_text("years of work")
    before = _snapshot(project)
    line = one_line_error(run("distill", scene, "-o", project, *ARGS, "--overwrite"))
    assert ".geoseg-written.json" in line
    assert _snapshot(project) == before and (project / "sample").is_dir()


def test_sample_blocks_from_an_aoi_or_a_fraction(scene, tmp_path):
    with rasterio.open(scene) as src:
        x0, y0 = src.transform @ (300, 20)  # cols 300-330, rows 20-40: in the block of 128 px at (0, 256)
        x1, y1 = src.transform @ (330, 40)
        crs = src.crs
    aoi = gpd.GeoDataFrame(geometry=[shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))], crs=crs)
    blocks = plan_blocks([scene], 128, aoi=aoi)
    assert [(w.row_off, w.col_off) for _, w in blocks] == [(0, 256)]
    assert len(plan_blocks([scene], 128, aoi=aoi.to_crs("EPSG:4326"))) == 1  # any CRS
    assert len(plan_blocks([scene], 128, fraction=0.25)) == 4  # of 16
    assert len(plan_blocks([scene], 128, fraction=0.01)) == 2  # at least one to train on, one held out
    assert plan_blocks([scene], 128, fraction=0.25, seed=1) != plan_blocks([scene], 128, fraction=0.25, seed=2)


@pytest.mark.parametrize("args, words", [
    ([], "--sample-aoi FILE or --sample-fraction"),
    (["--sample-fraction", 0.5, "--sample-aoi", "x.gpkg"], "--sample-aoi FILE or --sample-fraction"),
    (["--sample-aoi", "/no/such.gpkg"], "/no/such.gpkg"),
    (["--sample-fraction", 1, "--chip-size", 512], "needs two or more"),
    (["--sample-fraction", 1, "--chip-size", 128, "--teacher", "colors", "-p", "tree"], "red, green and blue"),
])
def test_distill_refusals_are_one_line(scene, tmp_path, args, words):
    if "-p" not in args:
        args = [*args, "-p", "red"]
    if "--teacher" not in args:
        args = [*args, "--teacher", "colors"]
    line = one_line_error(run("distill", scene, "-o", tmp_path / "d", *args))
    assert words in line
    assert not (tmp_path / "d").exists()


def test_an_undertrained_student_is_kept_with_a_warning():
    """A best threshold under 0.05 is kept (it is the best), with a warning; a confident student warns not."""
    import warnings

    from geoseg.analysis.distill import choose_threshold
    from geoseg.errors import GeosegWarning

    squares = [shapely.box(10 * k, 0, 10 * k + 8, 8) for k in range(4)]
    truth = gpd.GeoDataFrame({"label": ["red"] * 4}, geometry=squares, crs=32617)
    for score, warned in [(0.02, True), (0.6, False)]:
        found = gpd.GeoDataFrame({"label": ["red"] * 4, "score": [score] * 4}, geometry=squares, crs=32617)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            threshold, scored, _ = choose_threshold(found, truth)
        mine = [str(w.message) for w in seen if issubclass(w.category, GeosegWarning)]
        assert next(s.f1 for s in scored.scores if s.label == "all") == 1.0
        assert (threshold < 0.05) == warned
        assert bool(mine) == warned and all("undertrained" in m and "epochs" in m for m in mine)


def test_the_chosen_threshold_is_the_best_of_every_score():
    """Every distinct score is tried, and the threshold kept, written short, keeps the same objects: the F1
    kept is the best F1 over all thresholds (quantiles of the scores, or rounding 0.29266 up to 0.2927,
    gave less)."""
    from geoseg.analysis.distill import choose_threshold
    from geoseg.analysis.evaluate import evaluate

    rng = np.random.default_rng(0)
    n = 120
    squares = [shapely.box(10 * k, 0, 10 * k + 8, 8) for k in range(n)]
    truth = gpd.GeoDataFrame({"label": ["red"] * n}, geometry=squares, crs=32617)
    hit = rng.random(n) < 0.6  # a true object where found, else one a little off (IoU < 0.5)
    geoms = [g if h else shapely.box(10 * k + 5, 0, 10 * k + 13, 8) for k, (g, h) in enumerate(zip(squares, hit))]
    scores = np.round(rng.random(n) * 0.5 + 0.5 * hit * rng.random(n), 5)
    found = gpd.GeoDataFrame({"label": ["red"] * n, "score": scores}, geometry=geoms, crs=32617)
    threshold, scored, _ = choose_threshold(found, truth)
    kept = next(s.f1 for s in scored.scores if s.label == "all")
    every = max(next(s.f1 for s in evaluate(found[found["score"] >= t], truth, iou=0.5).scores if s.label == "all")
                for t in np.unique(scores))
    assert kept == pytest.approx(every)
    assert len(repr(threshold)) <= 8  # short

    two = gpd.GeoDataFrame({"label": ["red"] * 3, "score": [0.1, 0.29266, 0.5]},
                           geometry=[shapely.box(200, 0, 208, 8), *squares[:2]], crs=32617)
    threshold, scored, _ = choose_threshold(two, truth.iloc[:2])
    assert 0.1 < threshold <= 0.29266 and next(s.tp for s in scored.scores if s.label == "all") == 2
