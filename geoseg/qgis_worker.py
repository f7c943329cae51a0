"""The worker the QGIS provider runs in geoseg's own Python: `python -m geoseg.qgis_worker`.

QGIS's Python often cannot run geoseg itself (its GDAL and GEOS shadow the
wheels', and it seldom has a CUDA torch), so the provider starts this module in
geoseg's environment. Protocol: one JSON job on stdin, JSON lines on stdout::

    job:    {"inputs": [...], "prompts": [...], "output": "out.gpkg", "backend": "sam3", "model": ...,
             "device": ..., "score_threshold": ..., "tile_size": ..., "overlap": ..., "bands": ...,
             "dst_crs": ..., "min_area": ..., "resolution": ..., "mask_threshold": ...,
             "bbox": [minx, miny, maxx, maxy], "bbox_crs": ..., "aoi": "aoi.gpkg",
             "exemplars": "exemplars.gpkg", "mosaic": true, "refine_depth": 2, "zoom": 0}
            (optional keys may be absent; "prompts" may be empty with "exemplars")
    lines:  {"type": "info" | "warning", "text": ...}
            {"type": "progress", "value": 0.0 .. 1.0}
            {"type": "done", "output": ..., "objects": N, "crs": ..., "provenance": {...}}
            {"type": "error", "kind": "usage" | "model" | "environment" | "run", "text": ...}

Exit code 0 on success, 2 for a usage error (bad input, missing model), 1 for a
failure. The job maps onto `geoseg.segment(...)` exactly as `geoseg segment` does.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from geoseg import errors
from geoseg.core.segmenter import Backend, load_segmenter
from geoseg.errors import GeosegError, GeosegWarning, ModelLoadError, UsageError, redact
from geoseg.io.inputs import list_inputs, resolve
from geoseg.io.services import WebOptions
from geoseg.run import pipeline
from geoseg.run.checks import check_run
from geoseg.run.settings import Settings

Emit = Callable[..., None]


class ProgressSegmenter:
    """Wraps a segmenter to report the fraction of tiles done over all rasters."""

    def __init__(self, inner: Any, n_rasters: int, emit: Emit) -> None:
        self.inner = inner
        self.n_rasters = max(1, n_rasters)
        self.emit = emit
        self.raster = -1
        self.tiles = 1
        self.done = 0

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def batch_size(self) -> int:
        return self.inner.batch_size

    @property
    def max_objects(self) -> int | None:
        return self.inner.max_objects

    @property
    def resolution(self) -> float | None:  # what the model asks for: `geoseg.run.settings.read_options`
        return getattr(self.inner.segmenter, "resolution", None)

    @property
    def bands(self) -> Any:
        return getattr(self.inner.segmenter, "bands", None)

    def check_prompts(self, prompts: Sequence[str]) -> None:
        self.inner.check_prompts(prompts)

    def config(self) -> dict[str, Any]:
        return self.inner.config()

    def begin(self, n_tiles: int, prompts: list[str]) -> None:
        self.raster += 1
        self.tiles, self.done = max(1, n_tiles), 0
        self.inner.begin(n_tiles, prompts)
        self._report()

    def encode_exemplars(self, tile: Any, boxes: Any, positive: Any) -> Any:
        return self.inner.encode_exemplars(tile, boxes, positive)

    def segment_objects(self, tile: Any, prompts: Any) -> Any:
        return self.inner.segmenter.segment_objects(tile, prompts)

    def segment(self, tiles: Any, prompts: Sequence[str], **exemplars: Any) -> Any:
        result = self.inner.segment(tiles, prompts, **exemplars)
        self.done += len(tiles)
        self._report()
        return result

    def _report(self) -> None:
        value = (self.raster + min(self.done, self.tiles) / self.tiles) / self.n_rasters
        self.emit("progress", value=round(max(0.0, min(1.0, value)), 4))


def _emitter(stream: TextIO) -> Emit:
    lock = threading.Lock()  # progress, log lines and warnings come from several threads: whole lines only

    def emit(kind: str, /, **fields: Any) -> None:
        line = json.dumps({"type": kind, **fields}) + "\n"
        with lock:
            stream.write(line)
            stream.flush()

    return emit


class _LogToProtocol(logging.Handler):
    def __init__(self, emit: Emit) -> None:
        super().__init__(logging.INFO)
        self.emit_line = emit

    def emit(self, record: logging.LogRecord) -> None:
        self.emit_line("info", text=record.getMessage())


#: Python parameter -> the Processing provider's (geoseg/qgis/algorithm.py), for messages
PROVIDER_TERMS = {"prompts": "PROMPTS", "bbox": "EXTENT", "bbox_crs": "EXTENT", "dst_crs": "TARGET_CRS",
                  "segmenter": "BACKEND", "output": "OUTPUT", "exemplars": "EXEMPLARS", "objects": "OBJECTS"}


def run(job: dict[str, Any], emit: Emit) -> int:
    """Run one job, reporting through `emit`; return the exit code."""
    log = logging.getLogger("geoseg")
    log.handlers[:] = [_LogToProtocol(emit)]
    log.setLevel(logging.INFO)
    log.propagate = False

    def show_warning(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
        if issubclass(category, GeosegWarning):
            emit("warning", text=str(message))

    warnings.showwarning = show_warning
    errors.provider_terms = PROVIDER_TERMS  # messages name BANDS, MODEL, ... as the dialog does
    try:
        inputs = list_inputs(job["inputs"])
        # Only the keys given: a geoseg without them still runs the jobs that do not use them.
        where = {k: job[k] for k in ("bbox", "bbox_crs", "aoi", "exemplars", "objects") if job.get(k) is not None}
        where.update({k: int(job[k]) for k in ("refine_depth", "zoom") if job.get(k) is not None})
        common = dict(tile_size=int(job.get("tile_size") or 1008), overlap=int(job.get("overlap", 128)),
                      bands=job.get("bands") or None,
                      resolution=job.get("resolution") or None,
                      dst_crs=job.get("dst_crs") or None, min_area=job.get("min_area"), **where)
        out = dict(output=job["output"], layer=job.get("layer") or "detections", overwrite=bool(job.get("overwrite")))
        backend = job.get("backend") or "sam3"
        settings = Settings.of(job["prompts"], **common, segmenter=backend, backend_options={"model": job.get("model")})
        web = WebOptions.of(zoom=job.get("web_zoom"), resolution=job.get("web_resolution"))
        paths = resolve(inputs, mosaic=bool(job.get("mosaic")), settings=settings, web=web)
        check_run(paths, settings, **out)  # before the model loads: a bad BANDS is refused in a second
        if job.get("check"):  # the dialog's check of its parameters: no model, no run
            emit("done", output=None, objects=0, crs=None, provenance={})
            return 0
        options = {k: job.get(k) for k in ("model", "device", "score_threshold", "mask_threshold")}
        if backend == "colors":  # the test backend has no model
            options.pop("model")
        model = options.get("model") or "its default model"
        emit("info", text=f"loading the {backend} backend" + ("" if backend == "colors" else f" ({model})"))
        inner = Backend(load_segmenter(backend, **options))
        segmenter = ProgressSegmenter(inner, len(paths), emit)
        mosaic = {"mosaic": True} if job.get("mosaic") else {}
        levels = {k: job[k] for k in ("web_zoom", "web_resolution") if job.get(k) is not None}  # a tile service
        gdf = pipeline.segment(inputs, job["prompts"], segmenter=segmenter, **common, **out, **mosaic, **levels)
    except ModelLoadError as e:
        emit("error", kind="model", text=str(e))
        return 2
    except UsageError as e:
        emit("error", kind="usage", text=str(e))
        return 2
    except GeosegError as e:
        emit("error", kind="run", text=str(e))
        return 1
    except ImportError as e:  # e.g. the sam3 backend without torch/transformers
        emit("error", kind="environment", text=f"{e}: geoseg's Python ({sys.executable}) lacks a dependency; "
                                               f"install the sam3 extra, in geoseg's clone: {sys.executable} -m "
                                               f'pip install ".[sam3]"')
        return 2
    except Exception as e:  # unforeseen: one line for the dialog, the traceback on stderr
        import traceback

        traceback.print_exc()
        emit("error", kind="run", text=redact(f"{type(e).__name__}: {e}"))
        return 1
    finally:
        errors.provider_terms = None
    emit("progress", value=1.0)
    emit("done", output=str(job["output"]), objects=len(gdf), crs=None if gdf.crs is None else gdf.crs.to_string(),
         provenance=json.loads(json.dumps(gdf.attrs.get("geoseg", {}), default=str)))
    return 0


def main(argv: list[str] | None = None) -> int:
    # Only protocol lines go to stdout: anything else that prints (libraries, C code) goes to stderr.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    emit = _emitter(protocol)
    try:
        job = json.loads(sys.stdin.read())
    except ValueError as e:
        emit("error", kind="usage", text=f"the worker reads one JSON job on stdin: {e}")
        return 2
    return run(job, emit)


if __name__ == "__main__":
    sys.exit(main())
