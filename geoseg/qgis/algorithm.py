""""Text-prompted segmentation": QGIS parameters -> a job for geoseg's worker -> the output sink."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsFeatureSink,
    QgsFields,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterCrs,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsVectorLayer,
    QgsWkbTypes,
)

from .runner import Cancelled, WorkerError, find_python, not_found_message, run_worker

HELP = """Finds the objects named by the prompts in a raster layer with SAM 3 and writes one polygon per object, \
with the fields label, score, area_m2, n_tiles and source (as `geoseg segment` does).

<b>Prompts</b>: comma-separated or one per line ("building, swimming pool").
<b>Model</b>: a Hugging Face id (facebook/sam3: accept its licence and run `hf auth login` once) or a local folder.
<b>Tile size</b>, <b>overlap</b>: tiling in pixels; objects crossing tile seams are merged into one.
<b>Bands</b>: 1-based bands used as red, green, blue ("4,3,2"), or one band for grey; empty: the first three.
<b>Target CRS</b>: of the output (default: the project's; the raster's when the project has none).

The work runs in geoseg's own Python environment, in a separate process; set its interpreter in \
Settings › Options › Processing › Providers › geoseg when it is not found."""


def split_prompts(text: str) -> list[str]:
    """Prompts from "a, b" or one per line; blanks dropped, repeats kept once."""
    return list(dict.fromkeys(p.strip() for p in re.split(r"[,\n]", text or "") if p.strip()))


