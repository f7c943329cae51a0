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
    "Segmenter",
    "UsageError",
    "__version__",
    "backend_names",
    "load_segmenter",
    "segment",
]
