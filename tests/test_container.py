"""The Dockerfile, read without Docker: what it installs, who runs it, what it copies."""

import json
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(word.upper(), rest.strip()) for word, _, rest in
            (line.strip().partition(" ") for line in joined.splitlines() if line.strip())]


DOCKERFILE = instructions((ROOT / "Dockerfile").read_text())
IMAGE = DOCKERFILE[max(i for i, (word, _) in enumerate(DOCKERFILE) if word == "FROM"):]  # the last stage


def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _regex(pattern: str) -> re.Pattern:
    """Docker's pattern syntax (Go's filepath.Match plus **): * and ? stop at a slash."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1].replace("[!", "[^"), end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps PATH out of the build context: the last pattern matching it,
    or a folder above it, decides (a leading ! lets it back in)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for pattern in patterns:
        keep = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        if any(_regex(body).match(p) for p in prefixes):
            verdict = not keep
    return verdict


def test_the_ignore_matcher_follows_docker():
    patterns = [".git", "**/__pycache__", "*.gpkg", "build", "!build/keep"]
    assert ignored(".git/HEAD", patterns) and ignored("geoseg/__pycache__/x.pyc", patterns)
    assert ignored("trees.gpkg", patterns) and not ignored("sample_data/OSBS_029_trees.gpkg", patterns)
    assert ignored("build/lib/x.py", patterns) and not ignored("build/keep", patterns)
    assert not ignored("geoseg/pipeline.py", patterns)


def image_extras() -> set[str]:
    runs = " ".join(args for word, args in DOCKERFILE if word == "RUN")
    found = re.findall(r"pip install [^&;]*?['\"]?\.\[([A-Za-z0-9_,-]+)\]", runs)
    assert found, "the Dockerfile installs geoseg from its source with extras"
    return {e.strip() for group in found for e in group.split(",")}


def test_the_image_has_the_extras_of_the_readme_quick_start():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    readme_extras = {e for group in re.findall(r"pip install ['\"]?\.\[([A-Za-z0-9_,-]+)\]", quick)
                     for e in group.split(",")}
    assert readme_extras, "the README's quick start installs geoseg with an extra"
    assert readme_extras <= image_extras()
    assert image_extras() <= set(EXTRAS), set(image_extras()) - set(EXTRAS)


def dockerfile_requirements() -> dict[str, Requirement]:
    runs = " ".join(args for word, args in DOCKERFILE if word == "RUN")
    quoted = re.findall(r"pip install ([^&;]*)", runs)
    words = [w.strip("'\"") for group in quoted for w in group.split() if not w.startswith("-")]
    return {r.name: r for r in (Requirement(w) for w in words if re.match(r"[A-Za-z]", w))}


@pytest.mark.parametrize("name", ["torch", "torchvision"])
def test_torch_of_the_image_fits_the_sam3_extra(name):
    extra = {r.name: r for r in map(Requirement, EXTRAS["sam3"])}[name]
    image = dockerfile_requirements()[name]
    # Both are bounded above, and the newest version the extra allows is what the image installs.
    top = max((Version(s.version) for s in extra.specifier if s.operator in ("<=", "==")), default=None)
    assert top is not None, f"pyproject's sam3 extra bounds {name} above"
    assert extra.specifier.contains(top) and image.specifier.contains(top), (str(image), str(extra))
    assert not image.specifier.contains(Version(f"{top.major}.{top.minor + 1}")), f"the image bounds {name} above"


def test_the_base_image_has_the_cuda_of_the_torch_wheel():
    base = next(args for word, args in DOCKERFILE if word == "ARG" and args.startswith("BASE="))
    tag = re.fullmatch(r"BASE=nvidia/cuda:(\d+)\.(\d+)\.\d+-cudnn-runtime-ubuntu(\d+\.\d+)", base)
    assert tag, base
    assert all(args == "${BASE}" or args.startswith("${BASE} ") for word, args in DOCKERFILE if word == "FROM")
    torch_top = dockerfile_requirements()["torch"]
    installed = Version(metadata.version("torch"))
    if not torch_top.specifier.contains(installed) or installed != max(
            (Version(s.version) for s in torch_top.specifier if s.operator == "<="), default=None):
        pytest.skip(f"the installed torch {installed} is not the one the image installs ({torch_top})")
    cuda = [Requirement(r) for r in metadata.requires("torch") or []
            if re.match(r"(cuda-toolkit|nvidia-cuda-runtime)", r)]
    if not cuda:
        pytest.skip(f"the installed torch {installed} is a CPU build: its wheel names no CUDA")
    pinned = next(Version(s.version) for r in cuda for s in r.specifier if s.operator == "==")
    assert (pinned.major, pinned.minor) == (int(tag[1]), int(tag[2])), (str(cuda[0]), base)


def test_a_user_other_than_root_runs_geoseg():
    words = [word for word, _ in IMAGE]
    users = [args for word, args in IMAGE if word == "USER"]
    assert users and words.index("USER") < words.index("ENTRYPOINT")
    name = users[-1].split(":")[0]
    assert name not in ("root", "0")
    assert json.loads(dict(IMAGE)["ENTRYPOINT"]) == ["geoseg"]
    assert PYPROJECT["project"]["scripts"]["geoseg"] == "geoseg.cli:main"
    assert json.loads(dict(IMAGE)["CMD"]) == ["--help"]
    assert dict(IMAGE)["WORKDIR"] == "/data"


def test_the_hugging_face_cache_is_a_volume():
    env = " ".join(args for word, args in IMAGE if word == "ENV")
    home = re.search(r"HF_HOME=(\S+)", env)
    assert home, "HF_HOME is set in the image"
    volumes = [v for word, args in IMAGE if word == "VOLUME"
               for v in (json.loads(args) if args.startswith("[") else args.split())]
    assert home[1] in volumes or "$HF_HOME" in volumes or "${HF_HOME}" in volumes, (home[1], volumes)


def copied_paths() -> list[str]:
    """The build-context paths COPY and ADD read (not those from another stage)."""
    paths = []
    for word, args in DOCKERFILE:
        if word in ("COPY", "ADD") and "--from=" not in args:
            words = [w for w in args.split() if not w.startswith("--")]
            paths += [w.rstrip("/") for w in words[:-1]]
    return paths


def test_every_copied_path_is_in_the_build_context():
    patterns = ignore_patterns()
    paths = copied_paths()
    assert {"pyproject.toml", "geoseg"} <= set(paths)
    for path in paths:
        assert (ROOT / path).exists(), path
        assert not ignored(path, patterns), f"{path} is copied but .dockerignore leaves it out"
        files = [ROOT / path] if (ROOT / path).is_file() else (ROOT / path).rglob("*.py")
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            assert "__pycache__" in relative or not ignored(relative, patterns), relative


def test_git_venvs_and_caches_stay_out_of_the_build_context():
    patterns = ignore_patterns()
    for path in [".git/HEAD", ".venv/bin/python", ".venv-ci/bin/python", "geoseg/__pycache__/x.cpython-312.pyc",
                 ".pytest_cache/README.md", "benchmarks/.data/scene.tif", "tiny_sam3/config.json",
                 "geoseg.egg-info/PKG-INFO", "build/lib/geoseg/__init__.py", "dist/geoseg.whl",
                 "notebooks/.ipynb_checkpoints/x.ipynb", "trees.gpkg", "trees.gpkg.geoseg-work/staging.sqlite"]:
        assert ignored(path, patterns), path


def test_what_the_dockerfile_copies_builds_geoseg_with_its_command(tmp_path):
    """The copied paths alone make a wheel with the CLI in it (a path left out of COPY fails here)."""
    source = tmp_path / "src"
    source.mkdir()
    for path in copied_paths():
        if (ROOT / path).is_dir():
            shutil.copytree(ROOT / path, source / path, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / path, source / path)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "--quiet", "-w", str(tmp_path / "wheel"), str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    [wheel] = (tmp_path / "wheel").glob("geoseg-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "geoseg/cli/__init__.py" in names and "geoseg/qgis/metadata.txt" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "geoseg = geoseg.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    info = zipfile.ZipFile(wheel).read(entry_points.replace("entry_points.txt", "METADATA")).decode()
    assert "## Quick start" in info, "pyproject's readme (README.md) is copied: the package's description"
