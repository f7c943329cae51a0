"""The "geoseg" Processing provider and its one setting, geoseg's Python."""

from __future__ import annotations

from processing.core.ProcessingConfig import ProcessingConfig, Setting
from qgis.core import QgsProcessingProvider

from .algorithm import SegmentAlgorithm
from .runner import SETTING


class GeosegProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "geoseg"

    def name(self) -> str:
        return "geoseg"

    def longName(self) -> str:
        return "geoseg: text-prompted segmentation with SAM 3"

    def load(self) -> bool:
        ProcessingConfig.settingIcons[self.name()] = self.icon()
        ProcessingConfig.addSetting(Setting(
            self.name(), SETTING, "geoseg Python (the interpreter of geoseg's environment; empty: "
            "$GEOSEG_PYTHON, else the one `geoseg qgis install` recorded, else the `geoseg` command on PATH)", "",
            valuetype=Setting.FILE))
        ProcessingConfig.readSettings()
        self.refreshAlgorithms()
        return True

    def unload(self) -> None:
        ProcessingConfig.removeSetting(SETTING)

    def supportsNonFileBasedOutput(self) -> bool:  # temporary outputs become GeoPackages, not memory layers
        return False

    def loadAlgorithms(self) -> None:
        self.addAlgorithm(SegmentAlgorithm())
