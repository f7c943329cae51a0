""""Text-prompted segmentation": QGIS parameters -> a job for geoseg's worker -> the output sink."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from processing.core.ProcessingConfig import ProcessingConfig
from qgis.core import (
    Qgis,
    QgsFeature,
    QgsFeatureSink,
    QgsFields,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterCrs,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsVectorLayer,
    QgsWkbTypes,
)

from .layers import (
    Render,
    crs_text,
    export_aoi,
    export_exemplars,
    export_objects,
    is_file_layer,
    plan_render,
    render,
    service_of,
    stamp,
)
from .runner import SETTING, Cancelled, WorkerError, check_python, find_python, not_found_message, run_worker

HELP = """Finds the objects named by the prompts in a raster layer with SAM 3 and writes one polygon per object, \
with the fields object_id, label, score, area_m2, n_tiles, level and source (as `geoseg segment` does; \
an object past 500,000 vertices comes in strips sharing one object_id: Dissolve by object_id joins them).

<b>Raster layer</b>: a file QGIS reads with GDAL, or a web layer (XYZ, WMS/WMTS ...): a web layer is rendered \
over <b>Extent</b> at <b>Web layer resolution</b> into a temporary GeoTIFF first; both are then required.
<b>More raster layers</b>, <b>Folder of raster tiles</b>: further inputs (files only; a folder is searched \
recursively), written into the same output.
<b>Treat the inputs as one mosaic</b>: read all inputs as one raster (adjacent or overlapping tiles of a survey): \
objects on file edges come back once and whole; the first input wins where files overlap (as --mosaic).
<b>Prompts</b>: comma-separated or one per line ("building, swimming pool").
<b>Model</b>: a Hugging Face id (facebook/sam3: accept its licence and run `hf auth login` once) or a local folder; \
with the <b>yolo</b> backend (advanced), the folder of a student trained by `geoseg train`, read at its resolution.
<b>Extent</b>, <b>Area of interest</b>: keep the objects whose centre lies inside (as --bbox and --aoi).
<b>Exemplars</b>: a layer of boxes drawn around a few examples of what to find, anywhere on the inputs; a text field \
<b>prompt</b> ties a box to a prompt or names a concept of its own; a boolean field <b>positive</b> set false \
marks an example of what not to find (default true). Prompts are then optional (as --exemplars; docs/exemplars.md).
<b>Tile size</b>, <b>overlap</b>: tiling in pixels; objects crossing tile seams are merged into one.
<b>Refinement depth</b>: a tile whose detections fill the model's capacity (SAM 3: 200 objects) is \
segmented again in 2 x 2 sub-tiles, down to this many levels (0: never; as --refine-depth).
<b>Zoom</b>: start every tile this many levels down, for objects of a few pixels (as --zoom).
<b>Mask threshold</b>: SAM 3 turns mask probabilities above it into object pixels (empty: 0.5).
<b>Bands</b>: 1-based bands used as red, green, blue ("4,3,2"), or one band for grey; empty: the first three.
<b>Resolution</b>: resample a file raster on read to this pixel size (units of its CRS).
<b>Target CRS</b>: of the output (default: the project's; the raster's when the project has none).

The output keeps geoseg's provenance (a GeoPackage layer's metadata, else a file OUT.geoseg.json beside it).
The work runs in geoseg's own Python environment, in a separate process: `geoseg qgis install` records it; \
else set its interpreter in Settings › Options › Processing › Providers › geoseg."""


def split_prompts(text: str) -> list[str]:
    """Prompts from "a, b" or one per line; blanks dropped, repeats kept once."""
    return list(dict.fromkeys(p.strip() for p in re.split(r"[,\n]", text or "") if p.strip()))


