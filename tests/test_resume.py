"""Staged runs: resume after kill -9 and Ctrl-C, settings that must match, atomic output."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyogrio
import pytest
from conftest import one_line_error, run

import geoseg
import geoseg.run.inspection
from geoseg.testing import ColorSegmenter, CountingSegmenter, make_scene

PROMPTS = ["red", "green", "blue"]
TILING = dict(tile_size=256, overlap=32)

KILLABLE = r"""
import sys
import geoseg
from geoseg.testing import ColorSegmenter
scene, out = sys.argv[1:3]
geoseg.segment(scene, ["red", "green", "blue"], segmenter=ColorSegmenter(delay=0.05, batch_size=2),
               tile_size=256, overlap=32, output=out)
"""


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("scene") / "scene.tif", size=1500, seed=11, n_objects=400)


@pytest.fixture(scope="module")
def reference(scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.gpkg"
    geoseg.segment(scene, PROMPTS, segmenter=ColorSegmenter(), output=out, **TILING)
    return pyogrio.read_dataframe(out)


def staged_tiles(work: Path) -> int:
    dbs = list(work.glob("*.sqlite"))
    if not dbs:
        return 0
    try:
        with sqlite3.connect(f"file:{dbs[0]}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
    except sqlite3.OperationalError:  # tables not made yet
        return 0


def start_and_stop(cmd, work: Path, sig, at_least: int = 8):
    """Start `cmd`, wait until `at_least` tiles are staged, send `sig`; the process's exit code."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while staged_tiles(work) < at_least:
        assert proc.poll() is None, f"the run ended before it could be stopped: {proc.communicate()}"
        assert time.monotonic() < deadline, "no tile was staged in 60 s"
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def assert_same(a, b):
    assert len(a) == len(b) > 100
    assert list(a.columns) == list(b.columns)
    for col in ["id", "label", "score", "n_tiles", "source"]:
        assert (a[col].to_numpy() == b[col].to_numpy()).all(), col
    np.testing.assert_allclose(a["area_m2"], b["area_m2"], rtol=1e-12)
    assert a.geometry.geom_equals_exact(b.geometry, tolerance=0).all()


