"""The QGIS plugin: its worker and installer (always), and the provider in a real headless QGIS (marker `qgis`).

QGIS runs under its own Python (Debian: /usr/bin/python3 with python3-qgis), so the QGIS tests start it in
a subprocess (tests/qgis/run_algorithm.py, qgis_process); the plugin finds this Python through the record
`geoseg qgis install` writes (no GEOSEG_PYTHON, no setting).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from rasterio.transform import Affine

import geoseg
from geoseg.io.export import read_provenance
from geoseg.qgis.runner import RECORD, Cancelled, WorkerError, check_python, find_python, run_worker
from geoseg.testing import build_tiny_sam3, make_scene
from geoseg.testing.scenes import draw, random_objects, write_geotiff

HERE = Path(__file__).parent
PLUGIN = Path(geoseg.__file__).parent / "qgis"
QGIS_PYTHON = os.environ.get("QGIS_PYTHON", "/usr/bin/python3")
QGIS_PROCESS = os.environ.get("QGIS_PROCESS", "/usr/bin/qgis_process.bin")
FIELDS = ["id", "object_id", "label", "score", "area_m2", "n_tiles", "level", "source"]
COLORS = {"BACKEND": "colors", "TILE_SIZE": 256, "OVERLAP": 32}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("qgis") / "scene.tif", size=600)


@pytest.fixture(scope="module")
def tiny_sam3(tmp_path_factory):
    """A tiny random SAM 3 folder and a one-tile scene for it (SAM 3 on a CPU is slow even when tiny)."""
    folder = tmp_path_factory.mktemp("tiny_sam3")
    return str(build_tiny_sam3(folder / "model")), make_scene(folder / "small.tif", size=256)


@pytest.fixture(scope="module")
def expected(scene):
    """What the library itself finds with the settings of COLORS."""
    return geoseg.segment(scene, ["red", "green", "blue"], segmenter="colors", tile_size=256, overlap=32)


def worker(job):
    proc = subprocess.run([sys.executable, "-m", "geoseg.qgis_worker"], input=json.dumps(job), capture_output=True,
                          text=True, timeout=300)
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()]


def no_geoseg_python(tmp_path):
    """A Python without geoseg (isolated, no site-packages)."""
    path = tmp_path / "python-without-geoseg"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I -S "$@"\n')
    path.chmod(0o755)
    return str(path)


# --- the worker and the runner: geoseg's side of the protocol --------------------------------------------------


def test_worker_runs_the_library_call_and_reports_progress(scene, expected, tmp_path):
    out = tmp_path / "out.gpkg"
    code, lines = worker({"inputs": [scene], "prompts": ["red", "green", "blue"], "output": str(out), **{
        k.lower(): v for k, v in COLORS.items()}})
    assert code == 0, lines
    progress = [line["value"] for line in lines if line["type"] == "progress"]
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(progress) > 2
    done = lines[-1]
    assert done.pop("provenance") == read_provenance(out)
    assert done == {"type": "done", "output": str(out), "objects": len(expected), "crs": "EPSG:32617"}
    got = gpd.read_file(out)
    assert list(got.columns) == [*FIELDS, "geometry"] and len(got) == len(expected)


@pytest.mark.parametrize("job, kind, words", [
    ({"backend": "colors", "prompts": ["tree"]}, "usage", "red, green and blue"),
    ({"backend": "sam3", "prompts": ["tree"], "model": "/no/such/sam3"}, "model", "no such folder"),
    ({"backend": "colors", "prompts": ["red"], "inputs": ["/no/such.tif"]}, "usage", "/no/such.tif"),
    # checked before the model loads (its folder does not even exist), in the dialog's names, not bands=
    ({"backend": "sam3", "prompts": ["tree"], "model": "/no/such/sam3", "bands": "9"}, "usage",
     "BANDS 9 is out of range"),
    ({"backend": "colors", "prompts": ["red"], "tile_size": 64, "overlap": 64}, "usage", "OVERLAP"),
])
def test_worker_errors_are_one_protocol_line(scene, tmp_path, job, kind, words):
    code, lines = worker({"inputs": [scene], "output": str(tmp_path / "o.gpkg"), **job})
    assert code == 2 and lines[-1]["type"] == "error" and lines[-1]["kind"] == kind, lines
    assert words in lines[-1]["text"] and not (tmp_path / "o.gpkg").exists()
    assert not re.search(r"\b[a-z_]+=", lines[-1]["text"])  # no Python parameter names


def test_worker_checks_the_job_before_loading_the_model(scene, tmp_path):
    code, lines = worker({"inputs": [scene], "output": str(tmp_path / "o.gpkg"), "backend": "colors",
                          "prompts": ["red"], "bands": "1,2,9"})
    assert code == 2 and "BANDS 9 is out of range" in lines[-1]["text"], lines
    assert not any(line.get("text", "").startswith("loading the") for line in lines)


def test_worker_runs_a_local_sam3_folder(tiny_sam3, tmp_path):
    model, small = tiny_sam3
    out = tmp_path / "out.gpkg"
    code, lines = worker({"inputs": [small], "prompts": ["tree"], "output": str(out), "backend": "sam3",
                          "model": model, "device": "cpu", "tile_size": 256, "overlap": 32})
    assert code == 0 and lines[-1]["type"] == "done", lines
    assert list(gpd.read_file(out).columns) == [*FIELDS, "geometry"]


def test_runner_cancel_stops_the_worker_and_writes_nothing(tmp_path):
    big = make_scene(tmp_path / "big.tif", size=2000)
    out = tmp_path / "out.gpkg"
    seen = []
    job = {"inputs": [big], "prompts": ["red"], "output": str(out), "backend": "colors", "tile_size": 128,
           "overlap": 16}
    with pytest.raises(Cancelled):
        run_worker(sys.executable, job, seen.append, lambda: any(e.get("value", 0) > 0 for e in seen))
    pid = seen[0]["pid"]
    with pytest.raises(OSError):
        os.kill(pid, 0)
    assert not out.exists()


def test_runner_says_how_to_fix_a_missing_environment(tmp_path):
    with pytest.raises(WorkerError, match="cannot start geoseg's Python.*GEOSEG_PYTHON"):
        run_worker(str(tmp_path / "nope"), {}, lambda e: None, lambda: False)
    python = no_geoseg_python(tmp_path)
    with pytest.raises(WorkerError, match="has no geoseg installed: install it there"):
        run_worker(python, {}, lambda e: None, lambda: False)


# --- the plugin files and `geoseg qgis install` ------------------------------------------------------------------


def test_plugin_imports_only_stdlib_and_qgis():
    allowed = set(sys.stdlib_module_names) | {"qgis", "processing", "PyQt5", "osgeo"}  # QGIS ships GDAL's bindings
    for path in PLUGIN.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}: QGIS's Python may not have it"
    meta = (PLUGIN / "metadata.txt").read_text()
    assert "hasProcessingProvider=yes" in meta and f"version={geoseg.__version__}" in meta


@pytest.fixture
def source_record():
    """`geoseg qgis install --link` records the Python in geoseg's own plugin folder: put back what was there."""
    record = PLUGIN / RECORD
    before = record.read_bytes() if record.exists() else None
    yield record
    if before is None:
        record.unlink(missing_ok=True)
    else:
        record.write_bytes(before)