class SegmentAlgorithm(QgsProcessingAlgorithm):
    INPUT = "INPUT"
    MORE_INPUTS = "MORE_INPUTS"
    FOLDER = "FOLDER"
    MOSAIC = "MOSAIC"
    PROMPTS = "PROMPTS"
    MODEL = "MODEL"
    EXTENT = "EXTENT"
    AOI = "AOI"
    EXEMPLARS = "EXEMPLARS"
    OBJECTS = "OBJECTS"
    TILE_SIZE = "TILE_SIZE"
    OVERLAP = "OVERLAP"
    REFINE_DEPTH = "REFINE_DEPTH"
    ZOOM = "ZOOM"
    SCORE_THRESHOLD = "SCORE_THRESHOLD"
    MASK_THRESHOLD = "MASK_THRESHOLD"
    BANDS = "BANDS"
    RESOLUTION = "RESOLUTION"
    WEB_RESOLUTION = "WEB_RESOLUTION"
    TARGET_CRS = "TARGET_CRS"
    MIN_AREA = "MIN_AREA"
    BACKEND = "BACKEND"
    DEVICE = "DEVICE"
    OUTPUT = "OUTPUT"
    prepared: tuple[dict[str, Any], Render | None, str]  # the job, a web layer's render, geoseg's Python

    def name(self) -> str:
        return "segment"

    def displayName(self) -> str:  # noqa: N802  (QGIS's names)
        return "Text-prompted segmentation"

    def shortHelpString(self) -> str:  # noqa: N802
        return HELP

    def createInstance(self) -> SegmentAlgorithm:  # noqa: N802
        return SegmentAlgorithm()

    def initAlgorithm(self, config: Any = None) -> None:  # noqa: N802
        double, integer = QgsProcessingParameterNumber.Double, QgsProcessingParameterNumber.Integer
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Raster layer (a file, or a web layer)",
                                                            optional=True))
        self.addParameter(QgsProcessingParameterMultipleLayers(
            self.MORE_INPUTS, "More raster layers (files)", QgsProcessing.TypeRaster, optional=True))
        self.addParameter(QgsProcessingParameterFile(
            self.FOLDER, "Folder of raster tiles", QgsProcessingParameterFile.Folder, optional=True))
        self.addParameter(QgsProcessingParameterBoolean(
            self.MOSAIC, "Treat the inputs as one mosaic (adjacent tiles: objects on file edges come back once)",
            defaultValue=False))
        self.addParameter(QgsProcessingParameterString(self.PROMPTS, "Prompts (comma-separated or one per line)",
                                                       multiLine=True, optional=True))
        self.addParameter(QgsProcessingParameterString(self.MODEL, "Model (Hugging Face id or folder)",
                                                       defaultValue="facebook/sam3"))
        self.addParameter(QgsProcessingParameterExtent(
            self.EXTENT, "Extent (objects whose centre is inside; required for web layers)", optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.AOI, "Area of interest (objects whose centre is in its polygons)", [QgsProcessing.TypeVectorPolygon],
            optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.EXEMPLARS, "Exemplars: boxes around examples of what to find (fields prompt, positive: optional)",
            [QgsProcessing.TypeVectorAnyGeometry], optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.OBJECTS, "Objects: clicks (points) on single objects, or boxes around them (fields object, "
                          "positive, label: optional)", [QgsProcessing.TypeVectorAnyGeometry], optional=True))
        self.addParameter(QgsProcessingParameterNumber(self.TILE_SIZE, "Tile size (pixels)", integer, 1008,
                                                       minValue=16))
        self.addParameter(QgsProcessingParameterNumber(self.OVERLAP, "Overlap (pixels)", integer, 128, minValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            self.REFINE_DEPTH, "Refinement depth: levels of sub-tiles for tiles full of objects (0: never)", integer, 2,
            minValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            self.ZOOM, "Zoom: start every tile this many levels down (small objects)", integer, 0, minValue=0))
        self.addParameter(QgsProcessingParameterNumber(self.SCORE_THRESHOLD, "Score threshold", double, 0.5,
                                                       minValue=0, maxValue=1))
        self.addParameter(QgsProcessingParameterNumber(self.MASK_THRESHOLD, "Mask threshold (empty: the model's, 0.5)",
                                                       double, optional=True, minValue=0, maxValue=1))
        self.addParameter(QgsProcessingParameterString(self.BANDS, "Bands as red,green,blue (e.g. 4,3,2)",
                                                       optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.RESOLUTION, "Resolution: resample a file raster to this pixel size (its CRS units)", double,
            optional=True, minValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            self.WEB_RESOLUTION, "Web layer resolution (m on the ground; web layers only)", double, optional=True,
            minValue=0))
        self.addParameter(QgsProcessingParameterCrs(self.TARGET_CRS, "Target CRS", "ProjectCrs", optional=True))
        self.addParameter(QgsProcessingParameterNumber(self.MIN_AREA, "Minimum area (m²)", double, optional=True,
                                                       minValue=0))
        for name, label, default in ((self.BACKEND, "Backend (sam3; yolo: a student from `geoseg train`, its folder as "
                                                    "Model; colors is the test backend)", "sam3"),
                                     (self.DEVICE, "Device (cuda, cuda:1, mps, cpu; empty: best available)", None)):
            param = QgsProcessingParameterString(name, label, defaultValue=default, optional=default is None)
            param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(param)
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, "Segmented objects",
                                                            QgsProcessing.TypeVectorPolygon))

    def number(self, parameters: dict[str, Any], name: str, context: Any) -> float | None:
        """An optional number: None when left empty."""
        if parameters.get(name) in (None, ""):
            return None
        return float(self.parameterAsDouble(parameters, name, context))

    @staticmethod
    def as_files(parameters: dict[str, Any], context: Any) -> tuple[dict[str, Any], list[str]]:
        """The INPUT and MORE_INPUTS given as paths of files that are no layer of the project (as
        qgis_process gives them), and the parameters without them. geoseg reads such files itself:
        loaded as QGIS layers, a raster of more than 8 bits would have its statistics computed for
        its default style, and GDAL would keep them in RASTER.aux.xml beside the user's file."""
        def is_file(value: Any) -> bool:
            return (isinstance(value, str) and value != "" and Path(value).is_file()
                    and QgsProcessingUtils.mapLayerFromString(value, context, False) is None)

        rest, files = dict(parameters), []
        if is_file(rest.get(SegmentAlgorithm.INPUT)):
            files.append(rest.pop(SegmentAlgorithm.INPUT))
        more = rest.get(SegmentAlgorithm.MORE_INPUTS)
        if isinstance(more, (list, tuple)) and any(is_file(v) for v in more):
            files += [v for v in more if is_file(v)]
            rest[SegmentAlgorithm.MORE_INPUTS] = [v for v in more if not is_file(v)] or None
        return rest, files

    def plan(self, parameters: dict[str, Any], context: Any) -> tuple[dict[str, Any], Render | None]:
        """The worker's job (the same options as `geoseg segment`) and, for a web layer, its render.

        Raises QgsProcessingException with one line that names the parameter and the fix.
        """
        layers, files = self.as_files(parameters, context)  # files: never loaded as layers
        layer = self.parameterAsRasterLayer(layers, self.INPUT, context)
        more = self.parameterAsLayerList(layers, self.MORE_INPUTS, context) or []
        folder = self.parameterAsFile(parameters, self.FOLDER, context) or ""
        mosaic = self.parameterAsBoolean(parameters, self.MOSAIC, context)
        if layer is None and layers.get(self.INPUT) not in (None, ""):
            raise QgsProcessingException("INPUT: no such raster layer or file")
        if layer is None and not files and not more and not folder:
            raise QgsProcessingException("INPUT: give a raster layer, MORE_INPUTS or a FOLDER of raster tiles")
        if folder and not Path(folder).is_dir():
            raise QgsProcessingException(f"FOLDER: {folder} is not a folder: pick the folder holding the tiles")
        web = [x.name() for x in [layer, *more] if x is not None and not is_file_layer(x)]
        if web and (files or more or folder or mosaic):
            raise QgsProcessingException(f"INPUT: {web[0]} is a web layer: segment it alone, without MORE_INPUTS, "
                                         f"FOLDER or MOSAIC")
        if mosaic and not folder and len(files) + len([x for x in [layer, *more] if x is not None]) < 2:
            raise QgsProcessingException("MOSAIC: give several layers (MORE_INPUTS) or a FOLDER of tiles to read "
                                         "as one mosaic")
        prompts = split_prompts(self.parameterAsString(parameters, self.PROMPTS, context))
        if not prompts and parameters.get(self.EXEMPLARS) in (None, "") and parameters.get(self.OBJECTS) in (None, ""):
            raise QgsProcessingException("PROMPTS: give at least one, e.g. building, tree crown, or EXEMPLARS "
                                         "or OBJECTS")
        crs = self.parameterAsCrs(parameters, self.TARGET_CRS, context)
        min_area = self.parameterAsDouble(parameters, self.MIN_AREA, context)
        resolution = self.number(parameters, self.RESOLUTION, context)
        job: dict[str, Any] = {
            "inputs": files + [x.source() for x in [layer, *more] if x is not None] + ([folder] if folder else []),
            "prompts": prompts,
            "backend": self.parameterAsString(parameters, self.BACKEND, context).strip() or "sam3",
            "model": self.parameterAsString(parameters, self.MODEL, context).strip() or None,
            "device": self.parameterAsString(parameters, self.DEVICE, context).strip() or None,
            "score_threshold": self.parameterAsDouble(parameters, self.SCORE_THRESHOLD, context),
            "mask_threshold": self.number(parameters, self.MASK_THRESHOLD, context),
            "tile_size": self.parameterAsInt(parameters, self.TILE_SIZE, context),
            "overlap": self.parameterAsInt(parameters, self.OVERLAP, context),
            "bands": self.parameterAsString(parameters, self.BANDS, context).strip() or None,
            "resolution": resolution if resolution else None,
            "dst_crs": crs_text(crs) if crs.isValid() else None,
            "min_area": min_area if min_area > 0 else None,
        }
        if mosaic:  # only when asked: a geoseg without mosaics still runs the other jobs
            job["mosaic"] = True
        for key, name, default in (("refine_depth", self.REFINE_DEPTH, 2), ("zoom", self.ZOOM, 0)):
            value = self.parameterAsInt(parameters, name, context)
            if value != default:  # as above: only when changed
                job[key] = value
        if layer is None:  # the first of the other inputs (a folder: its CRS is found by geoseg)
            layer = more[0] if more else None
        extent = None
        if parameters.get(self.EXTENT) not in (None, ""):
            extent = self.parameterAsExtent(parameters, self.EXTENT, context)
        extent_crs = self.parameterAsExtentCrs(parameters, self.EXTENT, context)
        if extent is not None and not extent.isNull():
            if not extent_crs.isValid() and layer is None and not files:
                raise QgsProcessingException("EXTENT: give its CRS (xmin,xmax,ymin,ymax [EPSG:XXXX]): the inputs "
                                             "are only a folder")
            if not extent_crs.isValid() and layer is not None and not files:  # without [CRS]: the raster's
                extent_crs = layer.crs()
            job["bbox"] = [extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()]
            if extent_crs.isValid():  # else (a file's): each raster's own CRS, as geoseg takes a bbox
                job["bbox_crs"] = crs_text(extent_crs)
        if layer is None or is_file_layer(layer):
            return job, None
        web_resolution = self.number(parameters, self.WEB_RESOLUTION, context)
        kind = f"{layer.name()} is a web layer ({layer.providerType()}): geoseg segments a render of it"
        if "bbox" not in job:
            raise QgsProcessingException(f"EXTENT: {kind}, so give the extent to render (e.g. the map canvas)")
        if not web_resolution:
            raise QgsProcessingException(f"WEB_RESOLUTION: {kind}, so give its ground resolution in metres, "
                                         "e.g. 0.5 (about the layer's finest zoom)")
        if resolution:
            raise QgsProcessingException(f"RESOLUTION: {kind}: set its pixel size with WEB_RESOLUTION instead")
        service = service_of(layer)
        if service is not None:  # geoseg reads it itself: cached, resumable, no render
            job["inputs"], job["web_resolution"] = [service], web_resolution
            job["web_layer"] = {"name": layer.name(), "provider": layer.providerType(), "read": "directly"}
            return job, None
        return job, plan_render(layer, extent, extent_crs, web_resolution, job["overlap"], context)

    def python(self) -> str:
        """geoseg's Python, checked to have geoseg; raises QgsProcessingException saying the fix."""
        found = find_python(str(ProcessingConfig.getSetting(SETTING) or ""))
        if found is None:
            raise QgsProcessingException(not_found_message())
        problem = check_python(*found)
        if problem:
            raise QgsProcessingException(problem)
        return found[0]

    def checkParameterValues(self, parameters: dict[str, Any], context: Any) -> tuple[bool, str]:  # noqa: N802
        """Usage errors, before any work: QGIS shows the message once (from processAlgorithm it shows it
        three times)."""
        ok, message = super().checkParameterValues(self.as_files(parameters, context)[0], context)
        if not ok:
            return ok, message
        try:
            job, web = self.plan(parameters, context)
            python = self.python()
        except QgsProcessingException as e:
            return False, str(e)
        if web is None:  # a web layer is rendered by the run: its checks come then
            problem = self.check_in_worker(python, job, parameters, context)
            if problem:
                return False, problem
        return True, ""

    def check_in_worker(self, python: str, job: dict[str, Any], parameters: dict[str, Any], context: Any) -> str:
        """The worker's own checks (inputs, bands, area, output), made without loading the model:
        a usage error said once, in seconds; "" when there is none."""
        folder = Path(tempfile.mkdtemp(prefix="geoseg_qgis_check_"))
        try:
            aoi = self.parameterAsSource(parameters, self.AOI, context)
            job = {**job, "check": True, "output": str(folder / "objects.fgb")}
            self.add_exemplars(job, parameters, context, folder)
            self.add_objects(job, parameters, context, folder)
            if aoi is not None:  # as the run takes it (`processAlgorithm`)
                box, box_crs = job.pop("bbox", None), job.pop("bbox_crs", None)
                job["aoi"] = export_aoi(aoi, folder / "aoi.gpkg", context, box, box_crs)
            run_worker(python, job, lambda event: None, lambda: False)
        except WorkerError as e:
            return f"geoseg: {e}" if e.kind in ("usage", "model") else ""  # others: the run reports them
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return ""

    def add_exemplars(self, job: dict[str, Any], parameters: dict[str, Any], context: Any, folder: Path) -> Any:
        """The EXEMPLARS layer into a GeoPackage for the worker (`job["exemplars"]`); the layer, or None."""
        source = self.parameterAsSource(parameters, self.EXEMPLARS, context)
        if source is not None:
            job["exemplars"] = export_exemplars(source, folder / "exemplars.gpkg", context)
        return source

    def add_objects(self, job: dict[str, Any], parameters: dict[str, Any], context: Any, folder: Path) -> Any:
        """The OBJECTS layer into a GeoPackage for the worker (`job["objects"]`); the layer, or None."""
        source = self.parameterAsSource(parameters, self.OBJECTS, context)
        if source is not None:
            job["objects"] = export_objects(source, folder / "objects_clicked.gpkg", context)
        return source

    def prepareAlgorithm(self, parameters: dict[str, Any], context: Any, feedback: Any) -> bool:  # noqa: N802
        # on the main thread: layers (and the clone of a web layer's provider) are read here, not in the worker thread
        self.prepared = (*self.plan(parameters, context), self.python())
        return True

    def processAlgorithm(self, parameters: dict[str, Any], context: Any, feedback: Any) -> dict[str, Any]:  # noqa: N802
        job, web, python = self.prepared
        aoi = self.parameterAsSource(parameters, self.AOI, context)
        folder = Path(tempfile.mkdtemp(prefix="geoseg_qgis_"))  # the render, the AOI, the worker's output
        try:
            if web is not None:
                job["inputs"] = [render(web, folder / "web_layer.tif", context, feedback)]
            box, box_crs = job.get("bbox"), job.get("bbox_crs")
            if aoi is not None:  # with an EXTENT too, their intersection (geoseg takes one area)
                job.pop("bbox", None)
                job.pop("bbox_crs", None)
                job["aoi"] = export_aoi(aoi, folder / "aoi.gpkg", context, box, box_crs)
            job["output"] = str(folder / "objects.fgb")  # FlatGeobuf: QGIS's older GDAL reads it quietly
            exemplars = self.add_exemplars(job, parameters, context, folder)
            clicked = self.add_objects(job, parameters, context, folder)
            try:
                done = run_worker(python, job, lambda event: self.show(event, feedback), feedback.isCanceled)
            except Cancelled as e:
                raise QgsProcessingException(str(e)) from None
            except WorkerError as e:
                raise QgsProcessingException(f"geoseg: {e}") from None
            dest = self.copy(job["output"], parameters, context, feedback)
            provenance = {**done.get("provenance", {}), "qgis": {"version": Qgis.QGIS_VERSION,
                                                                 "algorithm": "geoseg:segment"}}
            if web is not None:  # the render is gone: name the layer it came from
                provenance["sources"] = [web.name]
                provenance["web_layer"] = {"name": web.name, "provider": web.provider_type,
                                           "crs": crs_text(web.crs), "resolution_m": web.resolution,
                                           "pixels": [web.cols, web.rows], "read": "rendered by QGIS"}
            elif job.get("web_layer"):  # read directly by geoseg: its `web` entry names the service
                provenance["web_layer"] = {**job["web_layer"], "resolution_m": job["web_resolution"]}
            if aoi is not None:  # the temporary file is gone: name the layer
                within = f" within EXTENT {','.join(f'{v:.15g}' for v in box)} [{box_crs}]" if box else ""
                provenance["area"] = f"--aoi {aoi.sourceName()} (QGIS layer){within}"
            for key, layer in (("exemplars", exemplars), ("objects", clicked)):
                if layer is not None:  # the temporary file is gone: name the layer
                    digest = str(provenance.get(key, "")).rpartition(" ")[2]
                    provenance[key] = f"{layer.sourceName()} (QGIS layer) {digest}".strip()
            where = stamp(dest, provenance)
            feedback.pushInfo(f"provenance: {where}" if where else "provenance: not stored (not a file output)")
            return {self.OUTPUT: dest}
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
        del sink, layer  # closes the output file, so that its provenance can be written
        return str(dest)
