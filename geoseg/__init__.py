"""geoseg: text-prompted segmentation of geospatial imagery with SAM 3."""

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
from geoseg.pipeline import segment
from geoseg.segmenter import Detection, Segmenter, backend_names, load_segmenter

__version__ = "0.1.0"

# Loaded on first use, so `import geoseg` pulls in neither matplotlib nor torch.
# `plot` is the module geoseg.plot, callable as its function plot().
_LAZY = {"plot": ("geoseg.plot", None), "Segmentation": ("geoseg.session", "Segmentation"),
         "stats": ("geoseg.stats", None)}


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
    "load_segmenter",
    "plot",
    "segment",
    "stats",
]