def test_killed_run_resumes_from_staged_tiles_and_gives_the_same_output(scene, reference, tmp_path):
    out = tmp_path / "out.gpkg"
    work = Path(str(out) + ".geoseg-work")
    code, _ = start_and_stop([sys.executable, "-c", KILLABLE, scene, str(out)], work, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not out.exists() and not list(tmp_path.glob(".out*"))  # no output, not even a partial one
    staged = staged_tiles(work)
    total = geoseg.run.inspection.describe(scene, **TILING)["tiles"]
    assert 8 <= staged < total

    seg = CountingSegmenter(batch_size=2)
    gdf = geoseg.segment(scene, PROMPTS, segmenter=seg, output=out, **TILING)
    assert seg.tiles == total - staged  # only the tiles not yet done
    assert not work.exists()  # removed once the output is written
    assert_same(pyogrio.read_dataframe(out), reference)
    assert len(gdf) == len(reference)


def test_ctrl_c_then_the_same_command_resumes(scene, reference, tmp_path):
    out = tmp_path / "out.gpkg"
    work = Path(str(out) + ".geoseg-work")
    # a slow run: the `colors` backend takes no delay from the CLI, so make many small tiles
    args = [scene, "-p", "red", "-p", "green", "-p", "blue", "--backend", "colors", "-o", out]
    geoseg_cli = str(Path(sys.executable).with_name("geoseg"))
    cmd = [geoseg_cli, "segment", *map(str, args), "--tile-size", "64", "--overlap", "8"]
    code, err = start_and_stop(cmd, work, signal.SIGINT, at_least=20)
    assert code == 130, err
    assert "interrupted" in err and "resume" in err and "Traceback" not in err
    assert not out.exists() and staged_tiles(work) >= 20

    r = run("segment", *args, "--tile-size", "64", "--overlap", "8", "-q")
    assert r.exit_code == 0, r.output
    fresh = tmp_path / "fresh.gpkg"
    r = run("segment", *args[:-1], fresh, "--tile-size", "64", "--overlap", "8", "-q")
    assert r.exit_code == 0, r.output
    assert_same(pyogrio.read_dataframe(out), pyogrio.read_dataframe(fresh))


def cli_args(scene, out, prompts=PROMPTS, tile_size=256, overlap=32, extra=()):
    return [scene, *[x for p in prompts for x in ("-p", p)], "--backend", "colors", "-o", out,
            "--tile-size", tile_size, "--overlap", overlap, "-q", *extra]


@pytest.fixture
def interrupted(scene, tmp_path):
    """An output whose run was killed: (CLI args of the same run, output, work folder, tiles staged)."""
    out = tmp_path / "out.gpkg"
    work = Path(str(out) + ".geoseg-work")
    start_and_stop([sys.executable, "-c", KILLABLE, scene, str(out)], work, signal.SIGKILL)
    return cli_args(scene, out), out, work, staged_tiles(work)


@pytest.mark.parametrize("change, option", [
    (dict(prompts=["red", "green"]), "--prompt"),
    (dict(tile_size=300), "--tile-size"),
    (dict(overlap=40), "--overlap"),
    (dict(extra=["--score-threshold", "0.7"]), "--score-threshold"),
    (dict(extra=["--bands", "3,2,1"]), "--bands"),
])
def test_a_changed_setting_never_mixes_with_staged_results(interrupted, scene, change, option):
    _, out, work, staged = interrupted
    changed = cli_args(scene, out, **change)
    line = one_line_error(run("segment", *changed))
    assert option in line and "--restart" in line
    assert staged_tiles(work) == staged and not out.exists()  # nothing lost, nothing written

    r = run("segment", *changed, "--restart")
    assert r.exit_code == 0, r.output
    assert out.exists() and not work.exists()


def test_a_changed_input_file_is_refused(interrupted, scene):
    args, out, work, staged = interrupted
    os.utime(scene, ns=(time.time_ns(), time.time_ns()))
    line = one_line_error(run("segment", *args))
    assert "changed since the interrupted run" in line and "--restart" in line
    assert staged_tiles(work) == staged


def test_resume_with_the_cli_after_the_api_was_killed(interrupted, reference):
    args, out, work, _ = interrupted
    r = run("segment", *args)
    assert r.exit_code == 0, r.output
    assert_same(pyogrio.read_dataframe(out), reference)


def test_work_folder_that_is_not_ours_is_refused(scene, tmp_path):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    line = one_line_error(run("segment", scene, "-p", "red", "--backend", "colors", "-o", tmp_path / "o.gpkg",
                              "--work-dir", other))
    assert "not a geoseg work folder" in line
    assert (other / "notes.txt").read_text() == "keep"


def one_good_one_bad(tmp_path):
    """A folder of a good raster and a broken one (a run over it fails halfway and keeps its work
    folder), and an output folder."""
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    out.mkdir()
    make_scene(folder / "a.tif", size=256, seed=1)
    (folder / "b.tif").write_bytes(b"II*\0 not a raster")
    return folder, out


def test_restart_may_replace_what_the_interrupted_run_wrote(tmp_path):
    # a run whose first file was written and whose second failed keeps its work folder; --restart
    # starts over and replaces its own output instead of failing at the end on "exists"
    folder, out = one_good_one_bad(tmp_path)
    args = ["segment", folder, "-p", "red", "--backend", "colors", "--output-dir", out, "-q"]
    first = run(*args)
    assert first.exit_code == 1 and (out / "a.gpkg").exists(), first.output
    again = run(*args, "--restart")
    assert again.exit_code == 1 and "1 of 2 files failed" in again.output, again.output
    assert "already" not in again.output and "a.gpkg" in again.output


def test_a_changed_setting_is_refused_before_the_model_loads(tmp_path):
    # a resume refused only after minutes of loading weights is refused in a second now
    folder, out = one_good_one_bad(tmp_path)
    first = run("segment", folder, "-p", "red", "--backend", "colors", "--output-dir", out, "-q",
                "--tile-size", 128, "--overlap", 16)
    assert first.exit_code == 1  # b.tif failed: the work folder is kept
    # this rerun's model does not exist: the changed tile size is refused before it is looked for
    err = one_line_error(run("segment", folder, "-p", "red", "--backend", "sam3", "--model", tmp_path / "none",
                             "--output-dir", out, "-q", "--tile-size", 256, "--overlap", 16))
    assert "made with --tile-size 128, this run has --tile-size 256" in err and "--restart" in err
