"""Executing a run: settings, inspection, engines (local, Dask, CPU workers),
staging, row merge, work folder, assembly, the pipeline, shards and combine,
profile and progress. Imports `geoseg.io` and `geoseg.core`, never above."""
