"""The geoseg QGIS plugin: a Processing provider with "Text-prompted segmentation".

Installed into a QGIS profile as the plugin folder `geoseg_qgis` (`geoseg qgis
install`), so its modules import each other relatively and import nothing but
the standard library, qgis and the GDAL bindings QGIS ships (osgeo): the work
runs in geoseg's own Python (`geoseg.qgis_worker`), never in QGIS's.
"""

from __future__ import annotations

from typing import Any


def classFactory(iface: Any) -> Any:  # noqa: N802  (the name QGIS looks for)
    from .plugin import GeosegPlugin

    return GeosegPlugin(iface)
