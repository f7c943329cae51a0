"""geoseg: text-prompted segmentation of geospatial imagery with SAM 3."""

from geoseg._version import __version__
from geoseg.core.segmenter import Detection, Segmenter, backend_names, load_segmenter
from geoseg.errors import (
    EmptyRasterWarning,
    GeosegError,
    GeosegWarning,
    ModelLoadError,
    OutputCRSWarning,
    OutputError,
    PromptError,
    RasterError,
    RunError,
    UsageError,
)
from geoseg.run.pipeline import segment

# Loaded on first use, so `import geoseg` pulls in neither matplotlib nor torch.
# `plot` is the module geoseg.analysis.plot, callable as its function plot();
# `evaluate` and `stats` are modules too (`geoseg.evaluate.evaluate(pred, ref)`).
_LAZY = {"plot": ("geoseg.analysis.plot", None), "Segmentation": ("geoseg.analysis.session", "Segmentation"),
         "evaluate": ("geoseg.analysis.evaluate", None),
         "explore": ("geoseg.explorer", "explore"), "stats": ("geoseg.analysis.stats", None)}


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return mod if attr is None else getattr(mod, attr)
    raise AttributeError(f"module 'geoseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    # the lazy names too, so tab completion and dir() show them before first use
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Detection",
    "EmptyRasterWarning",
    "GeosegError",
    "GeosegWarning",
    "ModelLoadError",
    "OutputCRSWarning",
    "OutputError",
    "PromptError",
    "RasterError",
    "RunError",
    "Segmentation",
    "Segmenter",
    "UsageError",
    "__version__",
    "backend_names",
    "evaluate",
    "explore",
    "load_segmenter",
    "plot",
    "segment",
    "stats",
]
