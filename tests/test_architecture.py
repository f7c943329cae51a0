"""The layers of the package (docs/architecture.md), checked by import-linter
with the contracts in pyproject.toml: imports point down, no import cycle
anywhere (imports inside functions included), a pure core, backends without
rasters, a QGIS provider that imports nothing else of geoseg."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    return subprocess.run([exe, "--no-cache", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_layer_contracts_are_kept():
    result = lint()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


def test_a_cycle_or_an_import_up_breaks_the_contracts(tmp_path):
    # the same contracts over a copy of the package with one lazy import up,
    # the kind a cycle hides behind: both the layers and the cycle contract fail
    copy = tmp_path / "geoseg"
    shutil.copytree(ROOT / "geoseg", copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "core" / "tiling.py", "a") as f:
        f.write("\n\ndef _up():\n    from geoseg.run import pipeline  # noqa: F401\n")
    with open(copy / "io" / "sources.py", "a") as f:
        f.write("\n\ndef _around():\n    from geoseg.io import inputs  # noqa: F401\n")
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    result = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                             "sys.exit(lint_imports_command(['--no-cache']))"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(tmp_path), "PATH": ""})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Layers: imports point down BROKEN" in result.stdout
    assert "No import cycle between the modules of any package BROKEN" in result.stdout
    assert "geoseg.core.tiling -> geoseg.run.pipeline" in result.stdout