def test_install_copy_link_and_zip(tmp_path, source_record):
    from click.testing import CliRunner

    from geoseg.cli import main

    env = {"QGIS_CUSTOM_CONFIG_PATH": str(tmp_path / "cfg")}
    r = CliRunner().invoke(main, ["qgis", "install", "--profile", "work"], env=env)
    assert r.exit_code == 0, r.output
    target = tmp_path / "cfg" / "profiles" / "work" / "python" / "plugins" / "geoseg_qgis"
    assert (target / "metadata.txt").is_file() and (target / "algorithm.py").is_file()
    assert "qgis_process plugins enable geoseg_qgis" in r.output
    assert "Run qgis_process outside geoseg's virtual environment" in r.output  # QGIS's Python crashes in it
    r = CliRunner().invoke(main, ["qgis", "install", "--profile", "work", "--link"], env=env)  # replaces the copy
    assert r.exit_code == 0 and target.is_symlink() and target.resolve() == PLUGIN.resolve(), r.output
    r = CliRunner().invoke(main, ["qgis", "install", "--zip", str(tmp_path / "geoseg_qgis.zip")])
    assert r.exit_code == 0, r.output
    names = zipfile.ZipFile(tmp_path / "geoseg_qgis.zip").namelist()
    assert "geoseg_qgis/metadata.txt" in names and "geoseg_qgis/__init__.py" in names
    assert not any("__pycache__" in n for n in names)


