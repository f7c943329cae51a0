#!/usr/bin/env bash
# Fetch, on a machine with network, the wheels that benchmarks/gpu.sh needs on the
# GPU machine (Python 3.12, x86-64; it has torch, transformers, numpy, pandas, pyarrow,
# scipy, click, tqdm, but no GDAL stack). Into .whl/ (ignored by git), 56 MiB: the
# device tool carries at most 64 MiB with the working tree. Versions within pyproject's
# ranges, picked for small wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  rasterio==1.4.3 pyogrio==0.10.0 pyproj==3.7.2 shapely==2.2.0 geopandas==1.2.0 \
  affine==3.0.1 cligj==0.7.2 click-plugins==1.1.1.2
du -ch .whl/*.whl | tail -1
