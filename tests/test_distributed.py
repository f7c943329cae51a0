"""Dask: a real LocalCluster on loopback gives the serial output, also when a worker dies mid-run."""

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyogrio
import pytest
from conftest import one_line_error, run
from test_resume import assert_same, staged_tiles

import geoseg
from geoseg.run import pipeline
from geoseg.run.distributed import DaskEngine, connect
from geoseg.testing import ColorSegmenter, make_scene

PROMPTS = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    d = tmp_path_factory.mktemp("dask")
    return [make_scene(d / f"s{k}.tif", size=1100, seed=20 + k, n_objects=250) for k in range(2)]


@pytest.fixture(scope="module")
def client():
    c = connect(workers=2)
    yield c
    cluster = c.cluster
    c.close()
    cluster.close()


def serial(scenes, out):
    geoseg.segment(scenes, PROMPTS, segmenter=ColorSegmenter(), tile_size=256, overlap=32, output=out)
    return pyogrio.read_dataframe(out)


def test_dask_output_equals_the_serial_output(scenes, client, tmp_path):
    settings = pipeline.Settings.of(PROMPTS, tile_size=256, overlap=32)
    out = tmp_path / "dask.gpkg"
    engine = DaskEngine(client, "colors", block=4)
    summary = pipeline.run(scenes, settings, engine, output=out)
    assert not summary.failed
    assert engine.options["score_threshold"] == 0.0  # learnt from the workers' segmenter
    # each worker process built the segmenter once and kept it
    built = client.run(lambda: len(__import__("geoseg.run.distributed").run.distributed._SEGMENTERS))
    assert set(built.values()) <= {1} and sum(built.values()) >= 1
    assert_same(pyogrio.read_dataframe(out), serial(scenes, tmp_path / "serial.gpkg"))


def test_a_worker_killed_mid_run_loses_nothing(scenes, client, tmp_path):
    settings = pipeline.Settings.of(PROMPTS, tile_size=256, overlap=32)
    out = tmp_path / "dask.gpkg"
    work = tmp_path / "work"
    engine = DaskEngine(client, ColorSegmenter(delay=0.15, batch_size=2), block=2)
    killed = {}

    def kill_one_worker():
        while staged_tiles(work) < 6:
            time.sleep(0.02)
        pids = client.run(os.getpid)
        addr, pid = sorted(pids.items())[0]
        os.kill(pid, signal.SIGKILL)
        killed[addr] = pid

    t = threading.Thread(target=kill_one_worker, daemon=True)
    t.start()
    summary = pipeline.run(scenes[:1], settings, engine, output=out, work_dir=work)
    t.join(timeout=5)
    assert killed, "the worker was not killed during the run"
    assert not summary.failed
    assert os.getpid() not in killed.values()
    client.wait_for_workers(2, timeout=60)  # the nanny restarts it
    assert_same(pyogrio.read_dataframe(out), serial(scenes[:1], tmp_path / "serial.gpkg"))


def test_cli_workers_gives_the_serial_output(scenes, tmp_path):
    args = ["-p", "red", "-p", "green", "-p", "blue", "--backend", "colors", "--tile-size", "256",
            "--overlap", "32", "-q"]
    r = run("segment", *scenes, *args, "-o", tmp_path / "dask.gpkg", "--workers", "2")
    assert r.exit_code == 0, r.output
    r = run("segment", *scenes, *args, "-o", tmp_path / "serial.gpkg")
    assert r.exit_code == 0, r.output
    a, b = (pyogrio.read_dataframe(tmp_path / f) for f in ("dask.gpkg", "serial.gpkg"))
    assert_same(a, b)
    assert np.array_equal(a["source"].unique(), ["s0.tif", "s1.tif"])


def test_cli_cluster_options_errors(scenes, tmp_path):
    base = [scenes[0], "-p", "red", "--backend", "colors", "-o", tmp_path / "o.gpkg"]
    assert "either --workers" in one_line_error(run("segment", *base, "--workers", "2", "--scheduler", "tcp://x:1"))
    assert "--resources" in one_line_error(run("segment", *base, "--resources", "GPU=1"))
    assert "NAME=AMOUNT" in one_line_error(run("segment", *base, "--workers", "1", "--resources", "GPU"))
    line = one_line_error(run("segment", *base, "--scheduler", "tcp://127.0.0.1:9"))
    assert "cannot reach the Dask scheduler" in line
    assert not (tmp_path / "o.gpkg").exists()


def test_a_corrupt_file_on_the_cluster_fails_alone(scenes, client, tmp_path):
    broken = tmp_path / "broken.tif"
    data = Path(scenes[0]).read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    settings = pipeline.Settings.of(PROMPTS, tile_size=256, overlap=32)
    summary = pipeline.run([broken, scenes[1]], settings, DaskEngine(client, "colors"), output=tmp_path / "o.gpkg")
    assert [f.state for f in summary.files] == ["failed", "done"]
    assert "corrupt or truncated" in summary.files[0].error
    assert set(pyogrio.read_dataframe(tmp_path / "o.gpkg")["source"]) == {"s1.tif"}
