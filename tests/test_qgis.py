"""The QGIS plugin: its worker and installer (always), and the provider in a real headless QGIS (marker `qgis`).

QGIS runs under its own Python (Debian: /usr/bin/python3 with python3-qgis), so the QGIS tests start it in
a subprocess (tests/qgis/run_algorithm.py, qgis_process) with GEOSEG_PYTHON pointing back to this Python.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import geopandas as gpd
import pytest

import geoseg
from geoseg.qgis.runner import Cancelled, WorkerError, run_worker
from geoseg.testing import build_tiny_sam3, make_scene

HERE = Path(__file__).parent
PLUGIN = Path(geoseg.__file__).parent / "qgis"
QGIS_PYTHON = os.environ.get("QGIS_PYTHON", "/usr/bin/python3")
QGIS_PROCESS = os.environ.get("QGIS_PROCESS", "/usr/bin/qgis_process.bin")
FIELDS = ["id", "label", "score", "area_m2", "n_tiles", "source"]
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
    assert lines[-1] == {"type": "done", "output": str(out), "objects": len(expected), "crs": "EPSG:32617"}
    got = gpd.read_file(out)
    assert list(got.columns) == [*FIELDS, "geometry"] and len(got) == len(expected)


@pytest.mark.parametrize("job, kind, words", [
    ({"backend": "colors", "prompts": ["tree"]}, "usage", "red, green and blue"),
    ({"backend": "sam3", "prompts": ["tree"], "model": "/no/such/sam3"}, "model", "no such folder"),
    ({"backend": "colors", "prompts": ["red"], "inputs": ["/no/such.tif"]}, "usage", "/no/such.tif"),
])
def test_worker_errors_are_one_protocol_line(scene, tmp_path, job, kind, words):
    code, lines = worker({"inputs": [scene], "output": str(tmp_path / "o.gpkg"), **job})
    assert code == 2 and lines[-1]["type"] == "error" and lines[-1]["kind"] == kind, lines
    assert words in lines[-1]["text"] and not (tmp_path / "o.gpkg").exists()


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
    allowed = set(sys.stdlib_module_names) | {"qgis", "processing", "PyQt5"}
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


def test_install_copy_link_and_zip(tmp_path):
    from click.testing import CliRunner

    from geoseg.cli import main

    env = {"QGIS_CUSTOM_CONFIG_PATH": str(tmp_path / "cfg")}
    r = CliRunner().invoke(main, ["qgis", "install", "--profile", "work"], env=env)
    assert r.exit_code == 0, r.output
    target = tmp_path / "cfg" / "profiles" / "work" / "python" / "plugins" / "geoseg_qgis"
    assert (target / "metadata.txt").is_file() and (target / "algorithm.py").is_file()
    assert "qgis_process plugins enable geoseg_qgis" in r.output
    r = CliRunner().invoke(main, ["qgis", "install", "--profile", "work", "--link"], env=env)  # replaces the copy
    assert r.exit_code == 0 and target.is_symlink() and target.resolve() == PLUGIN.resolve(), r.output
    r = CliRunner().invoke(main, ["qgis", "install", "--zip", str(tmp_path / "geoseg_qgis.zip")])
    assert r.exit_code == 0, r.output
    names = zipfile.ZipFile(tmp_path / "geoseg_qgis.zip").namelist()
    assert "geoseg_qgis/metadata.txt" in names and "geoseg_qgis/__init__.py" in names
    assert not any("__pycache__" in n for n in names)


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
    env = {**outside_venv(), "QGIS_CUSTOM_CONFIG_PATH": str(cfg), "QT_QPA_PLATFORM": "offscreen",
           "GEOSEG_PYTHON": sys.executable, "XDG_RUNTIME_DIR": str(cfg)}
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
                                     "TILE_SIZE": 256, "OVERLAP": 32, "OUTPUT": str(tmp_path / "o.gpkg")})
    assert got["error"] is None and got["valid"] and got["crs"] == "EPSG:32617", got


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
