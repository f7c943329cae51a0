"""Errors and warnings raised by geoseg.

Usage errors (bad arguments or inputs, found before or while reading) make the
CLI exit with code 2; run errors (a failure during the work) with code 1.
Every message names the file or option and the fix.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import urllib.parse
from typing import Any

cli_terms = False  # set by geoseg.cli while a command runs
#: set by the QGIS worker: Python parameter -> the Processing provider's parameter (BANDS, MODEL, ...)
provider_terms: dict[str, str] | None = None

_NO_VALUE = object()
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_QUOTES = "'\"`"
_ENDS = ":,;.)"  # punctuation that ends a sentence, not a URL
# query keys whose values are secrets wherever they appear (a plain value, "png", may be an ordinary word)
_SECRET_KEY = re.compile(r"key|token|sig|secret|pass|auth|cred|session|amz|goog", re.IGNORECASE)
_secrets: set[str] = set()  # the secret parts of the URLs geoseg was given (`keep_secret`)


def _secret_parts(url: str) -> list[str]:
    """The parts of `url` that are secret: its user-info, query string and fragment, each
    also percent-decoded and as JSON writes it; the password and the query's keys, tokens and
    signatures also alone."""
    head, sep, tail = url.partition("?") if "?" in url else url.partition("#")
    scheme = _SCHEME.search(head)
    if scheme is None:
        return []
    rest = head[scheme.end():]
    parts = []
    if "@" in rest:
        userinfo = rest[:rest.rindex("@") + 1]
        parts += [userinfo, userinfo.partition(":")[2][:-1]]
    if sep:
        parts.append(sep + tail)
        query, _, fragment = tail.partition("#")
        parts += [value for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True)
                  if _SECRET_KEY.search(key) or len(value) >= 16] + [fragment]
    more = [urllib.parse.unquote_plus(p) for p in parts] + [urllib.parse.quote(p, safe="") for p in parts]
    parts += more + [json.dumps(p)[1:-1] for p in parts + more]
    return [p for p in parts if len(p) >= 4]  # a short value would take out ordinary words


def keep_secret(*texts: object) -> None:
    """Remember the secret parts of every URL among `texts` (command-line arguments, the sources
    and outputs of a call), so that `redact` takes them out wherever they appear later: in a
    message that cut the URL at a space or a quote, percent-decoded by GDAL, or escaped in JSON."""
    for text in texts:
        if isinstance(text, (str, os.PathLike)) and "://" in str(text):
            _secrets.update(_secret_parts(str(text)))


def redact(text: str) -> str:
    """`text` with every URL's secrets taken out: its user and password and its query string
    and fragment (where a signed URL keeps its signature and token), and whatever `keep_secret`
    was told of. The one rule for everything geoseg shows or writes: messages, logs, `info`,
    work folders, provenance and outputs."""
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "")
    out, at = [], 0
    for m in _SCHEME.finditer(text):
        if m.start() < at:
            continue  # a URL inside the query of one already cut
        token = m.start()  # a URL in quotes ends at the closing quote, spaces included; else at a space
        while token > 0 and not text[token - 1].isspace() and text[token - 1] not in _QUOTES:
            token -= 1
        quote = text[token - 1] if token > 0 and text[token - 1] in _QUOTES else None
        stop = m.end() - 1 if quote else -1
        while quote and stop >= 0:  # the closing quote, not an escaped one inside
            stop = text.find(quote, stop + 1)
            if stop < 0 or text[stop - 1] != "\\":
                break
        if stop < 0:
            space = re.search(r"\s", text[m.end():])
            stop = len(text) if space is None else m.end() + space.start()
        url = text[m.end():stop]
        cut = min((i for i in (url.find("?"), url.find("#")) if i >= 0), default=len(url))
        head, tail = url[:cut], url[cut:]
        if "@" in head:  # user-info, a password with "/" in it too: up to the last "@" before the query
            head = head[head.rindex("@") + 1:]
        end = tail[-1] if tail and not quote and tail[-1] in _ENDS else ""
        out += [text[at:m.end()], head, end]
        at = stop
    return "".join(out) + text[at:]


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
