"""CPU worker processes (`cpu_workers`) and `--profile`: the same output with
any number of workers, workers that never import torch nor the caller's
script, no worker left behind, and where the time went."""

import multiprocessing.forkserver
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pyogrio
import pytest
from conftest import one_line_error, run

import geoseg
from geoseg.errors import UsageError
from geoseg.run import pipeline, workers
from geoseg.run.engine import LocalEngine
from geoseg.testing import CountingSegmenter, make_scene

PROMPTS = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """A generated scene with many objects per 256 px tile, many across seams."""
    return make_scene(tmp_path_factory.mktemp("dense") / "dense.tif", size=1400, seed=5, n_objects=900)


def read_back(path):
    meta, _, geoms, fields = pyogrio.raw.read(path)
    return meta["fields"].tolist(), [np.asarray(f).tolist() for f in fields], [bytes(g) for g in geoms]


@pytest.mark.parametrize("options", [{}, {"dst_crs": "EPSG:4326", "simplify": 0.5, "bbox": (404100, 3285500,
                                                                                             404500, 3285900)}],
                         ids=["plain", "reprojected-area"])
def test_the_output_is_the_same_with_any_number_of_workers(dense, tmp_path, options, monkeypatch):
    monkeypatch.setattr(workers, "CHUNK", 7)  # rows of objects cut in many tasks, written back in order
    outs = []
    for n in (0, 1, 2):
        out = tmp_path / f"w{n}.gpkg"
        geoseg.segment(dense, PROMPTS, segmenter=CountingSegmenter(batch_size=2), tile_size=256, overlap=32,
                       output=out, cpu_workers=n, **options)
        outs.append(read_back(out))
    assert len(outs[0][2]) > 100  # many objects, so the comparison means something
    assert outs[1] == outs[0]
    assert outs[2] == outs[0]