class SegmentAlgorithm(QgsProcessingAlgorithm):
    INPUT = "INPUT"
    PROMPTS = "PROMPTS"
    MODEL = "MODEL"
    TILE_SIZE = "TILE_SIZE"
    OVERLAP = "OVERLAP"
    SCORE_THRESHOLD = "SCORE_THRESHOLD"
    BANDS = "BANDS"
    TARGET_CRS = "TARGET_CRS"
    MIN_AREA = "MIN_AREA"
    BACKEND = "BACKEND"
    DEVICE = "DEVICE"
    OUTPUT = "OUTPUT"

    def name(self) -> str:
        return "segment"

    def displayName(self) -> str:  # noqa: N802  (QGIS's names)
        return "Text-prompted segmentation"

    def shortHelpString(self) -> str:  # noqa: N802
        return HELP

    def createInstance(self) -> SegmentAlgorithm:  # noqa: N802
        return SegmentAlgorithm()

    def initAlgorithm(self, config: Any = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Raster layer"))
        self.addParameter(QgsProcessingParameterString(self.PROMPTS, "Prompts (comma-separated or one per line)",
                                                       multiLine=True))
        self.addParameter(QgsProcessingParameterString(self.MODEL, "Model (Hugging Face id or folder)",
                                                       defaultValue="facebook/sam3"))
        self.addParameter(QgsProcessingParameterNumber(self.TILE_SIZE, "Tile size (pixels)",
                                                       QgsProcessingParameterNumber.Integer, 1008, minValue=16))
        self.addParameter(QgsProcessingParameterNumber(self.OVERLAP, "Overlap (pixels)",
                                                       QgsProcessingParameterNumber.Integer, 128, minValue=0))
        self.addParameter(QgsProcessingParameterNumber(self.SCORE_THRESHOLD, "Score threshold",
                                                       QgsProcessingParameterNumber.Double, 0.5, minValue=0,
                                                       maxValue=1))
        self.addParameter(QgsProcessingParameterString(self.BANDS, "Bands as red,green,blue (e.g. 4,3,2)",
                                                       optional=True))
        self.addParameter(QgsProcessingParameterCrs(self.TARGET_CRS, "Target CRS", "ProjectCrs", optional=True))
        self.addParameter(QgsProcessingParameterNumber(self.MIN_AREA, "Minimum area (m²)",
                                                       QgsProcessingParameterNumber.Double, optional=True,
                                                       minValue=0))
        for name, label, default in ((self.BACKEND, "Backend (sam3; colors is the test backend)", "sam3"),
                                     (self.DEVICE, "Device (cuda, cuda:1, mps, cpu; empty: best available)", None)):
            param = QgsProcessingParameterString(name, label, defaultValue=default, optional=default is None)
            param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(param)
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, "Segmented objects",
                                                            QgsProcessing.TypeVectorPolygon))

    def job(self, parameters: dict[str, Any], context: Any) -> dict[str, Any]:
        """The worker's job: the same options as `geoseg segment`."""
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException("Raster layer: no such layer or file")
        if layer.providerType() != "gdal":
            raise QgsProcessingException(f"{layer.name()}: geoseg reads GDAL rasters; save the layer as a GeoTIFF")
        prompts = split_prompts(self.parameterAsString(parameters, self.PROMPTS, context))
        if not prompts:
            raise QgsProcessingException("Prompts: give at least one, e.g. building, tree crown")
        crs = self.parameterAsCrs(parameters, self.TARGET_CRS, context)
        dst_crs = None
        if crs.isValid():
            dst_crs = crs.authid() or crs.toWkt(QgsCoordinateReferenceSystem.WKT_PREFERRED)
        min_area = self.parameterAsDouble(parameters, self.MIN_AREA, context)
        return {
            "inputs": [layer.source()],
            "prompts": prompts,
            "backend": self.parameterAsString(parameters, self.BACKEND, context).strip() or "sam3",
            "model": self.parameterAsString(parameters, self.MODEL, context).strip() or None,
            "device": self.parameterAsString(parameters, self.DEVICE, context).strip() or None,
            "score_threshold": self.parameterAsDouble(parameters, self.SCORE_THRESHOLD, context),
            "tile_size": self.parameterAsInt(parameters, self.TILE_SIZE, context),
            "overlap": self.parameterAsInt(parameters, self.OVERLAP, context),
            "bands": self.parameterAsString(parameters, self.BANDS, context).strip() or None,
            "dst_crs": dst_crs,
            "min_area": min_area if min_area > 0 else None,
        }

    def processAlgorithm(self, parameters: dict[str, Any], context: Any, feedback: Any) -> dict[str, Any]:  # noqa: N802
        from .provider import configured_python

        job = self.job(parameters, context)
        python = find_python(configured_python())
        if python is None:
            raise QgsProcessingException(not_found_message())
        folder = tempfile.mkdtemp(prefix="geoseg_qgis_")
        try:
            job["output"] = str(Path(folder) / "objects.fgb")  # FlatGeobuf: QGIS's older GDAL reads it quietly
            try:
                run_worker(python, job, lambda event: self.show(event, feedback), feedback.isCanceled)
            except Cancelled as e:
                raise QgsProcessingException(str(e)) from None
            except WorkerError as e:
                raise QgsProcessingException(f"geoseg: {e}") from None
            return {self.OUTPUT: self.copy(job["output"], parameters, context, feedback)}
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @staticmethod
    def show(event: dict[str, Any], feedback: Any) -> None:
        """A worker line into the algorithm's dialog."""
        kind, text = event.get("type"), str(event.get("text", ""))
        if kind == "progress":
            feedback.setProgress(95.0 * float(event.get("value", 0)))
        elif kind == "info":
            feedback.pushInfo(text)
        elif kind == "warning":
            feedback.reportError(f"warning: {text}", False)
        elif kind == "command":
            feedback.pushCommandInfo(f"{text}  (pid {event.get('pid')})")
        elif kind == "stderr":
            feedback.pushConsoleInfo(text)
        elif kind == "done":
            feedback.pushInfo(f"{event.get('objects')} objects")

    def copy(self, path: str, parameters: dict[str, Any], context: Any, feedback: Any) -> str:
        """The worker's file into the chosen sink (any format QGIS writes); returns the sink's id."""
        layer = QgsVectorLayer(path, "geoseg", "ogr")
        if not layer.isValid():
            raise QgsProcessingException(f"geoseg: cannot open the worker's result {path}")
        fields = QgsFields()
        for field in layer.fields():
            if field.name().lower() != "fid":  # the GeoPackage's key, not an attribute
                fields.append(field)
        sink, dest = self.parameterAsSink(parameters, self.OUTPUT, context, fields, QgsWkbTypes.MultiPolygon,
                                          layer.crs())
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        for feature in layer.getFeatures():
            out = QgsFeature(fields)
            geometry = feature.geometry()
            geometry.convertToMultiType()
            out.setGeometry(geometry)
            out.setAttributes([feature[f.name()] for f in fields])
            sink.addFeature(out, QgsFeatureSink.FastInsert)
        feedback.setProgress(100)
        del layer
        return str(dest)
