"""QGIS layers -> files geoseg's worker reads (a web layer's render, the AOI polygons), and
geoseg's provenance -> the layer QGIS wrote.

Runs in QGIS's Python: standard library, qgis, and GDAL's bindings (osgeo), which QGIS ships.
"""

from __future__ import annotations

import json
import math
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsDistanceArea,
    QgsFeature,
    QgsFields,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingException,
    QgsProviderRegistry,
    QgsRasterBlockFeedback,
    QgsRasterFileWriter,
    QgsRasterPipe,
    QgsRectangle,
    QgsUnitTypes,
    QgsVectorFileWriter,
    QgsWkbTypes,
)

MAX_SIDE = 25_000  # pixels a side of a web layer's render: beyond, the tile downloads take hours


def crs_text(crs: QgsCoordinateReferenceSystem) -> str:
    """A CRS as pyproj reads it: its authority id, else its WKT."""
    return crs.authid() or crs.toWkt(QgsCoordinateReferenceSystem.WKT_PREFERRED)


def service_of(layer: Any) -> str | None:
    """The tile or map service behind a QGIS web layer ("wms" provider: XYZ, WMS, WMTS), as geoseg
    reads it directly (`xyz:URL`, `WMS:URL?LAYERS=...`, `WMTS:URL,layer=...`); None for another
    provider, a service over another protocol than http(s), or a source it cannot tell."""
    if layer.providerType() != "wms":
        return None
    source = layer.source().removeprefix("wms://")
    params: dict[str, str] = {}
    for key, value in urllib.parse.parse_qsl(source, keep_blank_values=True):
        params.setdefault(key, value)  # the first of a key QGIS repeats (styles)
    url = params.get("url", "")
    if not url.lower().startswith(("http://", "https://")):
        return None
    if params.get("type") == "xyz":
        return "xyz:" + url
    if params.get("tileMatrixSet") and params.get("layers"):
        return f"WMTS:{url},layer={params['layers']},tilematrixset={params['tileMatrixSet']}"
    if params.get("layers"):
        query = {"LAYERS": params["layers"], "SRS": params.get("crs") or "EPSG:3857",
                 "FORMAT": params.get("format") or "image/png"}
        return f"WMS:{url}{'&' if '?' in url else '?'}{urllib.parse.urlencode(query)}"
    return None


def is_file_layer(layer: Any) -> bool:
    """A layer geoseg reads itself (GDAL); others (XYZ, WMS/WMTS, ArcGIS, WCS ...) are rendered first."""
    return bool(layer.providerType() == "gdal")


@dataclass
class Render:
    """How a web layer is rendered: `rect` in the layer's CRS, `cols` × `rows` pixels."""

    name: str
    provider_type: str  # "wms" for XYZ, WMS and WMTS
    provider: Any  # a clone of the layer's data provider, safe off the main thread; the render's pipe takes it
    crs: QgsCoordinateReferenceSystem
    rect: QgsRectangle
    cols: int
    rows: int
    resolution: float


def ground_size(rect: QgsRectangle, crs: QgsCoordinateReferenceSystem, context: Any) -> tuple[float, float]:
    """Width and height of `rect` in metres on the ground, measured through its middle
    (Web Mercator's "metres" are 1/cos(latitude) times too long)."""
    da = QgsDistanceArea()
    da.setSourceCrs(crs, context)
    da.setEllipsoid(crs.ellipsoidAcronym() or "EPSG:7030")
    mid_x, mid_y = rect.center().x(), rect.center().y()
    width = da.measureLine(QgsPointXY(rect.xMinimum(), mid_y), QgsPointXY(rect.xMaximum(), mid_y))
    height = da.measureLine(QgsPointXY(mid_x, rect.yMinimum()), QgsPointXY(mid_x, rect.yMaximum()))
    to_m = QgsUnitTypes.fromUnitToUnitFactor(da.lengthUnits(), QgsUnitTypes.DistanceMeters)
    return width * to_m, height * to_m


