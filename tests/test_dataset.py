"""geoseg export-dataset: chips, COCO and YOLO labels, spatial splits, errors."""

import csv
import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import yaml
from affine import Affine
from conftest import one_line_error, run
from pycocotools.coco import COCO
from shapely import box

import geoseg
from geoseg.analysis.dataset import export_dataset
from geoseg.analysis.splits import assign_splits, chip_blocks, overlap_guard, parse_split
from geoseg.core.tiling import Window, plan_tiles
from geoseg.testing import draw, rectangle, write_geotiff

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
T = Affine(0.5, 0, 404000.0, 0, -0.5, 3286000.0)  # write_geotiff's default grid: 0.5 m pixels


def px_box(row, col, height, width):
    """The map polygon of a pixel rectangle on grid T."""
    return shapely.affinity.affine_transform(box(col, row, col + width, row + height), T.to_shapely())


@pytest.fixture
def scene(tmp_path):
    """A 256² raster (chips of 128 px: 4 of them, no overlap) with three objects:
    a 20x20 square inside chip (0, 0), a 10x50 bar across the vertical chip edge at col 128
    (30 px left of it, 20 right), a 2x2 speck in chip (128, 128)."""
    objs = [rectangle("red", 1, 10, 10, 20, 20), rectangle("green", 2, 60, 98, 10, 50),
            rectangle("blue", 3, 200, 200, 2, 2)]
    raster = write_geotiff(tmp_path / "scene.tif", draw(256, 256, objs))
    vec = gpd.GeoDataFrame({"label": ["house", "road", "car"]},
                           geometry=[px_box(10, 10, 20, 20), px_box(60, 98, 10, 50), px_box(200, 200, 2, 2)],
                           crs="EPSG:32617")
    path = tmp_path / "objects.gpkg"
    vec.to_file(path)
    return raster, path, vec


def test_coco_loads_and_pieces_are_clipped_and_flagged(scene, tmp_path):
    raster, vec, _ = scene
    out = tmp_path / "ds"
    r = run("export-dataset", raster, vec, "-o", out, "--chip-size", 128, "--block-size", 1, "--split", "0.5,0.5")
    assert r.exit_code == 0, r.output
    anns, cats = [], {}
    for split in ("train", "val"):
        coco = COCO(str(out / "annotations" / f"instances_{split}.json"))
        cats = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
        for a in coco.loadAnns(coco.getAnnIds()):
            img = coco.loadImgs(a["image_id"])[0]
            assert (out / img["file_name"]).is_file()
            assert coco.annToMask(a).sum() == pytest.approx(a["area"], abs=1)
            anns.append((img["col"], img["row"], cats[a["category_id"]], a))
        assert len(set(coco.getAnnIds())) == len(coco.getAnnIds())
    assert sorted(cats.values()) == ["car", "house", "road"]
    by = {(c, r, name): a for c, r, name, a in anns}
    house = by[(0, 0, "house")]
    assert house["area"] == 400 and house["bbox"] == [10, 10, 20, 20] and not house["truncated"]
    left, right = by[(0, 0, "road")], by[(128, 0, "road")]  # the bar cut at col 128: 30 + 20 px wide
    assert (left["area"], right["area"]) == (300, 200) and left["truncated"] and right["truncated"]
    assert right["bbox"] == [0, 60, 20, 10]
    assert by[(128, 128, "car")]["area"] == 4 and len(anns) == 4


def test_min_area_in_pixels_and_skip_empty(scene, tmp_path):
    raster, vec, _ = scene
    s = export_dataset(raster, vec, tmp_path / "a", chip_size=128, block_size=1, split="0.5,0.5", min_area=5)
    assert s.too_small == 1 and sum(s.objects.values()) == 3  # the 4 px car goes
    s = export_dataset(raster, vec, tmp_path / "b", chip_size=128, block_size=1, split="0.5,0.5", min_area=201,
                       skip_empty=True)
    # left: house (400) and the bar's left piece (300); the right piece (200) and the car (4) are too small
    assert sum(s.objects.values()) == 2 and s.too_small == 2
    assert sum(s.chips.values()) == 1 and s.skipped_empty == 3


