"""Errors and warnings raised by geoseg.

Usage errors (bad arguments or inputs, found before or while reading) make the
CLI exit with code 2; run errors (a failure during the work) with code 1.
Every message names the file or option and the fix.
"""

from __future__ import annotations


class GeosegError(Exception):
    """Base class of all geoseg errors."""


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


class RunError(GeosegError, RuntimeError):
    """A failure during a run: the CLI exits with code 1."""


class GeosegWarning(UserWarning):
    """Base class of geoseg warnings."""


class EmptyRasterWarning(GeosegWarning):
    """The raster has no valid pixels: the result is empty."""


class OutputCRSWarning(GeosegWarning):
    """The output format fixes the CRS (GeoJSON is always EPSG:4326)."""
