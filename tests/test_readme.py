"""The README is the user's manual: keep it true to the code."""

import re
from pathlib import Path

import click
import pytest

from geoseg.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    test_cmd = [line for b in blocks for line in b.splitlines() if "pytest" in line][0].split("#")[0].strip()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in [line.strip() for line in ci]


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