def plan_render(layer: Any, extent: QgsRectangle, extent_crs: QgsCoordinateReferenceSystem, resolution: float,
                margin: int, context: Any) -> Render:
    """The render of `layer` over `extent` at `resolution` m on the ground, in the layer's CRS, grown by
    `margin` pixels a side so that objects crossing the extent's edge are seen whole.

    Raises QgsProcessingException (one line with the fix) when the render would be too large.
    """
    crs = layer.crs()
    rect = QgsRectangle(extent)
    if extent_crs.isValid() and extent_crs != crs:
        rect = QgsCoordinateTransform(extent_crs, crs, context.transformContext()).transformBoundingBox(rect)
    width, height = ground_size(rect, crs, context.transformContext())
    if not (width > 0 and height > 0):
        raise QgsProcessingException(f"EXTENT: empty in the CRS of {layer.name()}: give an extent with an area")
    # square pixels in the layer's CRS (the web providers draw non-square ones shifted), as fine as asked both ways
    size = resolution * min(rect.width() / width, rect.height() / height)
    cols = math.ceil(rect.width() / size) + 2 * margin
    rows = math.ceil(rect.height() / size) + 2 * margin
    left, top = rect.xMinimum() - margin * size, rect.yMaximum() + margin * size
    rect = QgsRectangle(left, top - rows * size, left + cols * size, top)
    if max(cols, rows) > MAX_SIDE:
        raise QgsProcessingException(
            f"{layer.name()}: rendering EXTENT at WEB_RESOLUTION {resolution:g} m gives {cols} × {rows} pixels, "
            f"more than {MAX_SIDE} a side: choose a coarser WEB_RESOLUTION or a smaller EXTENT")
    return Render(layer.name(), layer.providerType(), layer.dataProvider().clone(), crs, rect, cols, rows, resolution)


def render(plan: Render, path: Path, context: Any, feedback: Any) -> str:
    """Render the web layer into a GeoTIFF at `path` (RGBA bytes, the layer's CRS); returns the path."""
    pipe = QgsRasterPipe()
    if not pipe.set(plan.provider):
        raise QgsProcessingException(f"{plan.name}: QGIS cannot render this layer into a raster file")
    writer = QgsRasterFileWriter(str(path))
    writer.setOutputFormat("GTiff")
    feedback.pushInfo(f"{plan.name}: rendering {plan.cols} × {plan.rows} pixels at {plan.resolution:g} m")
    block_feedback = QgsRasterBlockFeedback()  # the writer takes this kind only: forward the cancel button
    feedback.canceled.connect(block_feedback.cancel)
    error = writer.writeRaster(pipe, plan.cols, plan.rows, plan.rect, plan.crs, context.transformContext(),
                               block_feedback)
    if feedback.isCanceled():
        raise QgsProcessingException("cancelled: nothing was written")
    if error != QgsRasterFileWriter.NoError or not path.is_file():
        raise QgsProcessingException(f"{plan.name}: rendering the layer failed (QgsRasterFileWriter error {error}): "
                                     "check that the layer draws in QGIS over EXTENT")
    return str(path)


def export_exemplars(source: Any, path: Path, context: Any) -> str:
    """The EXEMPLARS layer's features (geometry, and its prompt and positive fields where it has them)
    into a GeoPackage for the worker; returns its path."""
    return export_features(source, path, context, ("prompt", "positive"), "EXEMPLARS")


def export_objects(source: Any, path: Path, context: Any) -> str:
    """The OBJECTS layer's clicks and boxes (geometry, and its object, positive and label fields where
    it has them) into a GeoPackage for the worker; returns its path."""
    return export_features(source, path, context, ("object", "positive", "label"), "OBJECTS")


