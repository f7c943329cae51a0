"""The student: `geoseg train` makes a model folder; the `yolo` backend runs it through the pipeline.

The student here is trained for one epoch on a small generated scene: its
detections are poor but real, enough to check every mechanism (crops in the
tile frame, seams, resume, QGIS, refusals). How good a student gets is
benchmarks/distill.py's business.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyogrio
import pytest
from affine import Affine
from conftest import one_line_error, run

import geoseg
from geoseg.analysis.dataset import export_dataset
from geoseg.io.export import read_provenance
from geoseg.testing import make_scene

PROMPTS = ["red", "green", "blue"]
NO_NETWORK = """
import socket, sys
def deny(*args, **kwargs):
    sys.stderr.write("NETWORK ATTEMPT %r\\n" % (args[:2],))
    raise OSError("network blocked by the test")
socket.getaddrinfo = deny
socket.create_connection = deny
connect = socket.socket.connect
def guarded(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        deny(address)
    return connect(self, address)
socket.socket.connect = guarded
"""
NO_ULTRALYTICS = "import sys\nsys.modules['ultralytics'] = None\n"


def cli(*args, site: str, tmp: Path, cwd: Path | None = None):
    """Run the geoseg CLI in a fresh Python whose startup runs `site` (a sitecustomize), HOME in `tmp`."""
    folder = tmp / f"site-{abs(hash(site))}"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(site)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]),
           "HOME": str(tmp / "home"), "OMP_NUM_THREADS": "2"}
    env.pop("YOLO_CONFIG_DIR", None)
    (tmp / "home").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-c", "from geoseg.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("scene") / "scene.tif", size=512, seed=3)


@pytest.fixture(scope="module")
def dataset(scene, tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    geoseg.segment(scene, PROMPTS, segmenter="colors", output=root / "labels.gpkg", tile_size=256, overlap=32)
    export_dataset(scene, root / "labels.gpkg", root / "dataset", fmt="yolo", chip_size=128)
    return root / "dataset"


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """`geoseg train` in a fresh process, the network cut off, HOME and the working folder empty."""
    tmp = tmp_path_factory.mktemp("train")
    (tmp / "cwd").mkdir()
    model = tmp / "student"
    proc = cli("train", dataset, "-o", model, "--epochs", 1, "--batch-size", 8, "--workers", 0, site=NO_NETWORK,
               tmp=tmp, cwd=tmp / "cwd")
    return model, proc, tmp


def test_train_makes_a_model_folder_offline_writing_nowhere_else(trained, dataset):
    model, proc, tmp = trained
    assert proc.returncode == 0, proc.stderr
    assert "NETWORK ATTEMPT" not in proc.stderr
    assert "val mask mAP50" in proc.stderr and "--backend yolo" in proc.stderr
    assert sorted(p.name for p in model.iterdir()) == [".geoseg-written.json", "geoseg.json", "results.csv",
                                                       "weights.pt"]
    assert not any((tmp / "cwd").iterdir()) and not any((tmp / "home").iterdir())
    assert not list(dataset.rglob("*.cache"))  # Ultralytics' label caches stayed in the work folder
    info = json.loads((model / "geoseg.json").read_text())
    assert info["classes"] == ["blue", "green", "red"] and info["chip_size"] == 128
    assert info["resolution"] == 0.5 and info["resolution_m"] == 0.5 and info["crs"] == "EPSG:32617"
    assert info["bands"] is None
    assert info["dataset"]["path"] == str(dataset.resolve()) and info["dataset"]["chips"]["val"] > 0
    assert info["training"]["epochs_run"] == 1 and info["training"]["start"] == "yolo11n-seg.yaml"
    assert set(info["val"]) >= {"mask_map50", "mask_map50_95", "box_map50"}
    from geoseg.backends.yolo import file_hash

    assert info["sha256"] == file_hash(model / "weights.pt")


@pytest.fixture(scope="module")
def student(trained):
    from geoseg.backends.yolo import YoloSegmenter

    model = trained[0]
    assert (model / "weights.pt").is_file(), trained[1].stderr
    # an untrained student scores low: keep everything, to have detections to check
    return YoloSegmenter(model=str(model), score_threshold=0.0, batch_size=2)


def test_masks_are_crops_in_the_tile_frame(student, scene):
    import rasterio

    with rasterio.open(scene) as src:
        rgb = np.moveaxis(src.read(), 0, -1)
    tiles = np.stack([rgb[:200, :130], rgb[300:500, 50:180], rgb[100:300, 382:512]])
    found = student.segment(tiles, ["red", "blue"])
    assert len(found) == 3 and sum(len(d) for d in found) > 0
    # the same tiles through Ultralytics alone: full masks, to place the crops against
    for tile, dets in zip(tiles, found):
        assert len(dets) <= student.max_objects
        assert set(dets.labels.tolist()) <= {"red", "blue"}
        assert ((dets.scores >= 0) & (dets.scores <= 1)).all()
        for (r, c), mask in zip(dets.origins, dets.masks):
            assert mask.dtype == bool and mask.ndim == 2 and mask.any()
            assert r >= 0 and c >= 0 and r + mask.shape[0] <= 200 and c + mask.shape[1] <= 130
        padded = np.zeros((224, 160, 3), np.uint8)  # to the stride, not resized
        padded[:200, :130] = tile[..., ::-1]
        ref = student.model.predict([padded], imgsz=(224, 160), conf=0.0, classes=[2, 0], retina_masks=True,
                                    verbose=False)[0]
        full = (ref.masks.data.cpu().numpy() > 0.5)[:, :200, :130] if ref.masks is not None else \
            np.zeros((0, 200, 130), bool)
        placed = np.zeros((len(dets), 200, 130), bool)
        for k, ((r, c), mask) in enumerate(zip(dets.origins, dets.masks)):
            placed[k, r:r + mask.shape[0], c:c + mask.shape[1]] = mask
        kept = full[full.reshape(len(full), -1).any(axis=1)]
        assert len(kept) == len(placed) and (kept == placed).all()


def test_unknown_classes_are_refused_before_any_pixel_is_read(trained, scene, tmp_path):
    model = trained[0]
    line = one_line_error(run("segment", scene, "-p", "red", "-p", "tree", "--backend", "yolo", "--model", model,
                              "-o", tmp_path / "o.gpkg"))
    assert "'tree'" in line and "blue, green, red" in line
    assert not (tmp_path / "o.gpkg").exists() and not list(tmp_path.iterdir())


def test_a_student_run_is_exact_across_seams(trained, scene, tmp_path):
    """Through the whole pipeline on a raster of 3 x 3 tiles: objects seen by two tiles come back as one,
    and the file reads back with the student's provenance (its weights' hash). That a trained student's
    objects come back whole is measured by benchmarks/distill.py (a held-out scene of 3 x 3 tiles)."""
    out = tmp_path / "student.gpkg"
    r = run("segment", scene, "-p", "red,green,blue", "--backend", "yolo", "--model", trained[0],
            "--score-threshold", "0.0", "--tile-size", 224, "--overlap", 64, "-o", out, "-q")
    assert r.exit_code == 0, r.output
    got = pyogrio.read_dataframe(out)
    assert len(got) > 0 and got["id"].is_unique
    assert set(got["label"]) <= set(PROMPTS)
    assert (got["n_tiles"] >= 1).all() and (got["n_tiles"] > 1).any()  # merged across seams
    assert got.geometry.is_valid.all()
    xmin, ymin, xmax, ymax = got.total_bounds
    assert xmin >= 404000 and xmax <= 404000 + 256 and ymin >= 3286000 - 256 and ymax <= 3286000
    meta = read_provenance(out)
    assert meta["backend"] == "yolo" and meta["sha256"] == json.loads((trained[0] / "geoseg.json").read_text())[
        "sha256"]


def test_the_student_reads_at_its_training_resolution(trained, tmp_path):
    """A raster at 0.25 m is read at the 0.5 m the student learnt at, unless --resolution says otherwise."""
    fine = make_scene(tmp_path / "fine.tif", size=256, seed=5, transform=Affine(0.25, 0, 404000.0, 0, -0.25,
                                                                                   3286000.0))
    gdf = geoseg.segment(fine, ["red"], segmenter="yolo", model=str(trained[0]), tile_size=128, overlap=32)
    assert gdf.attrs["geoseg"]["resolution"] == 0.5
    gdf = geoseg.segment(fine, ["red"], segmenter="yolo", model=str(trained[0]), tile_size=128, overlap=32,
                         resolution=0.25)
    assert gdf.attrs["geoseg"]["resolution"] == 0.25


def test_a_session_runs_the_student_at_its_resolution(trained, tmp_path):
    fine = make_scene(tmp_path / "fine.tif", size=256, seed=5, transform=Affine(0.25, 0, 404000.0, 0, -0.25,
                                                                                   3286000.0))
    seg = geoseg.Segmentation(fine, segmenter="yolo", model=str(trained[0]), score_threshold=0.0, tile_size=128,
                              overlap=32)
    assert seg.read.resolution == 0.5 and seg.plan.height == 128  # 64 m read at 0.5 m
    gdf = seg.segment(["red", "blue"])
    assert set(gdf["label"]) <= {"red", "blue"}
    with pytest.raises(geoseg.PromptError, match="blue, green, red"):
        seg.segment(["tree"])


def test_resume_refuses_a_changed_model_file(trained, scene, tmp_path):
    import shutil

    import torch

    from geoseg.backends.yolo import YoloSegmenter

    model = tmp_path / "student"
    shutil.copytree(trained[0], model)
    out, work = tmp_path / "o.gpkg", tmp_path / "work"

    class Interrupted(YoloSegmenter):
        calls = 0

        def segment(self, tiles, prompts):
            Interrupted.calls += 1
            if Interrupted.calls > 2:
                raise RuntimeError("the device fell over")
            return super().segment(tiles, prompts)

    with pytest.raises(geoseg.RunError):
        geoseg.segment(scene, ["red"], segmenter=Interrupted(model=str(model), batch_size=1), tile_size=128,
                       overlap=32, output=out, work_dir=work)
    assert work.is_dir() and not out.exists()
    args = ["segment", scene, "-p", "red", "--backend", "yolo", "--model", model, "--batch-size", 1,
            "--tile-size", 128, "--overlap", 32, "-o", out, "--work-dir", work]
    ckpt = torch.load(model / "weights.pt", weights_only=False)
    ckpt["retrained"] = True  # new weights file, same folder
    torch.save(ckpt, model / "weights.pt")
    line = one_line_error(run(*args))
    assert "--sha256" in line and "--restart" in line
    assert not out.exists()
    r = run(*args, "--restart", "-q")
    assert r.exit_code == 0, r.output
    assert out.exists()


def test_a_dask_run_of_the_student_gives_the_serial_output(trained, scene, tmp_path):
    pytest.importorskip("distributed")
    args = ["-p", "red,green,blue", "--backend", "yolo", "--model", trained[0], "--score-threshold", "0.0",
            "--max-detections", 20, "--refine-depth", 0, "--tile-size", 256, "--overlap", 32, "-q"]
    r = run("segment", scene, *args, "-o", tmp_path / "dask.gpkg", "--workers", 1)
    assert r.exit_code == 0, r.output
    r = run("segment", scene, *args, "-o", tmp_path / "serial.gpkg")
    assert r.exit_code == 0, r.output
    a, b = (pyogrio.read_dataframe(tmp_path / f) for f in ("dask.gpkg", "serial.gpkg"))
    assert len(a) == len(b) > 0 and (a["label"].to_numpy() == b["label"].to_numpy()).all()
    assert a.geometry.geom_equals_exact(b.geometry, tolerance=0).all()


def test_qgis_worker_runs_a_student(trained, scene, tmp_path):
    out = tmp_path / "out.gpkg"
    small = make_scene(tmp_path / "small.tif", size=200, seed=4)
    job = {"inputs": [small], "prompts": ["red", "green"], "output": str(out), "backend": "yolo",
           "model": str(trained[0]), "device": "cpu", "tile_size": 256, "overlap": 32, "score_threshold": 0.5}
    proc = subprocess.run([sys.executable, "-m", "geoseg.qgis_worker"], input=json.dumps(job), capture_output=True,
                          text=True, timeout=300)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0 and lines[-1]["type"] == "done", (lines, proc.stderr)
    assert lines[-1]["provenance"]["resolution"] == 0.5
    assert set(pyogrio.read_dataframe(out)["label"]) <= {"red", "green"}


def test_without_ultralytics_train_and_the_backend_say_what_to_install(trained, dataset, scene, tmp_path):
    r = cli("train", dataset, "-o", tmp_path / "m", site=NO_ULTRALYTICS, tmp=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "pip install ultralytics" in r.stderr and "Traceback" not in r.stderr
    r = cli("segment", scene, "-p", "red", "--backend", "yolo", "--model", trained[0], "-o", tmp_path / "o.gpkg",
            site=NO_ULTRALYTICS, tmp=tmp_path)
    assert r.returncode == 2 and "pip install ultralytics" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "m").exists() and not (tmp_path / "o.gpkg").exists()


@pytest.mark.parametrize("args, words", [
    (["--model", "{nowhere}"], "no such folder"),
    (["--model", "{empty}"], "geoseg.json"),
    ([], "--model DIR"),
    (["--model", "{model}", "--mask-threshold", "0.4"], "does not take --mask-threshold"),
])
def test_bad_student_options_are_one_line(trained, scene, tmp_path, args, words):
    (tmp_path / "empty").mkdir()
    names = {"nowhere": tmp_path / "nowhere", "empty": tmp_path / "empty", "model": trained[0]}
    args = [a.format(**names) for a in args]
    line = one_line_error(run("segment", scene, "-p", "red", "--backend", "yolo", *args, "-o", tmp_path / "o.gpkg"))
    assert words in line


def test_train_refuses_what_it_cannot_train_on(dataset, tmp_path, scene):
    line = one_line_error(run("train", scene, "-o", tmp_path / "m"))
    assert "RASTERS... VECTOR" in line
    coco = tmp_path / "coco"
    labels = dataset.parent / "labels.gpkg"
    export_dataset(scene, labels, coco, chip_size=128)
    assert "--format yolo" in one_line_error(run("train", coco, "-o", tmp_path / "m"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert "not empty" in one_line_error(run("train", dataset, "-o", tmp_path / "full"))
    assert "no such file" in one_line_error(run("train", dataset, "-o", tmp_path / "m", "--weights", "nope.pt"))
    if not __import__("torch").cuda.is_available():
        assert "no CUDA GPU" in one_line_error(run("train", dataset, "-o", tmp_path / "m", "--device", "cuda"))


def ultralytics_runs() -> list[str]:
    """What is in the folder where Ultralytics puts a run whose project path is relative: runs/segment/
    of the git checkout it is installed in (else of the working folder), or, under pytest, of its own
    tests/tmp/ (the geoseg processes the tests start see pytest's variables too)."""
    from types import SimpleNamespace

    from geoseg.backends.yolo import import_ultralytics

    import_ultralytics()
    from ultralytics.cfg import get_save_dir

    runs = get_save_dir(SimpleNamespace(project="", name="probe", task="segment", mode="train", exist_ok=True)).parent
    return sorted(str(p) for p in runs.rglob("*")) if runs.is_dir() else []


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_never_deletes_what_geoseg_did_not_write(trained, dataset, tmp_path):
    """`train --overwrite` over a folder of the user's, over a model the user put a file in, or with a start
    that cannot load: one line, and every file as it was."""
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.docx").write_text("years of work")
    (thesis / "geoseg.json").write_text("{}")  # looks like a model folder: a name proves nothing
    line = one_line_error(run("train", dataset, "-o", thesis, "--overwrite", "--epochs", 1))
    assert ".geoseg-written.json" in line
    assert _snapshot(thesis) == {"chapter1.docx": b"years of work", "geoseg.json": b"{}"}

    import shutil

    model = tmp_path / "model"
    shutil.copytree(trained[0], model)
    before = _snapshot(model)
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    for weights, words in [(tmp_path / "nope.pt", "no such file"), (bad, "not a YOLO checkpoint"),
                           ("nope.yaml", "not an architecture yaml")]:
        line = one_line_error(run("train", dataset, "-o", model, "--overwrite", "--weights", weights))
        assert words in line and str(weights) in line
        assert _snapshot(model) == before
    (model / "notes.txt").write_text("mine")
    line = one_line_error(run("train", dataset, "-o", model, "--overwrite", "--epochs", 1))
    assert "notes.txt" in line and "did not write" in line
    (model / "notes.txt").unlink()
    (model / "results.csv").write_text("edited by hand\n")
    line = one_line_error(run("train", dataset, "-o", model, "--overwrite", "--epochs", 1))
    assert "results.csv" in line and "changed" in line
    assert (model / "results.csv").read_text() == "edited by hand\n"


def test_a_killed_train_leaves_nothing_once_a_rerun_succeeds(dataset, tmp_path):
    """kill -9 in the middle of training, then the same command again, with a relative -o: the model
    folder and nothing else in the working folder (no Ultralytics runs/, no hidden build)."""
    import signal
    import time

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    runs_before = ultralytics_runs()
    args = ["train", dataset, "-o", "student", "--batch-size", 8, "--workers", 0]
    (tmp_path / "home").mkdir()
    env = {**os.environ, "HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, "-c", "from geoseg.cli import main; main()", *map(str, args),
                             "--epochs", "50"],
                            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(cwd.glob(".student.*.tmp/.work/run")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(cwd.glob(".student.*.tmp")) and not (cwd / "student").exists()
    r = cli(*args, "--epochs", 1, site="", tmp=tmp_path, cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in cwd.iterdir()) == ["student"]
    assert ultralytics_runs() == runs_before  # a relative project went to Ultralytics' runs_dir/segment/
    assert sorted(p.name for p in (cwd / "student").iterdir()) == [".geoseg-written.json", "geoseg.json",
                                                                  "results.csv", "weights.pt"]


@pytest.mark.parametrize("damage, words", [
    ("garbage", "is not `class x1 y1"),
    ("class", "class id 7 is not one of the 3 classes"),
    ("no-val", "images/val holds no image"),
    ("no-label", "has no label file"),
    ("short", "3 or more x y pairs"),
])
def test_a_damaged_dataset_is_refused_in_one_line_naming_the_file(dataset, tmp_path, damage, words):
    import shutil

    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    labels = sorted((copy / "labels" / "train").glob("*.txt"))
    named = labels[0]
    if damage == "garbage":
        named.write_bytes(b"\x00\x01 garbage here\n")
    elif damage == "class":
        named.write_text("7 0.1 0.1 0.2 0.1 0.2 0.2\n")
    elif damage == "short":
        named.write_text("1 0.1 0.1 0.2 0.1\n")
    elif damage == "no-val":
        for f in (copy / "images" / "val").iterdir():
            f.unlink()
        named = copy / "images" / "val"
    else:
        named.unlink()
    line = one_line_error(run("train", copy, "-o", tmp_path / "m", "--epochs", 1))
    assert words in line and str(named) in line
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.*"))


def _geographic_scene(path: Path) -> str:
    """The scene's objects at 0.25 m on the ground, in EPSG:4326 (pixels of about 2.6e-6 x 2.3e-6 degrees
    at 29.7 N): what a student trained on 0.5 m UTM chips meets in a lon/lat raster."""
    from pyproj import Geod

    lon, lat = -81.0, 29.7
    geod = Geod(ellps="WGS84")
    east = geod.inv(lon, lat, lon + 1e-3, lat)[2] / 1e-3  # metres per degree
    north = geod.inv(lon, lat, lon, lat + 1e-3)[2] / 1e-3
    return make_scene(path, size=256, seed=5, crs="EPSG:4326",
                      transform=Affine(0.25 / east, 0, lon, 0, -0.25 / north, lat))


def test_a_student_reads_a_geographic_raster_at_its_metres(trained, tmp_path):
    """0.5 m, not 0.5 degrees: the 64 m of a lon/lat raster are read as 128 px a side (old: 1 px, no object),
    shown by `geoseg info --backend yolo --model`, and segmented with objects found inside the raster."""
    geo = _geographic_scene(tmp_path / "lonlat.tif")
    r = run("info", geo, "--backend", "yolo", "--model", trained[0], "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)["rasters"][0]
    assert abs(d["width"] - 128) <= 1 and abs(d["height"] - 128) <= 1 and d["model_resolution_m"] == 0.5
    assert d["pixel_xy"][0] > d["pixel_xy"][1]  # a degree of longitude is shorter than one of latitude there
    r = run("info", geo, "--backend", "yolo", "--model", trained[0])
    assert "read at    0.5 m, the yolo model's training resolution" in r.output
    r = run("info", geo)
    assert "256 x 256 px" in r.output and "read at" not in r.output  # without a model: as it is
    gdf = geoseg.segment(geo, PROMPTS, segmenter="yolo", model=str(trained[0]), score_threshold=0.0, tile_size=128,
                         overlap=32)
    assert len(gdf) > 0 and gdf.crs.to_epsg() == 4326
    import rasterio

    with rasterio.open(geo) as src:
        left, bottom, right, top = src.bounds
    x0, y0, x1, y1 = gdf.total_bounds
    dx, dy = d["pixel_xy"]  # the grid read ends on whole pixels: up to one past the raster's edge
    assert left <= x0 and x1 <= right + dx and bottom - dy <= y0 and y1 <= top


def test_the_students_recorded_bands_are_applied(trained, scene, tmp_path):
    """A student trained on bands 3,2,1 (as `--bands 3,2,1` at export records them; written into a copy of
    the folder here) reads them without being told; --bands still wins."""
    import shutil

    from geoseg.run.settings import Settings

    model = tmp_path / "student"
    shutil.copytree(trained[0], model)
    info = json.loads((model / "geoseg.json").read_text())
    (model / "geoseg.json").write_text(json.dumps({**info, "bands": [3, 2, 1]}))
    assert Settings.of(["red"], segmenter="yolo", backend_options={"model": str(model)}).read.bands == (3, 2, 1)
    gdf = geoseg.segment(scene, ["red"], segmenter="yolo", model=str(model), tile_size=256, overlap=32)
    assert gdf.attrs["geoseg"]["bands"] == (3, 2, 1)
    gdf = geoseg.segment(scene, ["red"], segmenter="yolo", model=str(model), tile_size=256, overlap=32,
                         bands="1,2,3")
    assert gdf.attrs["geoseg"]["bands"] == (1, 2, 3)
    out = tmp_path / "o.gpkg"
    r = run("segment", scene, "-p", "red", "--backend", "yolo", "--model", model, "--tile-size", 256, "-o", out, "-q")
    assert r.exit_code == 0, r.output
    assert read_provenance(out)["bands"] == [3, 2, 1]


def test_one_settings_check_for_the_cli_and_python(trained, scene, tmp_path):
    """`Settings.of(..., segmenter=)`: the model's resolution (in metres) and bands where not given, and
    exemplars refused for a backend without them, the same from `geoseg segment` and `geoseg.segment`."""
    import geopandas as gpd
    import shapely

    from geoseg.run.settings import Settings, own_fingerprint

    s = Settings.of(["red"], segmenter="yolo", backend_options={"model": str(trained[0])})
    assert s.read.resolution == 0.5 and s.read.metres and own_fingerprint(s)["--resolution"] is None
    s = Settings.of(["red"], resolution=0.25, segmenter="yolo", backend_options={"model": str(trained[0])})
    assert s.read.resolution == 0.25 and not s.read.metres  # the user's, in CRS units
    assert Settings.of(["red"], segmenter="sam3").read.resolution is None
    boxes = tmp_path / "boxes.gpkg"
    gpd.GeoDataFrame({"prompt": ["red"]}, geometry=[shapely.box(404010, 3285900, 404030, 3285920)],
                     crs=32617).to_file(boxes)
    with pytest.raises(geoseg.UsageError, match="takes no exemplars"):
        Settings.of(["red"], exemplars=boxes, segmenter="yolo", backend_options={"model": str(trained[0])})
    with pytest.raises(geoseg.UsageError, match="takes no exemplars"):
        geoseg.segment(scene, ["red"], segmenter="yolo", model=str(trained[0]), exemplars=boxes)
    line = one_line_error(run("segment", scene, "-p", "red", "--backend", "yolo", "--model", trained[0],
                              "--exemplars", boxes, "-o", tmp_path / "o.gpkg"))
    assert "takes no exemplars" in line and not (tmp_path / "o.gpkg").exists()


def test_a_mosaic_of_geographic_tiles_is_read_at_the_students_metres(trained, tmp_path):
    """--mosaic builds its grid at the student's 0.5 m in degrees too (old: 0.5 degrees, one pixel)."""
    import rasterio

    from geoseg.io.mosaic import from_settings
    from geoseg.io.raster import RasterSource
    from geoseg.run.settings import Settings
    from geoseg.testing import write_geotiff

    geo = _geographic_scene(tmp_path / "lonlat.tif")
    with rasterio.open(geo) as src:
        data, t = np.moveaxis(src.read(), 0, -1), src.transform
    left = write_geotiff(tmp_path / "left.tif", data[:, :128], crs="EPSG:4326", transform=t)
    right = write_geotiff(tmp_path / "right.tif", data[:, 128:], crs="EPSG:4326",
                          transform=t @ Affine.translation(128, 0))
    settings = Settings.of(["red"], segmenter="yolo", backend_options={"model": str(trained[0])})
    vrt = from_settings([left, right], settings)
    with RasterSource(vrt, settings.read) as src:
        assert abs(src.width - 128) <= 1 and abs(src.height - 128) <= 1


def test_a_relative_output_leaves_no_ultralytics_runs(dataset, tmp_path, monkeypatch):
    """`train -o model` (relative): Ultralytics put a relative project under its own runs folder (the
    runs/segment/ of the checkout it is installed in, or of the working folder), 12-23 MB left there."""
    monkeypatch.chdir(tmp_path)
    before = ultralytics_runs()
    r = run("train", dataset, "-o", "model", "--epochs", 1, "--batch-size", 8, "--workers", 0, "-q")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert ultralytics_runs() == before