def test_install_records_its_python_for_the_plugin(tmp_path, source_record):
    from click.testing import CliRunner

    from geoseg.cli import main

    env = {"QGIS_CUSTOM_CONFIG_PATH": str(tmp_path / "cfg")}
    r = CliRunner().invoke(main, ["qgis", "install"], env=env)
    assert r.exit_code == 0, r.output
    target = tmp_path / "cfg" / "profiles" / "default" / "python" / "plugins" / "geoseg_qgis"
    assert (target / RECORD).read_text().strip() == sys.executable
    assert f"geoseg's Python is {sys.executable}, recorded in {target / RECORD}" in r.output
    # a linked plugin is geoseg's own folder: the record goes there, and never into a copy or a zip
    r = CliRunner().invoke(main, ["qgis", "install", "--link"], env=env)
    assert r.exit_code == 0 and source_record.read_text().strip() == sys.executable, r.output
    r = CliRunner().invoke(main, ["qgis", "install", "--zip", str(tmp_path / "p.zip")])
    assert r.exit_code == 0 and f"geoseg_qgis/{RECORD}" not in zipfile.ZipFile(tmp_path / "p.zip").namelist()


def test_find_python_order(tmp_path, monkeypatch):
    """The provider setting, then $GEOSEG_PYTHON, then the install's record, then `geoseg` on PATH."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("GEOSEG_PYTHON", raising=False)
    assert find_python("", tmp_path) is None
    (tmp_path / RECORD).write_text("/env/recorded/python\n")
    assert find_python("", tmp_path) == ("/env/recorded/python", "recorded by `geoseg qgis install`")
    monkeypatch.setenv("GEOSEG_PYTHON", "/env/variable/python")
    assert find_python("", tmp_path) == ("/env/variable/python", "$GEOSEG_PYTHON")
    assert find_python(" /env/setting/python ", tmp_path) == ("/env/setting/python", "the provider setting")


def test_check_python_says_the_fix(tmp_path):
    assert check_python(sys.executable, "$GEOSEG_PYTHON") is None
    missing = check_python(str(tmp_path / "nope"), "recorded by `geoseg qgis install`")
    assert missing.startswith(f"cannot start geoseg's Python '{tmp_path / 'nope'}' (recorded by `geoseg qgis install`")
    assert "run `geoseg qgis install` from geoseg's environment" in missing
    python = no_geoseg_python(tmp_path)
    assert check_python(python, "$GEOSEG_PYTHON").startswith(f"{python} has no geoseg installed: install it there")


def test_install_texts_name_a_real_install():
    """geoseg is not on PyPI: every hint installs it from a clone (no unconfirmed git URL)."""
    texts = {p.name: p.read_text() for p in [*PLUGIN.iterdir(), PLUGIN.parent / "qgis_worker.py"] if p.is_file()}
    texts["cli/qgis.py"] = (PLUGIN.parents[1] / "cli" / "qgis.py").read_text()
    for name, text in texts.items():
        for wrong in ("pip install geoseg", "pip install 'geoseg", 'pip install "geoseg[sam3]"'):
            assert wrong not in text, f"{name} says {wrong}"
    for name in ("metadata.txt", "runner.py", "qgis_worker.py", "cli/qgis.py"):
        assert "git+https://" not in texts[name], name
        assert '".[sam3]"' in texts[name] and "clone" in texts[name], name


# --- the provider in a real headless QGIS ------------------------------------------------------------------------


def outside_venv() -> dict[str, str]:
    """This environment without the virtual environment the tests run in: QGIS embeds
    Debian's Python, which takes its prefix from the first `python3` on PATH."""
    venv_bin = Path(sys.prefix) / "bin"
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p) != venv_bin]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH")}
    return {**env, "PATH": os.pathsep.join(path)}


