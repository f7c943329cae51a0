"""Fetch the OSBS_029 sample image and its tree boxes from the deepforest wheel.

Downloads the deepforest wheel from PyPI (``pip download --no-deps``), or uses
one given with ``--wheel``, and writes next to this script:

* ``OSBS_029.tif``         byte-identical copy of ``deepforest/data/OSBS_029.tif``
                           (400x400 RGB NEON aerial image, 0.1 m, EPSG:32617)
* ``OSBS_029_trees.gpkg``  layer ``trees``: the boxes of ``deepforest/data/OSBS_029.csv``
                           (pixel coordinates) as map-coordinate polygons, with ``label``
* ``OSBS_029.LICENSE.txt`` provenance: deepforest version, wheel name and sha256, licence

Run:  python sample_data/fetch_osbs.py [--wheel PATH] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyogrio
import rasterio
from shapely import affinity, box

IMAGE = "deepforest/data/OSBS_029.tif"
BOXES = "deepforest/data/OSBS_029.csv"


def download_wheel(dest: str) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "-d",
        dest,
        "deepforest",
    ]
    subprocess.run(cmd, check=True)
    return next(Path(dest).glob("deepforest-*.whl"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", type=Path, help="already downloaded deepforest wheel")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_wheel(tmp)
        wheel_bytes = wheel.read_bytes()
    sha256 = hashlib.sha256(wheel_bytes).hexdigest()

    with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as zf:
        names = zf.namelist()
        tif_bytes = zf.read(IMAGE)
        boxes = pd.read_csv(zf.open(BOXES))
        dist_info = next(n.split("/")[0] for n in names if ".dist-info/" in n)
        version = dist_info.removeprefix("deepforest-").removesuffix(".dist-info")
        licence_files = [
            n
            for n in names
            if n.startswith(dist_info) and Path(n).name.upper().startswith("LICEN")
        ]
        licence_text = (
            zf.read(licence_files[0]).decode()
            if licence_files
            else "(no LICENSE in wheel)"
        )

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    tif_path = out / "OSBS_029.tif"
    tif_path.write_bytes(tif_bytes)
    assert tif_path.read_bytes() == tif_bytes

    with rasterio.open(tif_path) as src:
        if src.crs is None or src.transform.is_identity:
            sys.exit(
                f"{IMAGE} has no georeferencing (crs={src.crs}, transform={src.transform})"
            )
        crs, t = src.crs, src.transform
        print(
            f"raster: {src.width}x{src.height}x{src.count} {src.dtypes[0]} "
            f"crs={crs.to_string()} nodata={src.nodata}\n{t}"
        )

    # Pixel (col, row) box edges -> map coordinates through the raster's affine.
    matrix = [t.a, t.b, t.d, t.e, t.xoff, t.yoff]
    geoms = [
        affinity.affine_transform(box(r.xmin, r.ymin, r.xmax, r.ymax), matrix)
        for r in boxes.itertuples()
    ]
    trees = gpd.GeoDataFrame({"label": boxes["label"]}, geometry=geoms, crs=crs)
    gpkg_path = out / "OSBS_029_trees.gpkg"
    gpkg_path.unlink(missing_ok=True)
    trees.to_file(gpkg_path, layer="trees", driver="GPKG")

    check = pyogrio.read_dataframe(gpkg_path, layer="trees")
    assert len(check) == len(boxes) and check.crs == crs, (len(check), check.crs)
    print(
        f"trees: {len(check)} boxes, labels {check['label'].value_counts().to_dict()}"
    )

    (out / "OSBS_029.LICENSE.txt").write_text(
        f"""OSBS_029 sample data (OSBS_029.tif, OSBS_029_trees.gpkg)
==========================================================

Source: deepforest {version} wheel from PyPI
  wheel:  {wheel.name}
  sha256: {sha256}
  files:  {IMAGE} (copied byte for byte), {BOXES} (boxes, converted to map polygons)

Imagery: NEON (National Ecological Observatory Network) airborne RGB orthophoto of
Ordway-Swisher Biological Station (OSBS), Florida. The deepforest wheel says nothing
about the image's origin or licence; see the NEON data usage policy
(https://www.neonscience.org/data-samples/data-policies-citation): NEON data were
released under CC0 1.0, and NEON announced a move to CC BY 4.0 in 2026. Attribute NEON.
Tree box annotations: the deepforest authors (Weinstein et al., weecology/DeepForest),
distributed with deepforest under the MIT licence below.

Licence of deepforest ({licence_files[0] if licence_files else "n/a"}):

{licence_text}"""
    )
    print(f"wrote {tif_path}, {gpkg_path}, {out / 'OSBS_029.LICENSE.txt'}")


if __name__ == "__main__":
    main()