def test_the_workers_import_neither_torch_nor_the_callers_script(tmp_path):
    script = tmp_path / "unguarded.py"  # no main guard: it would run again in every worker that imports it
    pre = "import torch\n" if _has("torch") else ""  # the caller has torch loaded: the workers still do not
    script.write_text(
        pre + "import json, sys\n"
        f"open({str(tmp_path / 'runs')!r}, 'a').write('run\\n')\n"
        "from geoseg.run import workers\n"
        "with workers.Pool(1) as pool:\n"
        "    loaded = pool.submit(workers.loaded, ['torch', 'transformers']).result()\n"
        "print(json.dumps(loaded))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines() == ["[]"]
    assert (tmp_path / "runs").read_text() == "run\n"  # the script did not run again in the worker


def _has(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _worker_pids():
    """Live processes forked by multiprocessing's fork server (our workers)."""
    server = multiprocessing.forkserver._forkserver._forkserver_pid
    if server is None:
        return set()
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == server and fields[0] != "Z":
                pids.add(int(entry))
    return pids


class Interrupted(CountingSegmenter):
    """Ctrl-C once some rows have been merged (so the workers are busy)."""

    def segment(self, tiles, prompts):
        if self.tiles >= 40:
            raise KeyboardInterrupt
        return super().segment(tiles, prompts)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to find the worker processes")
@pytest.mark.parametrize("how", ["done", "interrupted", "failed"])
def test_no_worker_process_is_left_behind(dense, tmp_path, how):
    seg = {"done": CountingSegmenter(batch_size=2), "interrupted": Interrupted(batch_size=2),
           "failed": CountingSegmenter(batch_size=2, fail_after=40)}[how]
    settings = pipeline.Settings.of(PROMPTS, tile_size=256, overlap=32, cpu_workers=2)
    before = _worker_pids()
    error = {"done": None, "interrupted": KeyboardInterrupt, "failed": geoseg.errors.RunError}[how]
    if error is None:
        summary = pipeline.run([dense], settings, LocalEngine(seg), output=tmp_path / "o.gpkg")
        assert summary.files[0].objects > 100
    else:
        with pytest.raises(error):
            pipeline.run([dense], settings, LocalEngine(seg), output=tmp_path / "o.gpkg")
    assert seg.tiles >= 40
    deadline = time.monotonic() + 10
    while _worker_pids() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _worker_pids() - before


def test_a_pool_runs_tasks_in_order_and_hands_back_their_errors():
    with workers.Pool(1) as pool:
        futures = [pool.submit(int, text) for text in ("1", "2", "x")]
        assert [f.result() for f in futures[:2]] == [1, 2]
        with pytest.raises(ValueError, match="invalid literal"):
            futures[2].result()
    with workers.Pool(0) as inline:  # no workers: run at once, in this thread
        assert inline.submit(int, "3").result() == 3
        with pytest.raises(ValueError):
            inline.submit(int, "y").result()


def test_cpu_workers_is_checked_before_any_work():
    with pytest.raises(UsageError, match=r"cpu_workers=-1: give a number of worker processes"):
        pipeline.Settings.of(PROMPTS, cpu_workers=-1)
    assert workers.check_workers(None) == workers.default_workers() >= 0
    assert workers.check_workers(0) == 0


def test_cli_cpu_workers_and_profile(dense, tmp_path):
    args = ["segment", dense, "-p", "red", "-p", "blue", "--backend", "colors", "--tile-size", "256",
            "--overlap", "32", "-q", "-o", tmp_path / "o.gpkg", "--cpu-workers", "1", "--profile"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    text = result.output
    for stage in ("read", "model", "post-process", "stage", "merge", "vectorise+write"):
        assert f"  {stage} " in text
    assert "model idle" in text and "1 CPU worker process" in text and "dense.tif" in text
    assert "set the pace" in text  # which side did depends on the machine's load
    bad = run(*args[:-3], "--cpu-workers", "-1")
    one_line_error(bad)
    assert "--cpu-workers" in bad.output


def test_the_profile_counts_every_stage(dense, tmp_path):
    seg = CountingSegmenter(batch_size=2, delay=0.02)
    settings = pipeline.Settings.of(PROMPTS, tile_size=256, overlap=32, cpu_workers=1)
    summary = pipeline.run([dense], settings, LocalEngine(seg), output=tmp_path / "o.gpkg")
    p = summary.files[0].profile
    assert p.tiles == summary.files[0].tiles == 49
    assert p.passes == seg.tiles == summary.files[0].cost[0] == 49  # no tile refined: one forward pass each
    assert "49 tiles in 49 forward passes" in p.table("dense.tif")
    assert p.model >= 0.02 * 25  # 25 calls of up to 2 tiles, each sleeping 0.02 s
    assert all(getattr(p, k) > 0 for k in ("read", "post", "stage", "merge", "write"))
    assert 0 < p.wall <= summary.seconds
    assert 0 <= p.model_idle < 1
    assert p.model_idle == pytest.approx(1 - p.model / p.wall)
    total = summary.profile
    assert total.model == p.model and total.wall == summary.seconds and total.workers == 1


class Killer(CountingSegmenter):
    """Kills the CPU workers at each call once some rows are merged, as the out-of-memory killer may."""

    def segment(self, tiles, prompts):
        if self.tiles >= 30:
            for pid in _worker_pids():
                os.kill(pid, signal.SIGKILL)
        return super().segment(tiles, prompts)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to find the worker processes")
def test_a_worker_that_dies_fails_the_file_with_a_hint_or_is_replaced(dense, tmp_path):
    """A worker killed with a task in flight fails the file (it is rerun); one
    killed between tasks is replaced. Either way no object is lost or doubled."""
    out = tmp_path / "o.gpkg"
    try:
        geoseg.segment(dense, PROMPTS, segmenter=Killer(batch_size=2, delay=0.05), tile_size=256, overlap=32,
                       output=out, cpu_workers=1)
    except geoseg.errors.RunError as e:
        assert re.fullmatch(r".*dense.tif: a CPU worker process died while vectorising row \d+ of tiles "
                            r"\(out of memory\?\): rerun to resume, with fewer cpu_workers= or cpu_workers=0",
                            str(e)), str(e)
        assert not out.exists()
        return
    geoseg.segment(dense, PROMPTS, segmenter=CountingSegmenter(batch_size=2), tile_size=256, overlap=32,
                   output=tmp_path / "ref.gpkg", cpu_workers=0)
    assert read_back(out) == read_back(tmp_path / "ref.gpkg")


def test_a_pool_replaces_a_dead_worker():
    with workers.Pool(1) as pool:
        with pytest.raises(BrokenProcessPool):
            pool.submit(os._exit, 3).result()
        assert pool.submit(int, "5").result() == 5


def test_the_verdict_names_what_set_the_pace():
    from geoseg.run.profile import Profile

    assert Profile(model=9.0, wall=10.0).verdict() == "the model set the pace"
    slow_merge = Profile(model=2.0, merge=6.0, read=1.0, wall=10.0).verdict()
    assert "the CPU side set the pace" in slow_merge and "merge" in slow_merge
    assert "vectorise+write: more" in Profile(model=1.0, write=8.0, wall=10.0).verdict()


def test_a_deep_temporary_folder_does_not_break_the_workers(tmp_path):
    """The fork server's UNIX socket must fit in 107 bytes whatever $TMPDIR is (Python < 3.13 puts it
    there): a 150-character TMPDIR, the default options otherwise, and the run finishes."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    assert len(str(deep)) > 120
    scene = make_scene(tmp_path / "scene.tif", size=400, seed=2, n_objects=30)
    env = {**os.environ, "TMPDIR": str(deep)}
    cmd = [os.path.join(os.path.dirname(sys.executable), "geoseg"), "segment", str(scene), "-p", "red",
           "--backend", "colors", "--tile-size", "128", "--overlap", "16", "--cpu-workers", "1",
           "-o", str(tmp_path / "out.gpkg")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "objects" in r.stderr and (tmp_path / "out.gpkg").exists()
    assert not list(deep.iterdir())  # multiprocessing's folder went to a short place, and was removed