def test_osbs_polygons_map_back_within_a_pixel(tmp_path):
    """Real data: every COCO polygon, moved back through its chip's transform, is the reference box cut by
    the chip (here exactly: pixel-aligned boxes, nothing simplified)."""
    ref = gpd.read_file(SAMPLE / "OSBS_029_trees.gpkg", layer="trees")
    out = tmp_path / "osbs"
    s = export_dataset(SAMPLE / "OSBS_029.tif", SAMPLE / "OSBS_029_trees.gpkg", out, chip_size=128, overlap=16,
                       block_size=2, split="0.8,0.2", image_format="tif")
    assert s.categories == ["Tree"] and sum(s.chips.values()) > 0
    n = 0
    for split in s.chips:
        coco = COCO(str(out / "annotations" / f"instances_{split}.json"))
        for a in coco.loadAnns(coco.getAnnIds()):
            img = coco.loadImgs(a["image_id"])[0]
            t = Affine(*img["transform"])
            with rasterio.open(out / img["file_name"]) as chip:  # GeoTIFF chips keep their georeferencing
                assert chip.transform.almost_equals(t) and chip.crs.to_epsg() == 32617
            ring = np.asarray(a["segmentation"][0]).reshape(-1, 2)
            got = shapely.affinity.affine_transform(shapely.Polygon(ring), t.to_shapely())
            chip_box = shapely.affinity.affine_transform(box(0, 0, img["width"], img["height"]), t.to_shapely())
            want = ref.geometry[a["source_index"]].intersection(chip_box)
            assert got.hausdorff_distance(want) < 0.1  # one pixel is 0.1 m
            n += 1
    assert n >= 61  # every tree at least once (some in several overlapping chips)


def test_tif_chips_hold_the_source_pixels(scene, tmp_path):
    raster, vec, _ = scene
    export_dataset(raster, vec, tmp_path / "ds", chip_size=128, block_size=1, split="0.5,0.5", image_format="tif")
    chips = json.loads((tmp_path / "ds" / "dataset.json").read_text())["chips"]
    with rasterio.open(raster) as src:
        for c in chips:
            with rasterio.open(tmp_path / "ds" / c["file"]) as chip:
                win = rasterio.windows.Window(c["col"], c["row"], 128, 128)
                assert np.array_equal(chip.read(), src.read(window=win))
                assert chip.transform == src.transform @ Affine.translation(c["col"], c["row"])


def test_yolo_files_parse_and_are_normalised(scene, tmp_path):
    raster, vec, _ = scene
    out = tmp_path / "yolo"
    r = run("export-dataset", raster, vec, "-o", out, "--format", "yolo", "--chip-size", 128, "--block-size", 1,
            "--split", "0.5,0.25,0.25")
    assert r.exit_code == 0, r.output
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == {0: "car", 1: "house", 2: "road"} and data["nc"] == 3
    assert {data["train"], data["val"], data["test"]} == {"images/train", "images/val", "images/test"}
    lines = {}
    for txt in (out / "labels").rglob("*.txt"):
        assert (out / "images" / txt.parent.name / (txt.stem + ".png")).is_file()
        for k, line in enumerate(txt.read_text().splitlines(), 1):
            cls, *xy = line.split()
            xy = np.array(xy, float)
            assert 0 <= int(cls) < 3 and len(xy) % 2 == 0 and len(xy) >= 6
            assert ((xy >= 0) & (xy <= 1)).all()
            lines[(str(txt.relative_to(out)), k)] = (int(cls), xy.reshape(-1, 2) * 128)
    assert len(lines) == 4
    with open(out / "truncated.csv") as f:
        cut = [(row["label_file"], int(row["line"])) for row in csv.DictReader(f)]
    assert len(cut) == 2 and all(lines[c][0] == 2 for c in cut)  # the two pieces of the road
    house = [xy for cls, xy in lines.values() if cls == 1][0]
    assert house.min(axis=0).tolist() == [10, 10] and house.max(axis=0).tolist() == [30, 30]


