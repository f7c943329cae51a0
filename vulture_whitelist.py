"""Names vulture reports as unused that are used, but where it cannot see.

Run: vulture geoseg cli vulture_whitelist.py --min-confidence 60
(see docs/development.md). Vulture only parses this file; it is never imported,
so `_` stands for "any object" and the names need not resolve.
"""
# ruff: noqa: B018, F821

# Signatures fixed by the caller: warnings.showwarning passes these, __exit__ takes the exception triple,
# socketserver.BaseServer.handle_error / BaseHTTPRequestHandler.log_message are overridden.
filename  # cli/__init__.py _show_warning
lineno  # cli/__init__.py _show_warning
exc  # `def __exit__(self, *exc)` in export, raster, staging, testing/http
request  # geoseg/testing/http.py _Server.handle_error
client_address  # geoseg/testing/http.py _Server.handle_error
format  # geoseg/testing/http.py Handler.log_message

# Hooks assigned for the interpreter or a library to call.
_.showwarning  # warnings.showwarning = ... (cli/__init__.py, geoseg/qgis_worker.py)
_.msg  # cli/__init__.py _Redact: a log record's message, read by the handler's formatter
__getattr__  # geoseg/__init__.py: module __getattr__ (PEP 562) for the lazy names
__dir__  # geoseg/__init__.py: module __dir__ (PEP 562), lists the lazy names
_.__class__  # geoseg/analysis/plot.py: makes the module callable, geoseg.plot(...)

# Click commands: registered by their decorators, called by click.
evaluate_cmd  # cli/evaluate.py, `geoseg evaluate`
export_dataset_cmd  # cli/export_dataset.py, `geoseg export-dataset`
train_cmd  # cli/train.py, `geoseg train`
distill_cmd  # cli/distill.py, `geoseg distill`
install  # cli/qgis.py, `geoseg qgis install`

# Entry points and the contract.
Sam3Segmenter  # pyproject.toml [project.entry-points."geoseg.backends"] and segmenter._BUILTIN name it as a string
YoloSegmenter  # the same, for the yolo student
_.check_font  # geoseg.backends.yolo: Ultralytics' font download replaced (read by Ultralytics)
_.NUM_THREADS  # geoseg.backends.yolo: the torch threads Ultralytics sets (read by Ultralytics)
FullSegmenter  # geoseg/core/segmenter.py: the written contract (a Protocol) that backend authors implement

# QGIS calls these (plugin loader, Processing framework, QgsVectorFileWriter options).
classFactory  # geoseg/qgis/__init__.py: QGIS's plugin entry point
_.displayName  # QgsProcessingAlgorithm
_.shortHelpString  # QgsProcessingAlgorithm
_.createInstance  # QgsProcessingAlgorithm
_.initAlgorithm  # QgsProcessingAlgorithm
_.prepareAlgorithm  # QgsProcessingAlgorithm
_.processAlgorithm  # QgsProcessingAlgorithm
_.initGui  # QGIS plugin interface
_.unload  # QGIS plugin interface and QgsProcessingProvider
_.longName  # QgsProcessingProvider
_.supportsNonFileBasedOutput  # QgsProcessingProvider
_.loadAlgorithms  # QgsProcessingProvider
_.driverName  # QgsVectorFileWriter.SaveVectorOptions, read by QGIS
_.layerName  # QgsVectorFileWriter.SaveVectorOptions, read by QGIS

# http.server calls these on the test range server (geoseg/testing/http.py).
protocol_version  # BaseHTTPRequestHandler: HTTP/1.1 keep-alive
_.do_HEAD  # BaseHTTPRequestHandler dispatch by method name
_.do_GET  # BaseHTTPRequestHandler dispatch by method name
_.log_message  # BaseHTTPRequestHandler: silenced
_.handle_starttag  # html.parser.HTMLParser hook: geoseg/io/buckets.py reads an https:// folder's index page
daemon_threads  # ThreadingHTTPServer
_.handle_error  # socketserver.BaseServer

# Public API used by tests, notebooks, benchmarks or users, not inside geoseg/ or cli/.
summary_frame  # geoseg.evaluate: notebooks/04_checking_quality.ipynb
read_provenance  # geoseg.io.export: tests/test_layers.py, tests/test_contract.py; named in geoseg/qgis/layers.py
summarize  # geoseg.stats: notebooks 01 and 03, tests/test_stats.py
polygon  # geoseg.core.vectorize: one instance's polygon, tests/test_vectorize.py
costs  # geoseg.core.staging.TileStore.costs: per-tile forward passes and pixels, tests/test_refine.py
write_large_scene  # geoseg.testing.scenes: benchmarks/scale.py, benchmarks/pipeline.py
_.url  # geoseg.testing.http.RangeServer.url: tests/test_remote.py
_.n_params  # Sam3Segmenter.n_params: benchmarks/sam3_throughput.py
_.to_list  # geoseg.core.detections.Detections: tests/test_detections.py
_.from_supervision  # geoseg.core.detections.Detections: supervision interop, tests/test_detections.py
_.to_supervision  # geoseg.core.detections.Detections: supervision interop, tests/test_detections.py
write_tiles  # geoseg.testing.tiles: a scene as service tiles, tests/test_web.py, benchmarks/web.py
write_capabilities  # geoseg.testing.tiles: a WMTS capabilities document, tests/test_web.py
_.geotiff  # geoseg.testing.tiles.TileScene.geotiff: the scene as a file, tests/test_web.py

# Dataclass fields read through __dict__.
skipped_empty  # geoseg/analysis/dataset.py DatasetSummary: written to the dataset's summary JSON via __dict__
_.skipped_empty  # geoseg/analysis/dataset.py: the same field, incremented

# Fields read and added to by name (getattr/setattr with the stage's name).
post  # geoseg/run/profile.py Profile.post: Profile.add("post", ...) in engine.py
