"""The README and docs/ are the user's manual: keep them true to the code."""

import re
from pathlib import Path

import click
import pytest

from geoseg.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MANUAL = README + "".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))


def test_quick_start_has_two_commands_and_ci_runs_the_test_one():
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", quick, flags=re.S)
    commands = [line.strip() for b in blocks for line in b.splitlines() if line.strip()]
    assert len(commands) == 2 and "geoseg segment sample_data/" in commands[0]
    assert "pip install" in commands[0] and "venv" in commands[0]  # never into the system Python
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert commands[1] in ci


def test_nothing_tells_users_to_install_an_unpublished_package():
    texts = {p: p.read_text() for p in [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("geoseg/qgis/*"),
                                        *ROOT.glob("cli/*.py"), ROOT / "notebooks" / "README.md"] if p.is_file()}
    for path, text in texts.items():
        assert not re.search(r"pip install ['\"]?geoseg(\[[a-z0-9,]+\])?['\"]?(?!\s*@)(\s|$|`)", text), path


def test_links_in_the_manual_lead_somewhere():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name}: {target}"


@pytest.mark.parametrize("command", ["segment", "info", "fetch", "evaluate", "export-dataset", "qgis install",
                                     "combine", "train", "distill"])
def test_every_option_is_documented(command):
    cmd = main
    for word in command.split():
        cmd = cmd.commands[word]
    for param in cmd.params:
        if isinstance(param, click.Option):
            longest = max(param.opts, key=len)
            if longest not in ("--help",):
                assert f"`{longest}" in MANUAL or f"{longest}`" in MANUAL or f"{longest} " in MANUAL, longest
