# geoseg with SAM 3 on an NVIDIA GPU (Linux x86_64). How to build and run it: docs/container.md.
#
# Base: CUDA 13.0.3 with cuDNN 9, what torch 2.14.1 is built against: PyPI's Linux x86_64 wheel, the
# newest that the sam3 extra allows (its metadata pins cuda-toolkit==13.0.3 and nvidia-cudnn-cu13 9.x).
# The wheel brings its own CUDA libraries; the base adds what the NVIDIA container toolkit reads:
# NVIDIA_REQUIRE_CUDA makes `docker run --gpus` refuse a host driver too old for CUDA 13.0 (< 580)
# with one message, instead of torch quietly running on the CPU. Raise both together.
ARG BASE=nvidia/cuda:13.0.3-cudnn-runtime-ubuntu24.04

FROM ${BASE} AS build
# Ubuntu 24.04's own Python (3.12) in a virtual environment: Ubuntu refuses pip into the system Python.
# apt versions unpinned (here and below): a rebuild takes Ubuntu's security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/geoseg
ENV PATH=/opt/geoseg/bin:$PATH
# torch first, in a layer of its own: an edit of geoseg does not download its 5 GB again.
# The same range as pyproject.toml's sam3 extra (tests/test_container.py checks it).
RUN pip install --no-cache-dir "torch>=2.4,<=2.14.1" "torchvision>=0.19,<=0.29.1"
# GDAL, GEOS and PROJ come inside the rasterio, pyogrio, shapely and pyproj wheels: no system GDAL.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY geoseg geoseg
COPY cli cli
# geoseg itself, its dependencies bounded by pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[sam3,dask,cloud]"

# The image proper: the virtual environment, without the source or what built it.
FROM ${BASE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
# uid 1000 (the first user of most Linux machines) so that outputs in a mounted folder are the user's;
# Ubuntu's images give that uid to a user `ubuntu`. The cache and /data are open to any
# `docker run --user` (sticky, like /tmp).
RUN if id ubuntu >/dev/null 2>&1; then userdel ubuntu && rm -rf /home/ubuntu; fi \
    && useradd --create-home --uid 1000 --user-group --shell /bin/bash geoseg \
    && install -d -o geoseg -g geoseg -m 1777 /home/geoseg/.cache /home/geoseg/.cache/huggingface /data
COPY --from=build /opt/geoseg /opt/geoseg
ENV PATH=/opt/geoseg/bin:$PATH \
    HF_HOME=/home/geoseg/.cache/huggingface \
    PYTHONUNBUFFERED=1
# SAM 3's weights (a few GB) and the Hugging Face token: mount the host's cache here to keep them.
VOLUME ["/home/geoseg/.cache/huggingface"]
# geoseg, by number: Kubernetes' runAsNonRoot can check a number, not a name.
USER 1000:1000
WORKDIR /data
ENTRYPOINT ["geoseg"]
CMD ["--help"]
