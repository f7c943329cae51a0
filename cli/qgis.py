"""`geoseg qgis install`: put the QGIS plugin (a Processing provider) into a QGIS profile, or into a zip."""

from __future__ import annotations

import os
import shutil
import sys
import zipfile
from pathlib import Path

import click

import geoseg.qgis
from geoseg.cli import main
from geoseg.errors import OutputError, UsageError
from geoseg.qgis.runner import RECORD

PLUGIN = "geoseg_qgis"


def plugin_source() -> Path:
    """The folder of the plugin's files (geoseg/qgis)."""
    return Path(geoseg.qgis.__file__).resolve().parent


def plugin_files(source: Path) -> list[Path]:
    # RECORD names this machine's Python: never copied into a zip or another install
    return sorted(p for p in source.iterdir()
                  if p.is_file() and p.suffix in (".py", ".txt", ".png", ".svg") and p.name != RECORD)


def qgis_root() -> Path:
    """Where QGIS keeps its profiles: $QGIS_CUSTOM_CONFIG_PATH, else the platform's QGIS3 data folder."""
    custom = os.environ.get("QGIS_CUSTOM_CONFIG_PATH")
    if custom:
        return Path(custom)
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "QGIS" / "QGIS3"


def profile_plugins_dir(profile: str) -> Path:
    return qgis_root() / "profiles" / profile / "python" / "plugins"


def build_zip(source: Path, out: Path) -> None:
    """A zip for Plugins › Manage and Install Plugins › Install from ZIP."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in plugin_files(source):
            zf.write(f, f"{PLUGIN}/{f.name}")


def install_into(source: Path, folder: Path, link: bool) -> Path:
    """Copy (or symlink) the plugin into `folder`; replaces an earlier install. Returns the plugin path."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / PLUGIN
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    if link:
        target.symlink_to(source, target_is_directory=True)
    else:
        target.mkdir()
        for f in plugin_files(source):
            shutil.copy2(f, target / f.name)
    return target


def record_python(target: Path, python: str) -> Path | None:
    """Write `python` into the installed plugin, where its runner looks for geoseg's Python.
    A linked plugin is this geoseg's own folder: the record goes there. None when it cannot be written."""
    record = target / RECORD
    try:
        record.write_text(python + "\n", encoding="utf-8")
    except OSError:
        return None
    return record


@main.group()
def qgis() -> None:
    """The QGIS plugin: a Processing provider with "Text-prompted segmentation"."""


@qgis.command()
@click.option("--profile", default="default", show_default=True, help="QGIS user profile to install into.")
@click.option("--plugins-dir", default=None, help="Install into this plugins folder instead of the profile's.")
@click.option("--link", is_flag=True, help="Symlink the plugin to this geoseg instead of copying (for development).")
@click.option("--zip", "zip_path", default=None, help="Only build a zip for 'Install from ZIP', at this path.")
def install(profile: str, plugins_dir: str | None, link: bool, zip_path: str | None) -> None:
    """Install the geoseg plugin into a QGIS profile (or build a zip)."""
    source = plugin_source()
    if not (source / "metadata.txt").is_file():
        raise OutputError(f"{source}: the plugin files are missing from this geoseg install: reinstall geoseg with "
                          f'{sys.executable} -m pip install ".[sam3]" in a clone of geoseg')
    if zip_path is not None:
        if link or plugins_dir is not None:
            raise UsageError("--zip builds a file only: drop --link and --plugins-dir")
        out = Path(zip_path)
        if not out.parent.is_dir():
            raise OutputError(f"--zip {zip_path}: no such folder: create {out.parent} first")
        build_zip(source, out)
        click.echo(f"{out}: install it in QGIS with Plugins › Manage and Install Plugins › Install from ZIP", err=True)
        return
    folder = Path(plugins_dir) if plugins_dir is not None else profile_plugins_dir(profile)
    target = install_into(source, folder, link)
    python = sys.executable
    record = record_python(target, python)
    where = (f"recorded in {record}: the plugin uses it unless the provider setting or GEOSEG_PYTHON names "
             "another" if record is not None else f"could not be recorded in {target}: set it in Settings › "
             "Options › Processing › Providers › geoseg › geoseg Python, or in the environment variable GEOSEG_PYTHON")
    click.echo(f"{target}: geoseg plugin {'linked' if link else 'installed'}.\n"
               "Next: enable it in QGIS (Plugins › Manage and Install Plugins › Installed › geoseg), "
               f"or run: qgis_process plugins enable {PLUGIN}\n"
               "Run qgis_process outside geoseg's virtual environment (deactivate it first): QGIS's own "
               "Python must not pick up geoseg's packages.\n"
               f"geoseg's Python is {python}, {where}.", err=True)
