"""The README is the user's manual: keep it true to the code."""

import re
from pathlib import Path

import click
import pytest

from geoseg.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_quick_start_has_two_commands_and_ci_runs_the_test_one():
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", quick, flags=re.S)
    commands = [line.strip() for b in blocks for line in b.splitlines() if line.strip()]
    assert len(commands) == 2 and "geoseg segment sample_data/" in commands[0]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert commands[1] in ci


@pytest.mark.parametrize("command", ["segment", "info", "evaluate", "export-dataset", "qgis install"])
def test_every_option_is_documented(command):
    cmd = main
    for word in command.split():
        cmd = cmd.commands[word]
    for param in cmd.params:
        if isinstance(param, click.Option):
            longest = max(param.opts, key=len)
            if longest not in ("--help",):
                assert f"`{longest}" in README or f"{longest}`" in README or f"{longest} " in README, longest