def test_spatial_splits_share_no_block_or_pixel_and_follow_the_seed():
    windows = [t.window for t in plan_tiles(2000, 2000, 128, 32)]
    blocks = chip_blocks(windows, 4 * 128)
    deal = assign_splits(blocks, (0.7, 0.2, 0.1), seed=1)
    splits = [deal[b] for b in blocks]
    assert set(deal.values()) == {0, 1, 2}
    for b in set(blocks):  # a block's chips all go to one split
        assert len({s for s, bb in zip(splits, blocks) if bb == b}) == 1
    share = np.bincount(splits) / len(splits)
    assert share[0] > share[1] > share[2] > 0
    keep = overlap_guard(windows, splits)
    kept = [(w, s) for w, s, k in zip(windows, splits, keep) if k]
    for w, s in kept:
        assert all(w.intersection(v) is None for v, t in kept if t != s)
    assert not keep.all()  # chips overlap by 32 px: some at block edges had to go
    assert assign_splits(blocks, (0.7, 0.2, 0.1), seed=1) == deal
    assert assign_splits(blocks, (0.7, 0.2, 0.1), seed=2) != deal


def test_chip_goes_to_the_block_holding_its_centre():
    # 256 px blocks: a 128 px chip at (0, 200) has its centre at (64, 264) -> block (0, 1); at (300, 0) -> (364, 64)
    assert chip_blocks([Window(0, 200, 128, 128), Window(300, 0, 128, 128)], 256) == [(0, 1), (1, 0)]
    assert parse_split("0.7,0.2,0.1") == (0.7, 0.2, 0.1)


def test_nodata_chips_skipped_and_vector_reprojected(tmp_path):
    rgb = draw(256, 256, [rectangle("red", 1, 10, 10, 20, 20)])
    rgb[:, 128:] = 255  # the right half is nodata
    raster = write_geotiff(tmp_path / "half.tif", rgb, nodata=255)
    vec = gpd.GeoDataFrame({"kind": ["a"]}, geometry=[px_box(10, 10, 20, 20)], crs="EPSG:32617").to_crs(4326)
    s = export_dataset(raster, vec, tmp_path / "ds", chip_size=128, block_size=1, split="0.5,0.5",
                       label_field="kind")
    assert s.skipped_nodata == 2 and sum(s.chips.values()) == 2 and s.categories == ["a"]
    anns = [json.loads(p.read_text())["annotations"] for p in (tmp_path / "ds" / "annotations").glob("*.json")]
    (a,) = [a for group in anns for a in group]
    assert a["area"] == pytest.approx(400, abs=0.01) and a["bbox"] == pytest.approx([10, 10, 20, 20], abs=0.01)


def test_geoseg_output_exports(scene, tmp_path):
    import geoseg
    from geoseg.testing import ColorSegmenter

    raster, _, _ = scene
    gdf = geoseg.segment(raster, ["red", "green"], segmenter=ColorSegmenter(), tile_size=128, overlap=16,
                         output=tmp_path / "found.gpkg")
    s = export_dataset(raster, tmp_path / "found.gpkg", tmp_path / "ds", chip_size=128, block_size=1,
                       split="0.5,0.5")
    assert len(gdf) == 2 and s.categories == ["green", "red"] and sum(s.objects.values()) == 3