@pytest.fixture(scope="module")
def qgis_profile(tmp_path_factory):
    """A fresh QGIS config folder with the plugin installed and enabled; the environment to run QGIS in."""
    ok = shutil.which(QGIS_PYTHON) and subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"], env=outside_venv(),
                                                      capture_output=True).returncode == 0
    if not ok or not Path(QGIS_PROCESS).is_file():
        pytest.fail(f"QGIS is not installed ({QGIS_PYTHON} cannot import qgis, or no {QGIS_PROCESS}): install it "
                    "with `apt-get install -y qgis python3-qgis qgis-providers`, or deselect with -m 'not qgis'")
    from click.testing import CliRunner

    from geoseg.cli import main

    cfg = tmp_path_factory.mktemp("qgis_config")
    env = {k: v for k, v in outside_venv().items() if k != "GEOSEG_PYTHON"}  # the install's record finds it
    env.update(QGIS_CUSTOM_CONFIG_PATH=str(cfg), QT_QPA_PLATFORM="offscreen", XDG_RUNTIME_DIR=str(cfg))
    r = CliRunner().invoke(main, ["qgis", "install"], env={"QGIS_CUSTOM_CONFIG_PATH": str(cfg)})
    assert r.exit_code == 0, r.output
    enable = subprocess.run([QGIS_PROCESS, "plugins", "enable", "geoseg_qgis"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert enable.returncode == 0, enable.stdout + enable.stderr
    return env, cfg / "profiles" / "default" / "python" / "plugins"


def run_in_qgis(profile, params, *flags, **env):
    base, plugins = profile
    proc = subprocess.run([QGIS_PYTHON, str(HERE / "qgis" / "run_algorithm.py"), str(plugins), json.dumps(params),
                           *flags], env={**base, **env}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.qgis
@pytest.mark.parametrize("name, crs", [("out.gpkg", None), ("out.shp", "EPSG:4326")])
def test_processing_run_writes_the_layer(qgis_profile, scene, expected, tmp_path, name, crs):
    params = {"INPUT": scene, "PROMPTS": "red, green\nblue", **COLORS, "OUTPUT": str(tmp_path / name)}
    if crs:
        params["TARGET_CRS"] = crs
    got = run_in_qgis(qgis_profile, params)
    assert got["error"] is None and got["valid"], got
    assert got["count"] == len(expected) and got["labels"] == ["blue", "green", "red"]
    assert got["crs"] == (crs or "EPSG:32617")  # a headless QGIS has no project CRS: the raster's
    assert [f for f in got["fields"] if f != "fid"] == FIELDS
    assert got["progress"][-1] == 100 and any("objects" in line for line in got["lines"])


@pytest.mark.qgis
def test_processing_run_with_a_local_sam3_folder(qgis_profile, tiny_sam3, tmp_path):
    model, small = tiny_sam3
    got = run_in_qgis(qgis_profile, {"INPUT": small, "PROMPTS": "tree", "MODEL": model, "DEVICE": "cpu",
                                     "TILE_SIZE": 256, "OVERLAP": 32, "MASK_THRESHOLD": 0.7,
                                     "OUTPUT": str(tmp_path / "o.gpkg")})
    assert got["error"] is None and got["valid"] and got["crs"] == "EPSG:32617", got
    prov = read_provenance(tmp_path / "o.gpkg", "o")
    assert (prov["backend"], prov["model"], prov["mask_threshold"]) == ("sam3", model, 0.7), prov


@pytest.mark.qgis
def test_processing_cancel_stops_the_worker_and_writes_nothing(qgis_profile, tmp_path):
    big = make_scene(tmp_path / "big.tif", size=2000)
    out = tmp_path / "out.gpkg"
    got = run_in_qgis(qgis_profile, {"INPUT": big, "PROMPTS": "red", "BACKEND": "colors", "TILE_SIZE": 128,
                                     "OVERLAP": 16, "OUTPUT": str(out)}, "--cancel")
    assert got["error"] and "cancelled" in got["error"], got
    assert got["pid"] and not got["worker_alive"] and got["stop_seconds"] < 5
    assert not out.exists() and not list(tmp_path.glob("out.*"))


@pytest.mark.qgis
def test_processing_errors_say_the_fix(qgis_profile, scene, tmp_path):
    params = {"INPUT": scene, "PROMPTS": "red", **COLORS, "OUTPUT": str(tmp_path / "o.gpkg")}
    got = run_in_qgis(qgis_profile, params, GEOSEG_PYTHON=str(tmp_path / "nope"))
    assert "cannot start geoseg's Python" in got["error"] and "Processing › Providers › geoseg" in got["error"]
    got = run_in_qgis(qgis_profile, params, GEOSEG_PYTHON=no_geoseg_python(tmp_path))
    assert "has no geoseg installed: install it there" in got["error"], got
    got = run_in_qgis(qgis_profile, {**params, "BACKEND": "sam3", "MODEL": "/no/such/sam3"})
    assert "no such folder" in got["error"], got
    assert not (tmp_path / "o.gpkg").exists()


@pytest.mark.qgis
def test_qgis_process_runs_the_algorithm(qgis_profile, scene, expected, tmp_path):
    env, _ = qgis_profile
    out = tmp_path / "out.gpkg"
    start = time.monotonic()
    proc = subprocess.run([QGIS_PROCESS, "--json", "run", "geoseg:segment", "--", f"INPUT={scene}",
                           "PROMPTS=red,green,blue", "BACKEND=colors", "TILE_SIZE=256", "OVERLAP=32",
                           "TARGET_CRS=EPSG:3857", f"OUTPUT={out}"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["results"]["OUTPUT"] == str(out)
    got = gpd.read_file(out)
    assert len(got) == len(expected) and got.crs.to_epsg() == 3857
    assert [c for c in got.columns if c != "geometry"] == FIELDS
    assert time.monotonic() - start < 120


def centroids(gdf):
    """(label, x, y) of each object, sorted, to compare two results object by object."""
    c = gdf.geometry.centroid
    return sorted(zip(gdf["label"], np.round(c.x, 2), np.round(c.y, 2)))


@pytest.mark.qgis
def test_not_found_error_appears_once_with_the_fix(qgis_profile, scene, tmp_path):
    env, plugins = qgis_profile
    (plugins / "geoseg_qgis" / RECORD).rename(tmp_path / RECORD)  # as after an install from a zip
    try:
        proc = subprocess.run([QGIS_PROCESS, "run", "geoseg:segment", "--", f"INPUT={scene}", "PROMPTS=red",
                               "BACKEND=colors", f"OUTPUT={tmp_path / 'o.gpkg'}"], env=env, capture_output=True,
                              text=True, timeout=120)
    finally:
        (tmp_path / RECORD).rename(plugins / "geoseg_qgis" / RECORD)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and text.count("geoseg's Python environment was not found") == 1, text
    assert "run `geoseg qgis install` from geoseg's environment" in text and not (tmp_path / "o.gpkg").exists()


@pytest.mark.qgis
@pytest.mark.parametrize("name", ["out.gpkg", "out.shp"])
def test_processing_output_keeps_the_provenance(qgis_profile, scene, tmp_path, name):
    out = tmp_path / name
    got = run_in_qgis(qgis_profile, {"INPUT": scene, "PROMPTS": "red, green\nblue", **COLORS, "OUTPUT": str(out)})
    assert got["error"] is None, got
    layer = pyogrio.list_layers(out)[0][0] if name.endswith(".gpkg") else "detections"
    prov = read_provenance(out, layer)
    assert prov["prompts"] == ["red", "green", "blue"] and prov["backend"] == "colors", prov
    assert (prov["tile_size"], prov["overlap"], prov["sources"]) == (256, 32, ["scene.tif"])
    assert prov["geoseg_version"] == geoseg.__version__ and prov["qgis"]["algorithm"] == "geoseg:segment"


@pytest.fixture(scope="module")
def spots(tmp_path_factory):
    """A 600² px scene of small objects (all smaller than the overlap, so whole in any read), and what the
    library finds in it."""
    path = write_geotiff(tmp_path_factory.mktemp("spots") / "spots.tif",
                         draw(600, 600, random_objects(600, 600, 60, seed=5, r_range=(5, 12))))
    return path, geoseg.segment(path, ["red", "green", "blue"], segmenter="colors", tile_size=256, overlap=32)


@pytest.mark.qgis
def test_processing_extent_aoi_bands_resolution(qgis_profile, spots, tmp_path):
    scene, expected = spots
    base = {"INPUT": scene, "PROMPTS": "red,green,blue", **COLORS}
    # EXTENT in the raster's CRS, QGIS's order: xmin,xmax,ymin,ymax [CRS]
    box = (404040.0, 3285840.0, 404260.0, 3285960.0)
    extent = f"{box[0]},{box[2]},{box[1]},{box[3]} [EPSG:32617]"
    got = run_in_qgis(qgis_profile, {**base, "EXTENT": extent, "OUTPUT": str(tmp_path / "extent.gpkg")})
    assert got["error"] is None, got
    inside = box_inside = expected[expected.geometry.centroid.within(shapely.box(*box))]
    assert 0 < len(inside) < len(expected)
    assert centroids(gpd.read_file(tmp_path / "extent.gpkg")) == centroids(inside)
    # an AOI layer in lon/lat: its polygons go to the worker through a temporary GeoPackage
    triangle = shapely.Polygon([(404000, 3286000), (404300, 3286000), (404000, 3285700)])
    aoi = gpd.GeoDataFrame(geometry=[triangle], crs=32617).to_crs(4326)
    aoi.to_file(tmp_path / "aoi.gpkg")
    got = run_in_qgis(qgis_profile, {**base, "AOI": str(tmp_path / "aoi.gpkg"), "OUTPUT": str(tmp_path / "aoi_o.gpkg")})
    assert got["error"] is None, got
    inside = aoi_inside = expected[expected.geometry.centroid.within(triangle.buffer(1e-6))]
    assert 0 < len(inside) < len(expected)
    assert centroids(gpd.read_file(tmp_path / "aoi_o.gpkg")) == centroids(inside)
    assert read_provenance(tmp_path / "aoi_o.gpkg", "aoi_o")["area"] == "--aoi aoi (QGIS layer)"
    # both: geoseg takes one area, so the plugin passes their intersection
    got = run_in_qgis(qgis_profile, {**base, "AOI": str(tmp_path / "aoi.gpkg"), "EXTENT": extent,
                                     "OUTPUT": str(tmp_path / "both.gpkg")})
    assert got["error"] is None, got
    inside = expected[expected.geometry.centroid.within(triangle.intersection(shapely.box(*box)).buffer(1e-6))]
    assert 0 < len(inside) < min(len(aoi_inside), len(box_inside))
    assert centroids(gpd.read_file(tmp_path / "both.gpkg")) == centroids(inside)
    # BANDS 3,2,1: the red objects show blue; as a string or as a list of bands
    blue = expected[expected["label"] == "blue"]
    for bands in ("3,2,1", [3, 2, 1]):
        got = run_in_qgis(qgis_profile, {**base, "PROMPTS": "red", "BANDS": bands, "OUTPUT": str(tmp_path / "b.gpkg")})
        assert got["error"] is None and got["count"] == len(blue), (bands, got)
        (tmp_path / "b.gpkg").unlink()
    # RESOLUTION resamples the 0.5 m raster to 1 m on read, as the library does
    got = run_in_qgis(qgis_profile, {**base, "RESOLUTION": 1.0, "OUTPUT": str(tmp_path / "r.gpkg")})
    assert got["error"] is None, got
    coarse = geoseg.segment(scene, ["red", "green", "blue"], segmenter="colors", tile_size=256, overlap=32,
                            resolution=1.0)
    assert centroids(gpd.read_file(tmp_path / "r.gpkg")) == centroids(coarse)
    assert read_provenance(tmp_path / "r.gpkg", "r")["resolution"] == 1.0


ZOOM, TILE = 17, 256
WEB_MERCATOR = 20037508.342789244


def write_xyz_scene(folder, x0=36000, y0=52000, n=3):
    """A scene of n × n XYZ tiles at ZOOM as {z}/{x}/{y}.png under `folder`, and the same pixels as a
    Web Mercator GeoTIFF (the truth). Returns (tile URL template, GeoTIFF path)."""
    size = n * TILE
    rgb = draw(size, size, random_objects(size, size, 40, seed=7, r_range=(5, 14))).transpose(2, 0, 1)
    px = 2 * WEB_MERCATOR / (TILE * 2 ** ZOOM)
    transform = Affine(px, 0, -WEB_MERCATOR + x0 * TILE * px, 0, -px, WEB_MERCATOR - y0 * TILE * px)
    tif = folder / "truth.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:3857",
                       transform=transform) as dst:
        dst.write(rgb)
    for i in range(n):
        for j in range(n):
            (folder / "tiles" / str(ZOOM) / str(x0 + i)).mkdir(parents=True, exist_ok=True)
            with rasterio.open(folder / "tiles" / str(ZOOM) / str(x0 + i) / f"{y0 + j}.png", "w", driver="PNG",
                               width=TILE, height=TILE, count=3, dtype="uint8") as dst:
                dst.write(rgb[:, j * TILE:(j + 1) * TILE, i * TILE:(i + 1) * TILE])
    return f"file://{folder}/tiles/{{z}}/{{x}}/{{y}}.png", str(tif)


@pytest.mark.qgis
def test_processing_renders_a_web_layer(qgis_profile, tmp_path):
    url, tif = write_xyz_scene(tmp_path)
    xyz = {"xyz": f"type=xyz&url={url}&zmin={ZOOM}&zmax={ZOOM}"}
    with rasterio.open(tif) as src:
        b = src.bounds
        lat = np.degrees(np.arctan(np.sinh((b.top + b.bottom) / 2 / WEB_MERCATOR * np.pi)))
        ground = src.res[0] * np.cos(np.radians(lat))  # metres on the ground of one tile pixel
    # EXTENT in lon/lat, inside the tiles: the layer is rendered in its CRS (EPSG:3857) around it
    inner = shapely.box(b.left + 150 * src.res[0], b.bottom + 120 * src.res[0], b.right - 100 * src.res[0],
                        b.top - 90 * src.res[0])
    lonlat = gpd.GeoSeries([inner], crs=3857).to_crs(4326).total_bounds
    extent = f"{lonlat[0]},{lonlat[2]},{lonlat[1]},{lonlat[3]} [EPSG:4326]"
    # a short TMPDIR: the CPU workers' socket lives there, and a UNIX socket path is at most 107 bytes
    temp = Path(tempfile.mkdtemp(prefix="gq-"))
    params = {"INPUT": xyz, "PROMPTS": "red,green,blue", "BACKEND": "colors", "TILE_SIZE": 256, "OVERLAP": 32,
              "EXTENT": extent, "WEB_RESOLUTION": round(ground, 4), "OUTPUT": str(tmp_path / "web.gpkg")}
    got = run_in_qgis(qgis_profile, params, TMPDIR=str(temp))
    assert got["error"] is None and got["crs"] == "EPSG:3857", got
    assert any("rendering" in line for line in got["lines"]) and not list(temp.glob("geoseg_qgis_*"))  # removed
    shutil.rmtree(temp)
    truth = geoseg.segment(tif, ["red", "green", "blue"], segmenter="colors", tile_size=256, overlap=32)
    truth = truth[truth.geometry.centroid.within(inner)]
    found = gpd.read_file(tmp_path / "web.gpkg")
    assert len(truth) > 5 and len(found) == len(truth)
    for label, x, y in centroids(truth):  # each object found in its place, within a tile pixel
        assert any(lb == label and abs(x - x2) < src.res[0] and abs(y - y2) < src.res[0]
                   for lb, x2, y2 in centroids(found)), (label, x, y)
    prov = read_provenance(tmp_path / "web.gpkg", "web")
    assert prov["sources"] == ["web tiles"] and prov["web_layer"]["provider"] == "wms"
    # a web layer needs EXTENT and WEB_RESOLUTION: one line each, before any work
    for drop, words in (("EXTENT", "EXTENT: web tiles is a web layer"), ("WEB_RESOLUTION", "WEB_RESOLUTION: web")):
        got = run_in_qgis(qgis_profile, {k: v for k, v in params.items() if k != drop})
        assert got["error"].count(words) == 1 and got["pid"] is None, got
    got = run_in_qgis(qgis_profile, {**params, "WEB_RESOLUTION": 0.01})  # 40 000 pixels a side: refused
    assert "more than 25000 a side: choose a coarser WEB_RESOLUTION" in got["error"] and got["pid"] is None, got


@pytest.mark.qgis
def test_a_usage_error_is_said_once_before_the_run_starts(qgis_profile, scene, tmp_path):
    # the worker's own checks (here BANDS against the raster) run from the dialog's check of its
    # parameters, with no model: QGIS shows the message once, and no run is started
    got = run_in_qgis(qgis_profile, {"INPUT": scene, "PROMPTS": "red", **COLORS, "BANDS": "1,2,9",
                                     "OUTPUT": str(tmp_path / "o.gpkg")})
    assert got["error"].count("BANDS 9 is out of range") == 1 and got["pid"] is None, got
    assert "bands=" not in got["error"] and not (tmp_path / "o.gpkg").exists()


@pytest.mark.qgis
@pytest.mark.parametrize("how", ["qgis_process", "processing"])
def test_a_qgis_run_writes_nothing_beside_the_input(qgis_profile, tmp_path, how):
    """No RASTER.aux.xml (statistics, a histogram) beside the user's raster, from QGIS's side or from
    geoseg's worker, whether run by qgis_process or by Processing in a QGIS session; non-uint8 bands,
    which both a stretch and QGIS's layer statistics read."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    data = draw(600, 600, random_objects(600, 600, 20, seed=4)).astype(np.uint16) * 40
    raster = write_geotiff(inputs / "scene.tif", data, transform=Affine(0.5, 0, 404000, 0, -0.5, 3286000))
    out = tmp_path / "out.gpkg"
    if how == "qgis_process":
        env, _ = qgis_profile
        proc = subprocess.run([QGIS_PROCESS, "--json", "run", "geoseg:segment", "--", f"INPUT={raster}",
                               "PROMPTS=red", "BACKEND=colors", "TILE_SIZE=256", "OVERLAP=32", f"OUTPUT={out}"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    else:
        got = run_in_qgis(qgis_profile, {"INPUT": raster, "PROMPTS": "red", **COLORS, "OUTPUT": str(out)})
        assert got["error"] is None and got["valid"], got
    assert out.exists()
    assert sorted(p.name for p in inputs.iterdir()) == ["scene.tif"]
