"""The plugin shell: registers the provider with QGIS (and qgis_process)."""

from __future__ import annotations

from typing import Any

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QCoreApplication

from .provider import GeosegProvider


def keep_inputs_clean() -> None:
    """In `qgis_process run geoseg:...` (a process of its own, for that one run), GDAL writes no
    RASTER.aux.xml beside the user's raster: qgis_process loads INPUT as a layer before the algorithm
    starts, and the default style of a raster of more than 8 bits computes a histogram that GDAL would
    keep there. geoseg reads the file itself, in its own Python. QGIS's desktop, and qgis_process running
    other algorithms, are left as they are."""
    args = QCoreApplication.arguments()
    if QgsApplication.platform() == "qgis_process" and any(a.startswith("geoseg:") for a in args):
        from osgeo import gdal

        gdal.SetConfigOption("GDAL_PAM_ENABLED", "NO")


class GeosegPlugin:
    def __init__(self, iface: Any) -> None:
        self.iface = iface
        self.provider: GeosegProvider | None = None

    def initProcessing(self) -> None:  # noqa: N802  (QGIS's names)
        keep_inputs_clean()  # before qgis_process loads the run's layers
        if self.provider is None:
            self.provider = GeosegProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802
        self.initProcessing()

    def unload(self) -> None:
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