def test_errors_are_one_line(scene, tmp_path):
    raster, vec, _ = scene
    base = ["--chip-size", 128, "--block-size", 1]
    assert "no such file" in one_line_error(run("export-dataset", tmp_path / "no.tif", vec, "-o", tmp_path / "x"))
    assert "no such file" in one_line_error(run("export-dataset", raster, tmp_path / "no.gpkg", "-o", tmp_path / "x"))
    assert "--split" in one_line_error(run("export-dataset", raster, vec, "-o", tmp_path / "x", "--split", "0.8,0.3"))
    assert "--label-field" in one_line_error(run("export-dataset", raster, vec, "-o", tmp_path / "x",
                                                 "--label-field", "kind"))
    assert "--overlap" in one_line_error(run("export-dataset", raster, vec, "-o", tmp_path / "x", "--overlap", 600))
    assert "--block-size" in one_line_error(run("export-dataset", raster, vec, "-o", tmp_path / "x", "--block-size", 8))
    assert not (tmp_path / "x").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert "not empty" in one_line_error(run("export-dataset", raster, vec, "-o", busy, *base))
    assert run("export-dataset", raster, vec, "-o", tmp_path / "ds", *base).exit_code == 0
    assert "--overwrite" in one_line_error(run("export-dataset", raster, vec, "-o", tmp_path / "ds", *base))
    assert run("export-dataset", raster, vec, "-o", tmp_path / "ds", *base, "--overwrite").exit_code == 0
    nocrs = tmp_path / "nocrs.gpkg"
    gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1)]).to_file(nocrs)
    assert "no CRS" in one_line_error(run("export-dataset", raster, nocrs, "-o", tmp_path / "y", *base))
    elsewhere = tmp_path / "elsewhere.geojson"  # lon/lat 0..1: far from UTM 17N, even out of its domain
    gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1), box(-81, 29, -80.9, 29.1)], crs=4326).to_file(elsewhere)
    assert "no object lies over" in one_line_error(run("export-dataset", raster, elsewhere, "-o", tmp_path / "y",
                                                       *base))
    points = tmp_path / "points.gpkg"
    gpd.GeoDataFrame(geometry=[shapely.Point(404010, 3285990)], crs=32617).to_file(points)
    assert "Point" in one_line_error(run("export-dataset", raster, points, "-o", tmp_path / "y", *base))
    assert "--image-format" in one_line_error(run("export-dataset", raster, vec, "-o", tmp_path / "y",
                                                  "--image-format", "jpg"))


def _ultralytics_dirs(yaml_path):
    """The image folders as ultralytics' check_det_dataset resolves them: against `path`, or, without
    it, the yaml's own folder."""
    data = yaml.safe_load(yaml_path.read_text())
    root = Path(data.get("path") or yaml_path.parent)
    return {s: (root / data[s]).resolve() for s in ("train", "val", "test") if data.get(s)}


def test_yolo_dataset_still_resolves_after_the_folder_is_moved(scene, tmp_path):
    raster, vec, _ = scene
    out = tmp_path / "yolo"
    export_dataset(raster, vec, out, fmt="yolo", chip_size=128, block_size=1, split="0.5,0.5")
    text = (out / "data.yaml").read_text()
    assert str(tmp_path) not in text and "path:" not in text  # no absolute path, no root key to go stale
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    out.rename(moved)
    dirs = _ultralytics_dirs(moved / "data.yaml")
    assert set(dirs) == {"train", "val"}
    for split, folder in dirs.items():
        assert folder == moved / "images" / split
        images = sorted(folder.glob("*.png"))
        assert images
        for image in images:  # and each image finds its label file the YOLO way (images/ -> labels/)
            assert (moved / "labels" / split / (image.stem + ".txt")).is_file()