def export_features(source: Any, path: Path, context: Any, names: tuple[str, ...], param: str) -> str:
    """A layer's features, with those of its fields `names` it has, into a GeoPackage; its path."""
    fields = QgsFields()
    for name in names:
        k = source.fields().indexFromName(name)
        if k >= 0:
            fields.append(source.fields().at(k))
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName, options.layerName = "GPKG", param.lower()
    writer = QgsVectorFileWriter.create(str(path), fields, source.wkbType(), source.sourceCrs(),
                                        context.transformContext(), options)
    if writer.hasError() != QgsVectorFileWriter.NoError:
        raise QgsProcessingException(f"{param}: cannot write its features to {path}: {writer.errorMessage()}")
    for feature in source.getFeatures():
        out = QgsFeature(fields)
        out.setGeometry(feature.geometry())
        out.setAttributes([feature[name] for name in fields.names()])
        writer.addFeature(out)
    del writer  # closes the file
    return str(path)


def export_aoi(source: Any, path: Path, context: Any, bbox: list[float] | None = None,
               bbox_crs: str | None = None) -> str:
    """The AOI's polygons (geometry only), cut to `bbox` (in `bbox_crs`) when given, into a GeoPackage for
    the worker; returns its path. geoseg takes one area: an EXTENT and an AOI become their intersection."""
    clip = None
    if bbox is not None:
        clip = QgsGeometry.fromRect(QgsRectangle(*bbox)).densifyByCount(32)  # edges stay true when reprojected
        crs = QgsCoordinateReferenceSystem()
        if bbox_crs and crs.createFromUserInput(bbox_crs) and crs != source.sourceCrs():
            clip.transform(QgsCoordinateTransform(crs, source.sourceCrs(), context.transformContext()))
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName, options.layerName = "GPKG", "aoi"
    writer = QgsVectorFileWriter.create(str(path), QgsFields(), QgsWkbTypes.MultiPolygon, source.sourceCrs(),
                                        context.transformContext(), options)
    if writer.hasError() != QgsVectorFileWriter.NoError:
        raise QgsProcessingException(f"AOI: cannot write its polygons to {path}: {writer.errorMessage()}")
    count = 0
    for feature in source.getFeatures():
        geometry = feature.geometry()
        if clip is not None and not geometry.isEmpty():
            geometry = geometry.intersection(clip)
        if geometry.isEmpty() or geometry.type() != QgsWkbTypes.PolygonGeometry:
            continue
        geometry.convertToMultiType()
        out = QgsFeature()
        out.setGeometry(geometry)
        writer.addFeature(out)
        count += 1
    del writer  # closes the file
    if count == 0:
        where = " inside EXTENT" if clip is not None else " (or none selected)"
        raise QgsProcessingException(f"AOI {source.sourceName()}: no polygons{where}: give polygons "
                                     "that overlap the raster and EXTENT, or leave AOI empty")
    return str(path)


def stamp(dest: str, provenance: dict[str, Any]) -> str | None:
    """Store geoseg's provenance with the layer QGIS wrote, where `geoseg.io.export.read_provenance` reads it:
    a GeoPackage layer's metadata item "geoseg", else the sidecar OUT.geoseg.json. Returns where, or None
    when `dest` is not a file (a database)."""
    parts = QgsProviderRegistry.instance().decodeUri("ogr", dest)
    path = Path(parts.get("path") or dest)
    if not path.is_file():
        return None
    text = json.dumps(provenance, default=str)
    if path.suffix.lower() != ".gpkg":
        sidecar = path.with_name(path.name + ".geoseg.json")
        sidecar.write_text(text, encoding="utf-8")
        return str(sidecar)
    from osgeo import ogr  # QGIS ships GDAL's bindings; QGIS's own API cannot write GDAL metadata

    ds = ogr.Open(str(path), 1)
    if ds is None:
        return None
    name = parts.get("layerName") or path.stem
    layer = ds.GetLayerByName(name) or (ds.GetLayer(0) if ds.GetLayerCount() == 1 else None)
    if layer is None:
        return None
    layer.SetMetadataItem("geoseg", text)
    where = f"{path} (layer {layer.GetName()})"
    del layer
    ds = None  # noqa: F841  (closing the dataset writes the metadata)
    return where
