"""A full disk and a read-only work folder, named as such: real small file systems (tmpfs in a
mount namespace of our own), real runs of the CLI."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from geoseg.testing import make_scene

GEOSEG = str(Path(sys.executable).with_name("geoseg"))
ARGS = "-p red -p green --backend colors --tile-size 256 --overlap 32 -q"


def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                                "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True, timeout=30)
    except OSError:
        return False
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _can_mount(), reason="needs unshare to mount a small file system")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("scene") / "scene.tif", size=1500, seed=11, n_objects=300)


def in_namespace(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                          capture_output=True, text=True, timeout=300)


def error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geoseg: error: "), stderr
    return lines[0]


@pytest.mark.parametrize("size, full", [
    ("64k", ".sqlite"),  # the staging store, as it is made
    ("300k", ".sqlite"),  # the staging store, as tiles are staged
    ("700k", ".objects.gpkg"),  # the merged objects (simplified polygons: smaller than before)
])
def test_a_full_work_folder_is_named(scene, tmp_path, size, full):
    small = tmp_path / "small"
    small.mkdir()
    out = small / "out.gpkg"
    r = in_namespace(f"mount -t tmpfs -o size={size} tmpfs {small} && {GEOSEG} segment {scene} {ARGS} -o {out}; "
                     f"echo $? >&2; ls -A {small}")
    *lines, code = r.stderr.strip().splitlines()
    assert code == "1"
    line = error_line("\n".join(lines))
    assert f"no space left on the device holding {out}.geoseg-work/" in line and line.split(":")[2].endswith(full)
    assert "rerun the same command to resume" in line
    assert r.stdout.split() == ["out.gpkg.geoseg-work"]  # no output, not even a partial one


def test_a_full_output_device_is_named_and_the_rerun_resumes(scene, tmp_path):
    small, work = tmp_path / "small", tmp_path / "work"
    small.mkdir()
    out = small / "out.gpkg"
    run = f"{GEOSEG} segment {scene} {ARGS} -o {out} --work-dir {work}"
    r = in_namespace(f"mount -t tmpfs -o size=150k tmpfs {small} && {run}; echo $?; ls -A {small}; "
                     f"mount -o remount,size=4m {small} && {run} && ls -A {small}")
    line = error_line(r.stderr.splitlines()[0] + "\n")
    assert line == (f"geoseg: error: no space left on the device holding {out}: free some space, then rerun the "
                    f"same command to resume (nothing half-written was kept)")
    code, *rest = r.stdout.split()
    assert code == "1" and rest == ["out.gpkg"], r.stdout + r.stderr  # nothing left after the failure; then written
    assert not work.exists()  # the rerun resumed and finished


def test_a_read_only_work_folder_is_called_a_work_folder(scene, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    r = in_namespace(f"mount --bind {ro} {ro} && mount -o remount,ro,bind {ro} && "
                     f"{GEOSEG} segment {scene} {ARGS} -o {tmp_path / 'out.gpkg'} --work-dir {ro / 'w'}; echo $? >&2")
    *lines, code = r.stderr.strip().splitlines()
    assert code == "2"
    assert error_line("\n".join(lines)) == (f"geoseg: error: work folder {ro / 'w'}: {ro} is not writable: pass "
                                            f"another --work-dir")
    assert not (tmp_path / "out.gpkg").exists()