def test_default_options_work_on_the_bundled_samples(tmp_path):
    """Both samples are smaller than two default blocks (4 chips of 512 px): OSBS (400 px) is even smaller
    than one chip. Alone or together, the defaults give a dataset."""
    import geoseg

    osbs, seam = SAMPLE / "OSBS_029.tif", SAMPLE / "seam_scene.tif"
    trees = SAMPLE / "OSBS_029_trees.gpkg"
    with pytest.warns(geoseg.GeosegWarning, match="smaller than chip_size=512"):
        with pytest.warns(geoseg.GeosegWarning, match="val stays empty"):
            s = export_dataset(osbs, trees, tmp_path / "osbs")
    assert s.chips == {"train": 1, "val": 0} and s.objects["train"] == 61
    with rasterio.open(tmp_path / "osbs" / "images" / "train" / "OSBS_029_r0_c0.png") as chip:
        assert (chip.width, chip.height) == (512, 512)
        assert not chip.read()[:, 400:, :].any() and chip.read()[:, :400, :400].any()  # padded below and right
    shapes = tmp_path / "shapes.gpkg"
    geoseg.segment(seam, ["red", "green", "blue"], segmenter="colors", output=shapes)
    r = run("export-dataset", seam, shapes, "-o", tmp_path / "seam")
    assert r.exit_code == 0, r.output
    seam_manifest = json.loads((tmp_path / "seam" / "dataset.json").read_text())
    assert seam_manifest["block_size_chips"] == 2  # 4 chips of 512 px would be one block: halved
    assert {c["split"] for c in seam_manifest["chips"]} == {"train", "val"} and len(seam_manifest["chips"]) == 16
    # both in one dataset, one given through a folder: two blocks, one per raster
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "seam_scene.tif").symlink_to(seam)
    r = run("export-dataset", osbs, folder, trees, "-o", tmp_path / "both", "--format", "yolo")
    assert r.exit_code == 0, r.output
    assert "overlap" in r.output  # OSBS lies inside the seam scene's footprint: the same trees in two splits
    manifest = json.loads((tmp_path / "both" / "dataset.json").read_text())
    assert [m["name"] for m in manifest["rasters"]] == ["OSBS_029", "seam_scene"]
    by_source = {}
    for c in manifest["chips"]:
        assert Path(c["file"]).name.startswith(c["source"] + "_r")
        by_source.setdefault(c["source"], set()).add(c["split"])
    assert by_source["OSBS_029"] != by_source["seam_scene"] and all(len(v) == 1 for v in by_source.values())
    assert sum(c["objects"] for c in manifest["chips"]) == 2 * 61  # the reference trees are on both rasters


def test_rasters_of_one_name_give_chips_of_different_names(scene, tmp_path):
    raster, vec, _ = scene
    for year in ("2020", "2021"):
        (tmp_path / year).mkdir()
        shutil.copy(raster, tmp_path / year / "scene.tif")  # two dates of one place, say
    out = tmp_path / "ds"
    s = export_dataset([tmp_path / "2020", tmp_path / "2021"], vec, out, chip_size=128, block_size=1)
    files = [c["file"] for c in json.loads((out / "dataset.json").read_text())["chips"]]
    assert len(files) == len(set(files)) == 8 and sum(s.chips.values()) == 8
    assert {Path(f).name.split("_r")[0] for f in files} == {"2020_scene", "2021_scene"}
    coco = [json.loads(p.read_text()) for p in (out / "annotations").glob("*.json")]
    assert {i["source"] for c in coco for i in c["images"]} == {"2020_scene", "2021_scene"}
    assert sum(len(c["annotations"]) for c in coco) == 2 * 4  # each object in each copy (the bar in two pieces)


