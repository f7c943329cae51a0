"""Errors and warnings raised by geoseg.

Usage errors (bad arguments or inputs, found before or while reading) make the
CLI exit with code 2; run errors (a failure during the work) with code 1.
Every message names the file or option and the fix.
"""

from __future__ import annotations

import errno
import re
import shlex
from typing import Any

cli_terms = False  # set by geoseg.cli while a command runs
#: set by the QGIS worker: Python parameter -> the Processing provider's parameter (BANDS, MODEL, ...)
provider_terms: dict[str, str] | None = None

_NO_VALUE = object()
# a URL's scheme, then userinfo (user:password@), its host and path, then a query string and fragment
_URL = re.compile(r"""([A-Za-z][A-Za-z0-9+.-]*://)(?:[^\s/@?#'"]*@)?([^\s?#'"]*)((?:\?[^\s#'"]*)?(?:#[^\s'"]*)?)""")


def redact(text: str) -> str:
    """`text` with every URL's secrets taken out: its user and password and its query string
    (where a signed URL keeps its signature and token). The one rule for everything geoseg shows
    or writes: messages, logs, `info`, work folders, provenance and outputs."""
    def keep(m: re.Match[str]) -> str:  # the punctuation that ends a sentence is not part of the URL
        end = m[3][-1] if m[3] and m[3][-1] in ":,;.)" else ""
        return m[1] + m[2] + end

    return _URL.sub(keep, text)


def option(name: str, value: Any = _NO_VALUE, *, flag: str | None = None) -> str:
    """A parameter as the caller names it. Python: `bands=`, `bands='7,2,1'`, `overwrite=True`.
    Command line: `--bands`, `--bands 7,2,1`, `--overwrite` (a True flag is bare).

    `name` is the Python parameter name; `flag` the command line's where it is
    not `name` spelt with dashes (`fmt` is `--format`). On the command line the value is
    written as typed in a shell: a tuple or list comma-separated, as the
    options take it, and quoted where needed (`--layer ' '`).
    """
    if provider_terms is not None:
        shown = provider_terms.get(name, name.upper())
        return shown if value is _NO_VALUE or value is True else f"{shown} {value}"
    if not cli_terms:
        return f"{name}=" if value is _NO_VALUE else f"{name}={value!r}"
    flag = flag or "--" + name.replace("_", "-")
    if value is _NO_VALUE or value is True:
        return flag
    if isinstance(value, (tuple, list)):
        value = ",".join(str(v) for v in value)
    return f"{flag} {shlex.quote(str(value))}"


class GeosegError(Exception):
    """Base class of all geoseg errors. Its message never shows a URL's secrets (`redact`)."""

    def __str__(self) -> str:
        return redact(super().__str__())


class UsageError(GeosegError, ValueError):
    """A bad argument or input: the CLI exits with code 2."""


class PromptError(UsageError):
    """An empty, blank or too long text prompt."""


class RasterError(UsageError, OSError):
    """A raster that is missing, unreadable, corrupt or not georeferenced."""


class OutsideAreaError(UsageError):
    """The area asked for (--bbox, --aoi) does not overlap the raster."""


class OutputError(UsageError, OSError):
    """An output path that exists, has an unknown format or cannot be written."""


class ModelLoadError(UsageError, OSError):
    """Model weights that cannot be had (gated, offline, wrong folder)."""


class NotFoundError(UsageError, KeyError):
    """A name or key looked up that is not there (a label, an IoU threshold)."""

    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0]) if self.args else ""


class RunError(GeosegError, RuntimeError):
    """A failure during a run: the CLI exits with code 1."""


class DiskFullError(RunError):
    """No space left on the device where a run writes (its work folder, an output)."""

    def __init__(self, path: Any) -> None:
        super().__init__(f"no space left on the device holding {path}: free some space, then rerun the same "
                         f"command to resume (nothing half-written was kept)")


def disk_full(error: BaseException) -> bool:
    """Whether `error` says the disk is full: an OSError (ENOSPC, EDQUOT) or SQLite's or GDAL's words for it."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error).lower()
    return "disk is full" in text or "no space left" in text


class GeosegWarning(UserWarning):
    """Base class of geoseg warnings."""


class EmptyRasterWarning(GeosegWarning):
    """The raster has no valid pixels: the result is empty."""


class OutputCRSWarning(GeosegWarning):
    """The output format fixes the CRS (GeoJSON is always EPSG:4326)."""
