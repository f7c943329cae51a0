"""Write sample_data/seam_scene.tif: a generated 2048² scene with known truth.

Coloured discs and rectangles everywhere (many across any tile seam), a green
ring larger than a tile, and red squares that touch or sit 1 px apart. The
`colors` test backend finds them exactly, so the scene shows how geoseg merges
across seams:

    python sample_data/make_seam_scene.py
    geoseg segment sample_data/seam_scene.tif -p red -p green -p blue --backend colors -o seams.gpkg
"""

from pathlib import Path

from geoseg.testing import make_scene

if __name__ == "__main__":
    path = make_scene(Path(__file__).with_name("seam_scene.tif"), size=2048, seed=0)
    print(path)