@pytest.mark.parametrize("crs", ["EPSG:32617", "EPSG:4326"])
def test_the_shared_ground_warning_is_for_overlap_not_for_a_shared_edge(tmp_path, crs):
    """Blocks cut side by side from one raster (as `distill` cuts its sample) share an edge, not ground:
    no warning (there was one, from their lon/lat bounding boxes). Crops that overlap still warn."""
    import warnings as w

    from geoseg.errors import GeosegWarning
    from geoseg.testing import make_scene

    full = make_scene(tmp_path / "full.tif", size=256, seed=2)
    if crs != "EPSG:32617":  # in degrees, as a lon/lat orthophoto would be
        from rasterio.warp import calculate_default_transform, reproject

        with rasterio.open(full) as src:
            t, wd, ht = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds)
            data = np.zeros((3, ht, wd), np.uint8)
            reproject(src.read(), data, src_transform=src.transform, src_crs=src.crs, dst_transform=t, dst_crs=crs)
        full = write_geotiff(tmp_path / "full-lonlat.tif", np.moveaxis(data, 0, -1), crs=crs, transform=t)
    with rasterio.open(full) as src:
        data, t, height = np.moveaxis(src.read(), 0, -1), src.transform, src.height
    half = height // 2
    pieces = {"top": (0, half), "bottom": (half, height), "lower": (half - 20, height)}
    paths = {}
    for name, (r0, r1) in pieces.items():
        paths[name] = write_geotiff(tmp_path / f"{name}.tif", data[r0:r1], crs=crs,
                                    transform=t @ Affine.translation(0, r0))
    labels = tmp_path / "labels.gpkg"
    geoseg.segment(full, ["red", "green", "blue"], segmenter="colors", output=labels, tile_size=128, overlap=16)
    for pair, warned in [(("top", "bottom"), False), (("top", "lower"), True)]:
        with w.catch_warnings(record=True) as seen:
            w.simplefilter("always")
            export_dataset([paths[p] for p in pair], labels, tmp_path / f"ds-{'-'.join(pair)}", fmt="yolo",
                           chip_size=64, block_size=1, split="0.5,0.5")
        shared = [x for x in seen if issubclass(x.category, GeosegWarning) and "overlap" in str(x.message)]
        assert bool(shared) == warned, [str(x.message) for x in shared]


def test_a_killed_export_is_cleaned_by_the_next_and_nothing_else(scene, tmp_path):
    """The hidden build a dead export left (this host, its process gone) goes; one of a live process,
    of another host, or a folder geoseg did not mark, stays. Names with glob characters too."""
    import os
    import socket
    import subprocess
    import sys

    raster, vec, _ = scene
    out = tmp_path / "ds[1]"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    host = socket.gethostname()
    builds = {dead: host, str(os.getppid()): host, "1": "another-host"}
    for pid, where in builds.items():
        folder = tmp_path / f".ds[1].{pid}.tmp"
        folder.mkdir()
        (folder / ".geoseg-building.json").write_text(json.dumps({"pid": int(pid), "host": where}))
    mine = tmp_path / ".ds[1].7.tmp"  # not marked as a build: not geoseg's to remove
    mine.mkdir()
    export_dataset(raster, vec, out, chip_size=128, block_size=1)
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".ds"))
    assert left == sorted([f".ds[1].{os.getppid()}.tmp", ".ds[1].1.tmp", ".ds[1].7.tmp"])
    assert (out / "dataset.json").is_file() and (out / ".geoseg-written.json").is_file()


def test_a_file_put_in_while_overwriting_keeps_both(scene, tmp_path, monkeypatch):
    """A file the user saves into the old folder while the new one is built: the old folder is kept with
    it, and the new one beside it, named in one line."""
    import geoseg.analysis.dataset as dataset_module
    from geoseg.errors import OutputError

    raster, vec, _ = scene
    out = tmp_path / "ds"
    export_dataset(raster, vec, out, chip_size=128, block_size=1)
    write_labels = dataset_module._write_labels

    def meanwhile(*args, **kwargs):
        (out / "notes.txt").write_text("saved while it ran")
        return write_labels(*args, **kwargs)

    monkeypatch.setattr(dataset_module, "_write_labels", meanwhile)
    with pytest.raises(OutputError, match="notes.txt") as e:
        export_dataset(raster, vec, out, chip_size=128, block_size=1, overwrite=True)
    new = next(tmp_path.glob("ds.new-*"))
    assert str(new) in str(e.value) and (new / "dataset.json").is_file()
    assert (out / "notes.txt").read_text() == "saved while it ran" and (out / "dataset.json").is_file()
