"""kill -9 at 20 seeded moments of a run (staging tiles, merging rows, writing the output), each run
resumed by the next: the final output is the uninterrupted run's, and no temporary file is left."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyogrio
import pytest
from test_resume import assert_same, staged_tiles

import geoseg
from geoseg.testing import ColorSegmenter, make_scene

RUN = r"""
import sys
import geoseg
from geoseg.testing import ColorSegmenter
geoseg.segment(sys.argv[1], ["red", "green", "blue"], segmenter=ColorSegmenter(delay=0.01, batch_size=2),
               tile_size=128, overlap=16, output=sys.argv[2])
"""
KILLS = 20


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("scene") / "scene.tif", size=1200, seed=5, n_objects=500)


def _temporary(folder: Path) -> list[Path]:
    """The temporary files under `folder`; none once the run has removed it (a finished run's work folder
    can vanish while it is listed)."""
    try:
        return [p for p in folder.rglob(".*") if ".tmp" in p.name]
    except FileNotFoundError:
        return []


def _moment(proc: subprocess.Popen, out: Path, work: Path, phase: str, at: int) -> bool:
    """Wait for the moment `phase` (staging: `at` tiles staged; merging: the merged objects being
    written; writing: the output's temporary file made); False if the run ended first."""
    while proc.poll() is None:
        if phase == "staging" and staged_tiles(work) >= at:
            return True
        if phase == "merging" and work.is_dir() and any(".objects." in p.name for p in _temporary(work)):
            return True
        if phase == "writing" and any(p.name.startswith(f".{out.stem}.") for p in _temporary(out.parent)):
            return True
        time.sleep(0.002)
    return False


def test_kill_9_at_20_moments_then_resume_gives_the_uninterrupted_output(scene, tmp_path):
    reference = tmp_path / "reference.gpkg"
    geoseg.segment(scene, ["red", "green", "blue"], segmenter=ColorSegmenter(), tile_size=128, overlap=16,
                   output=reference)
    rng = random.Random(20)
    out = tmp_path / "run" / "out.gpkg"
    out.parent.mkdir()
    work = Path(f"{out}.geoseg-work")
    kills: list[str] = []
    finished = 0
    while len(kills) < KILLS:
        phase = rng.choice(["staging", "staging", "merging", "writing"])
        proc = subprocess.Popen([sys.executable, "-c", RUN, scene, str(out)], stderr=subprocess.PIPE, text=True)
        if _moment(proc, out, work, phase, rng.randint(1, 80)):
            proc.send_signal(signal.SIGKILL)
            kills.append(phase)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, -signal.SIGKILL), err
        if proc.returncode == 0:  # done: the output is the uninterrupted run's; start again from nothing
            assert_same(pyogrio.read_dataframe(out), pyogrio.read_dataframe(reference))
            assert not work.exists() and not _temporary(out.parent), _temporary(out.parent)
            out.unlink()
            finished += 1
    # the last run resumes what the 20th kill left
    proc = subprocess.run([sys.executable, "-c", RUN, scene, str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert_same(pyogrio.read_dataframe(out), pyogrio.read_dataframe(reference))
    assert not work.exists() and not _temporary(out.parent), _temporary(out.parent)
    assert {"staging", "merging", "writing"} <= set(kills), kills  # every stage was hit
    assert finished >= 1
