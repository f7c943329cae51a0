"""Runs at the same time: a live run's work folder is locked; runs for two layers of one GeoPackage both write."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import pyogrio
import pytest
from conftest import one_line_error, run
from shapely.geometry import Point
from test_resume import staged_tiles

from geoseg.io import files
from geoseg.testing import make_scene

SLOW = r"""
import sys
import geoseg
from geoseg.testing import ColorSegmenter
scene, out, layer, prompt = sys.argv[1:5]
geoseg.segment(scene, [prompt], segmenter=ColorSegmenter(delay=0.05, batch_size=2), tile_size=256, overlap=32,
               output=out, layer=layer)
"""
ARGS = ["--backend", "colors", "--tile-size", "256", "--overlap", "32"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("scene") / "scene.tif", size=1500, seed=11, n_objects=300)


def slow_run(scene, out, layer="detections", prompt="red"):
    return subprocess.Popen([sys.executable, "-c", SLOW, scene, str(out), layer, prompt],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_staged(proc, work: Path, n: int = 4) -> None:
    deadline = time.monotonic() + 60
    while staged_tiles(work) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_live_run_is_never_resumed_nor_discarded_by_another(scene, tmp_path):
    out = tmp_path / "out.gpkg"
    work = Path(f"{out}.geoseg-work")
    first = slow_run(scene, out)
    try:
        wait_staged(first, work)
        for extra in ([], ["--restart"]):
            line = one_line_error(run("segment", scene, "-p", "red", "-o", out, *ARGS, *extra), code=2)
            assert f"another geoseg run (pid {first.pid} on " in line and "started 20" in line
            assert f"is using the work folder {work}" in line
        assert first.poll() is None and staged_tiles(work) >= 4  # untouched: it goes on
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
        r = run("segment", scene, "-p", "red", "-o", out, *ARGS)  # a dead run's lock is taken over
        assert r.exit_code == 0, r.output
        assert f"taking over from the geoseg run pid {first.pid} on " in r.output
        assert out.is_file() and not work.exists()
    finally:
        first.kill()


def test_two_runs_writing_two_layers_of_one_geopackage_at_once_both_write(scene, tmp_path):
    out = tmp_path / "city.gpkg"
    roads = gpd.GeoDataFrame({"name": ["a"]}, geometry=[Point(404000, 3286000).buffer(5)], crs=32617)
    pyogrio.write_dataframe(roads, out, layer="roads")
    reds, greens = slow_run(scene, out, "reds", "red"), slow_run(scene, out, "greens", "green")
    for proc in (reds, greens):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert sorted(pyogrio.list_layers(out)[:, 0]) == ["greens", "reds", "roads"]
    for layer, prompt in (("reds", "red"), ("greens", "green")):
        gdf = pyogrio.read_dataframe(out, layer=layer)
        assert len(gdf) > 10 and set(gdf["label"]) == {prompt}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["city.gpkg"]  # no work folder, no temporary file


def test_a_run_removes_the_temporary_files_of_killed_runs_only(scene, tmp_path):
    out = tmp_path / "out.gpkg"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, tag = int(gone.stdout), files.HOST_TAG
    other_host = "000000" if tag != "000000" else "111111"
    left = [f".out.{dead}-{tag}.0a1b2c.tmp.gpkg", f".out.{dead}-{tag}.0a1b2c.tmp.gpkg-journal",
            f".out.{dead}-{tag}.0a1b2c.tmp.4f3e.gpkg"]
    kept = [f".out.{os.getpid()}-{tag}.0a1b2c.tmp.gpkg",  # a live run's
            f".out.{dead}-{other_host}.0a1b2c.tmp.gpkg"]  # another host's: its process cannot be checked here
    for name in left + kept:
        (tmp_path / name).write_bytes(b"x" * 100)
    r = run("segment", scene, "-p", "red", "-o", out, *ARGS)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.gpkg", *kept])
    assert "left by a run killed while writing it" in r.output
