"""Run geoseg:segment in a headless QGIS; print one JSON line with what came out.

Runs under QGIS's Python (Debian: /usr/bin/python3), not geoseg's:
    python3 run_algorithm.py PLUGINS_DIR PARAMS_JSON [--cancel]
PLUGINS_DIR holds the installed plugin `geoseg_qgis` (with the Python `geoseg qgis install` recorded).
An INPUT of {"xyz": URI} is an XYZ tile layer ("wms" provider) of that URI ("type=xyz&url=...").
With --cancel, the run is cancelled at the first progress past 0.
"""

import json
import os
import sys
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import (  # noqa: E402
    QgsApplication,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsRasterLayer,
    QgsVectorLayer,
)


class Feedback(QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.lines = []
        self.pid = None
        self.progress = []

    def pushInfo(self, text):  # noqa: N802
        self.lines.append(text)

    def reportError(self, text, fatal=False):  # noqa: N802
        self.lines.append(text)

    def pushCommandInfo(self, text):  # noqa: N802
        self.lines.append(text)
        self.pid = int(text.rsplit("(pid ", 1)[1].rstrip(")"))


def describe(path):
    layer = QgsVectorLayer(path, "out", "ogr")  # gone before exitQgis: a layer outliving it crashes QGIS
    return dict(output=path, valid=layer.isValid(), count=layer.featureCount(), crs=layer.crs().authid(),
                fields=[f.name() for f in layer.fields()], labels=sorted({f["label"] for f in layer.getFeatures()}))


def main():
    plugins, params = sys.argv[1], json.loads(sys.argv[2])
    cancel = "--cancel" in sys.argv
    app = QgsApplication([], False)
    app.initQgis()
    sys.path.append("/usr/share/qgis/python/plugins")
    from processing.core.Processing import Processing

    Processing.initialize()
    import processing

    sys.path.insert(0, plugins)
    import geoseg_qgis

    plugin = geoseg_qgis.classFactory(None)  # keep the reference: the provider lives as long as it
    plugin.initProcessing()
    feedback = Feedback()
    cancelled_at = []

    def on_progress(value):
        feedback.progress.append(value)
        if cancel and value > 0 and not cancelled_at:
            cancelled_at.append(time.monotonic())
            feedback.cancel()

    feedback.progressChanged.connect(on_progress)
    if isinstance(params.get("INPUT"), dict):
        params["INPUT"] = QgsRasterLayer(params["INPUT"]["xyz"], "web tiles", "wms")
    result = {"error": None}
    try:
        out = processing.run("geoseg:segment", params, feedback=feedback)
    except QgsProcessingException as e:
        result["error"] = str(e)
    else:
        result.update(describe(out["OUTPUT"]))
    if cancelled_at:
        result["stop_seconds"] = time.monotonic() - cancelled_at[0]
    alive = False
    if feedback.pid is not None:
        try:
            os.kill(feedback.pid, 0)
            alive = True
        except OSError:
            pass
    result.update(lines=feedback.lines, pid=feedback.pid, worker_alive=alive, progress=feedback.progress[-3:])
    print(json.dumps(result))
    plugin.unload()
    app.exitQgis()


if __name__ == "__main__":
    main()
