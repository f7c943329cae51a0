"""SAM 3 weights that cannot be had offline: one line in a second, before torch loads.

The real CLI runs in a subprocess with an empty (or prepared) Hugging Face cache, and
HF_ENDPOINT points at a local socket, so nothing touches the network: a closed port
(refused), a socket that never answers (a dropped connection), or a tiny hub that
answers "gated" or "not found".
"""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyogrio
import pytest

pytest.importorskip("transformers", reason="the sam3 extra (torch, transformers) is not installed")

from geoseg.testing import make_scene  # noqa: E402

# The CLI as the `geoseg` script runs it, then whether it imported torch.
CLI = """
import sys
from geoseg.cli import main
try:
    main(sys.argv[1:], prog_name="geoseg")
finally:
    print("torch imported" if "torch" in sys.modules else "torch not imported")
"""
FAST = 5.0  # seconds, whole command; ~0.8 s measured on 2 busy cores


@pytest.fixture(scope="module")
def raster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_scene(tmp_path_factory.mktemp("scene") / "scene.tif", size=300, seed=2)


@pytest.fixture
def refused() -> str:
    """An endpoint on a closed local port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def silent() -> Iterator[str]:
    """An endpoint that takes the connection and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def hub(error_code: str) -> Iterator[str]:
    """A local hub answering every request with 401 and `error_code`, as huggingface.co
    does for a gated repository without access or a missing one."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # noqa: N802  (http.server's naming)
            self.send_response(401)
            self.send_header("X-Error-Code", error_code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def gated_hub() -> Iterator[str]:
    yield from hub("GatedRepo")


@pytest.fixture
def missing_hub() -> Iterator[str]:
    yield from hub("RepoNotFound")


def segment(raster: Path, out: Path, hf_home: Path, endpoint: str, *, offline: bool, model: str = "facebook/sam3",
            timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    """`geoseg segment` in a fresh Python; the result and its wall time in seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(hf_home), HF_ENDPOINT=endpoint, NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    args = ["segment", str(raster), "-p", "red", "-o", str(out), "--model", model, "--device", "cpu"]
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", CLI, *args], env=env, capture_output=True, text=True,
                            timeout=timeout)
    return result, time.perf_counter() - started


def assert_fast_one_line(result: subprocess.CompletedProcess, seconds: float, out: Path, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geoseg: error: --model facebook/sam3: "), result.stderr
    for word in words:
        assert word in lines[0]
    assert result.stdout.strip() == "torch not imported"
    assert seconds < FAST, f"took {seconds:.1f} s"
    assert not out.exists()


def test_offline_variable_and_not_cached(raster, tmp_path, refused):
    out = tmp_path / "out.gpkg"
    result, seconds = segment(raster, out, tmp_path / "hf", refused, offline=True)
    assert_fast_one_line(result, seconds, out, "not in the Hugging Face cache and HF_HUB_OFFLINE=1 is set",
                         "hf download facebook/sam3", "or pass --model DIR")


@pytest.mark.parametrize("endpoint", ["refused", "silent"])
def test_no_network_and_not_cached(raster, tmp_path, request, endpoint):
    out = tmp_path / "out.gpkg"
    result, seconds = segment(raster, out, tmp_path / "hf", request.getfixturevalue(endpoint), offline=False)
    assert_fast_one_line(result, seconds, out, "not in the Hugging Face cache and the hub cannot be reached",
                         "hf download facebook/sam3", "or pass --model DIR")
    assert "Retrying" not in result.stderr


def test_hub_says_gated(raster, tmp_path, gated_hub):
    out = tmp_path / "out.gpkg"
    result, seconds = segment(raster, out, tmp_path / "hf", gated_hub, offline=False)
    assert_fast_one_line(result, seconds, out, "gated", "https://huggingface.co/facebook/sam3", "hf auth login",
                         "--model DIR")


def test_hub_says_not_found(raster, tmp_path, missing_hub):
    out = tmp_path / "out.gpkg"
    result, seconds = segment(raster, out, tmp_path / "hf", missing_hub, offline=False)
    assert_fast_one_line(result, seconds, out, "neither a local folder nor a model on the Hugging Face hub",
                         "--model DIR")


@pytest.fixture(scope="module")
def cached_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF_HOME whose hub cache holds a tiny SAM 3 as `geoseg-test/tiny-sam3`, laid out
    as `hf download` leaves it (files in snapshots/<commit>, refs/main naming it)."""
    from geoseg.testing import build_tiny_sam3

    home = tmp_path_factory.mktemp("hf_home")
    repo = home / "hub" / "models--geoseg-test--tiny-sam3"
    commit = "0123456789abcdef0123456789abcdef01234567"
    build_tiny_sam3(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return home


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "no-network"])
def test_cached_model_loads_without_the_hub(raster, tmp_path, cached_home, silent, offline):
    # Without the variable transformers used to retry every file for ~25 s (300 s in all).
    home = tmp_path / "hf"
    shutil.copytree(cached_home, home)
    out = tmp_path / "out.gpkg"
    result, seconds = segment(raster, out, home, silent, offline=offline, model="geoseg-test/tiny-sam3", timeout=90)
    assert result.returncode == 0, result.stderr
    assert "Retrying" not in result.stderr
    assert seconds < 60
    frame = pyogrio.read_dataframe(out)
    assert len(frame) > 0 and set(frame["label"]) == {"red"}


def test_a_torchvision_of_another_torch_is_named(raster, tmp_path, cached_home, refused):
    """A torchvision built for another torch fails as transformers imports it ("operator
    torchvision::nms does not exist"), which transformers reports as "Could not import module
    'Sam3Model'". A torchvision that fails so is put first on the path (the same import error a
    mismatched pair gives); geoseg names both versions in one line."""
    shadow = tmp_path / "shadow" / "torchvision"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    out = tmp_path / "out.gpkg"
    os.environ["PYTHONPATH"], before = str(shadow.parent), os.environ.get("PYTHONPATH")
    try:
        result, _ = segment(raster, out, cached_home, refused, offline=True, model="geoseg-test/tiny-sam3")
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("geoseg: error: torch ") and "do not match" in lines[0], lines[0]
    assert "torchvision::nms" in lines[0] and not out.exists()
