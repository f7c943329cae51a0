"""Array jobs: `segment --shard K/N` and `geoseg combine`."""

import json
import shutil

import geopandas as gpd
import pyogrio
import pytest
import shapely
from conftest import one_line_error, run

from geoseg.errors import UsageError
from geoseg.io.export import read_provenance
from geoseg.io.inputs import list_inputs
from geoseg.io.sources import output_names, unique_names
from geoseg.run import shards
from geoseg.testing import make_scene

# two c.tif and two d.tif in subfolders: their names (2020/c.tif ...) are the collection's, in every shard
FILES = ["a.tif", "b.tif", "2020/c.tif", "2021/c.tif", "2020/d.tif", "deep/er/d.tif", "f.tif"]


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "in"
    for k, name in enumerate(FILES):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        make_scene(d / name, size=300, seed=10 + k, n_objects=12)
    return d


def segment(*extra):
    return run("segment", *extra, "-p", "red", "-p", "blue", "--backend", "colors", "--tile-size", "256",
               "--overlap", "32", "-q")


def outputs_under(folder):
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*.gpkg")}


def by_content(gdf):
    """The objects, order aside: (source, label, score, geometry)."""
    return sorted(zip(gdf["source"], gdf["label"], gdf["score"].round(6), shapely.to_wkb(gdf.geometry.values)))


def test_shards_cover_every_input_once_and_combine_matches_one_run(folder, tmp_path):
    one = tmp_path / "all.gpkg"
    r = segment(folder, "-o", one)
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    out.mkdir()
    seen: list[str] = []
    names = unique_names(list_inputs(folder))  # the whole collection's: 2020/c.tif, er/d.tif
    for k in (1, 2, 3):
        before = outputs_under(out)
        r = segment(folder, "--shard", f"{k}/3", "--output-dir", out)
        assert r.exit_code == 0, r.output
        new = outputs_under(out) - before
        assert new == {o for n, o in zip(names, output_names(names, ".gpkg")) if shards.member(n, (k, 3))}
        seen += new
        assert not list(out.glob(".geoseg-work*"))  # each shard's own work folder, removed when done
    assert sorted(seen) == sorted(output_names(names, ".gpkg"))

    # the combined file lies inside OUT_DIR: never read back as an input, also when replaced
    combined = out / "all.gpkg"
    for extra in ([], ["--overwrite"]):
        r = run("combine", out, "-o", combined, *extra)
        assert r.exit_code == 0, r.output
        assert f"from {len(FILES)} files" in r.output
    whole, parts = pyogrio.read_dataframe(one), pyogrio.read_dataframe(combined)
    assert len(whole) > 50 and set(parts["source"]) == set(names)
    assert by_content(parts) == by_content(whole)
    assert list(parts["id"]) == list(range(1, len(parts) + 1))
    assert parts.crs == whole.crs
    prov = read_provenance(combined)
    assert prov["combined_from"] == sorted(output_names(names, ".gpkg"))
    assert prov["prompts"] == ["red", "blue"] and sorted(prov["sources"]) == sorted(names)


def test_shard_membership_stays_when_a_file_is_added(folder):
    def membership():
        paths = list_inputs(folder)
        names = unique_names(paths)
        return {n: k for k in (1, 2, 3) for n in shards.select(paths, names, (k, 3))[1]}

    before = membership()
    assert len(before) == len(FILES) and len(set(before.values())) > 1
    make_scene(folder / "2021" / "g.tif", size=64, seed=99, n_objects=1)
    after = membership()
    assert set(after) == set(before) | {"g.tif"}
    assert {n: after[n] for n in before} == before
    # not the absolute path: the same shards on another machine, where the folder lies elsewhere
    assert all(shards.member(n, (k, 3)) for n, k in after.items())


def test_a_shard_without_inputs_writes_nothing(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    make_scene(folder / "a.tif", size=300, seed=1, n_objects=5)
    empty = next(k for k in range(1, 9) if not shards.member("a.tif", (k, 8)))
    out = tmp_path / "out"
    out.mkdir()
    r = segment(folder, "--shard", f"{empty}/8", "--output-dir", out, "-v")
    assert r.exit_code == 0, r.output
    assert "holds none of the 1 inputs" in r.output
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("shard, extra, words", [
    ("0/3", [], "K must be from 1 to N"),
    ("4/3", [], "K must be from 1 to N"),
    ("1/0", [], "K must be from 1 to N"),
    ("1-3", [], "give K/N"),
    ("1/3", ["-o", "OUT/all.gpkg"], "give --output-dir DIR, not --output"),
    ("1/3", ["--output-dir", "OUT", "--raster-out", "OUT"], "leave out --raster-out"),
])
def test_bad_shards_are_one_line(tmp_path, scene_path, shard, extra, words):
    out = tmp_path / "out"
    out.mkdir()
    extra = [str(e).replace("OUT", str(out)) for e in extra] or ["--output-dir", out]
    line = one_line_error(segment(scene_path, "--shard", shard, *extra))
    assert "--shard" in line and words in line
    assert list(out.iterdir()) == []


def test_combine_refuses_mixed_crss_unless_dst_crs(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    out.mkdir()
    make_scene(folder / "utm17.tif", size=300, seed=1, n_objects=10)
    make_scene(folder / "utm18.tif", size=300, seed=2, n_objects=10, crs="EPSG:32618")
    r = segment(folder, "--output-dir", out, "--format", "parquet")
    assert r.exit_code == 0, r.output
    line = one_line_error(run("combine", out, "-o", tmp_path / "all.fgb"))
    assert "utm18.parquet" in line and "EPSG:32618" in line and "--dst-crs" in line
    assert not (tmp_path / "all.fgb").exists()
    r = run("combine", out, "-o", tmp_path / "all.fgb", "--dst-crs", "EPSG:4326")
    assert r.exit_code == 0, r.output
    gdf = pyogrio.read_dataframe(tmp_path / "all.fgb").sort_values("id")  # FlatGeobuf stores in its index's order
    parts = [gpd.read_parquet(p) for p in sorted(out.glob("*.parquet"))]
    assert len(gdf) == sum(len(p) for p in parts) > 0
    assert gdf.crs.to_epsg() == 4326 and list(gdf["id"]) == list(range(1, len(gdf) + 1))
    assert list(gdf["source"]) == [s for p in parts for s in p["source"]]  # sorted relative path order
    assert shards.combine(out, tmp_path / "chunked.gpkg", dst_crs=4326, chunk=4) == (len(gdf), 2)
    assert by_content(pyogrio.read_dataframe(tmp_path / "chunked.gpkg")) == by_content(gdf)


def test_combine_into_a_geopackage_keeps_its_other_layers(tmp_path, scene_path):
    out = tmp_path / "out"
    out.mkdir()
    assert segment(scene_path, "--output-dir", out).exit_code == 0
    target = tmp_path / "project.gpkg"
    roads = gpd.GeoDataFrame({"name": ["main st"]}, geometry=[shapely.LineString([(0, 0), (1, 1)])], crs=32617)
    pyogrio.write_dataframe(roads, target, layer="roads")
    r = run("combine", out, "-o", target, "--layer", "detections")
    assert r.exit_code == 0, r.output
    assert sorted(pyogrio.list_layers(target)[:, 0]) == ["detections", "roads"]
    line = one_line_error(run("combine", out, "-o", target))
    assert "already has a layer 'detections'" in line and "--overwrite" in line
    assert run("combine", out, "-o", target, "--overwrite").exit_code == 0
    assert pyogrio.read_dataframe(target, layer="roads")["name"].tolist() == ["main st"]
    assert len(pyogrio.read_dataframe(target, layer="detections")) == len(pyogrio.read_dataframe(out / "scene.gpkg"))


def test_combine_needs_a_folder_with_outputs(tmp_path):
    (tmp_path / "empty" / ".geoseg-work-1-of-2").mkdir(parents=True)
    (tmp_path / "empty" / ".geoseg-work-1-of-2" / "x.gpkg").write_bytes(b"")  # work folders are skipped
    line = one_line_error(run("combine", tmp_path / "empty", "-o", tmp_path / "all.gpkg"))
    assert "holds no geoseg output" in line
    line = one_line_error(run("combine", tmp_path / "nope", "-o", tmp_path / "all.gpkg"))
    assert "no such folder" in line
    assert not (tmp_path / "all.gpkg").exists()


@pytest.mark.parametrize("fmt", ["geojson", "fgb", "shp"])
def test_combine_reads_every_format_geoseg_writes(tmp_path, fmt):
    folder, out = tmp_path / "in", tmp_path / "out"
    out.mkdir()
    for sub, seed in (("x", 4), ("y", 5)):  # one file name twice: outputs x/a.EXT and y/a.EXT
        (folder / sub).mkdir(parents=True)
        make_scene(folder / sub / "a.tif", size=300, seed=seed, n_objects=10)
    assert segment(folder, "--output-dir", out, "--format", fmt).exit_code == 0
    r = run("combine", out, "-o", out / "all.gpkg")
    assert r.exit_code == 0, r.output
    gdf = pyogrio.read_dataframe(out / "all.gpkg")
    parts = [pyogrio.read_dataframe(out / sub / f"a.{fmt}") for sub in ("x", "y")]
    assert len(gdf) == sum(len(p) for p in parts) > 10
    assert list(gdf["id"]) == list(range(1, len(gdf) + 1))
    assert list(gdf["source"]) == [s for p in parts for s in p["source"]]
    assert set(gdf["source"]) == {"x/a.tif", "y/a.tif"}
    # read in many small chunks: the same file
    assert shards.combine(out, tmp_path / "chunked.gpkg", chunk=3) == (len(gdf), 2)
    assert by_content(pyogrio.read_dataframe(tmp_path / "chunked.gpkg")) == by_content(gdf)
    # a second combined file in OUT_DIR does not read the first one's objects again
    r = run("combine", out, "-o", out / "again.gpkg")
    assert r.exit_code == 0, r.output
    assert "all.gpkg: skipped: it was made by geoseg combine" in r.output
    assert len(pyogrio.read_dataframe(out / "again.gpkg")) == len(gdf)


def test_a_failing_file_keeps_its_shards_own_work_folder(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    out.mkdir()
    for seed, name in enumerate(["a.tif", "b.tif", "c.tif"]):
        make_scene(folder / name, size=300, seed=seed, n_objects=5)
    good = (folder / "a.tif").read_bytes()
    (folder / "broken.tif").write_bytes(good[: len(good) // 3])
    k = next(k for k in (1, 2) if shards.member("broken.tif", (k, 2)))
    assert shards.member("c.tif", (k, 2))  # a shard of several files: the good ones are written
    r = segment(folder, "--shard", f"{k}/2", "--output-dir", out)
    assert r.exit_code == 1, r.output
    assert (out / "c.gpkg").exists() and not (out / "broken.gpkg").exists()
    work = out / f".geoseg-work-{k}-of-2"
    assert work.is_dir() and not (out / ".geoseg-work").exists()
    assert r.output.strip().splitlines()[-1].endswith(f"(work kept in {work})")
    assert run("info", work).exit_code == 0  # `geoseg info` reads it as any work folder


def test_python_runs_a_shard_named_as_the_whole_collection(folder, tmp_path):
    from geoseg.core.segmenter import load_segmenter
    from geoseg.run.engine import LocalEngine
    from geoseg.run.pipeline import run as run_pipeline
    from geoseg.run.settings import Settings

    out = tmp_path / "out"
    out.mkdir()
    settings = Settings.of(["red"], tile_size=256, overlap=32)
    summary = run_pipeline(folder, settings, LocalEngine(load_segmenter("colors")), output_dir=out, shard=(2, 3))
    names = unique_names(list_inputs(folder))
    mine = [n for n in names if shards.member(n, (2, 3))]
    assert sorted(f.source for f in summary.files) == sorted(mine) and "2021/c.tif" in mine
    assert outputs_under(out) == set(output_names(mine, ".gpkg"))
    with pytest.raises(UsageError, match="output_dir="):
        run_pipeline(folder, settings, LocalEngine(load_segmenter("colors")), output=tmp_path / "x.gpkg",
                     shard=(1, 3))


def test_combine_refuses_a_missing_shard_mixed_settings_and_a_failed_file(folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for k in (1, 2):
        assert segment(folder, "--shard", f"{k}/3", "--output-dir", out).exit_code == 0
    assert sorted(p.name for p in out.glob(".geoseg-shard-*")) == [".geoseg-shard-1-of-3.json",
                                                                     ".geoseg-shard-2-of-3.json"]
    line = one_line_error(run("combine", out, "-o", tmp_path / "all.gpkg"))
    assert line.endswith("shard 3/3 has not finished (2 of 3 have): run it first (--shard 3/3), then combine")
    r = run("segment", folder, "--shard", "3/3", "--output-dir", out, "-p", "red", "-p", "blue", "--backend",
            "colors", "--tile-size", "320", "--overlap", "32", "-q")  # another tiling: other objects
    assert r.exit_code == 0, r.output
    line = one_line_error(run("combine", out, "-o", tmp_path / "all.gpkg"))
    assert "shard 3/3 was made with --tile-size 320, shard 1/3 with --tile-size 256: rerun that shard" in line
    assert not (tmp_path / "all.gpkg").exists()


def test_combine_refuses_a_shard_that_failed_on_a_file(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    out.mkdir()
    for seed, name in enumerate(["a.tif", "c.tif"]):
        make_scene(folder / name, size=300, seed=seed, n_objects=5)
    good = (folder / "a.tif").read_bytes()
    (folder / "broken.tif").write_bytes(good[: len(good) // 3])
    k = next(k for k in (1, 2) if shards.member("broken.tif", (k, 2)))
    for j in (1, 2):
        segment(folder, "--shard", f"{j}/2", "--output-dir", out)
    line = one_line_error(run("combine", out, "-o", tmp_path / "all.gpkg"))
    assert line.endswith(f"shard {k}/2 failed on broken.tif: rerun it (--shard {k}/2), then combine")


def test_combine_refuses_malformed_manifests_and_a_changed_output(folder, tmp_path):
    """A manifest edited by hand or truncated, and a shard's output replaced by a valid file with
    fewer objects or changed in place: one line naming the shard, nothing written."""
    out = tmp_path / "out"
    out.mkdir()
    for k in (1, 2, 3):
        assert segment(folder, "--shard", f"{k}/3", "--output-dir", out).exit_code == 0
    loaded = {k: json.loads((out / f".geoseg-shard-{k}-of-3.json").read_text()) for k in (1, 2, 3)}
    k, m = next((k, m) for k, m in loaded.items() if any(f["output"] for f in m["files"].values()))
    manifest = out / f".geoseg-shard-{k}-of-3.json"
    good = manifest.read_text()
    name, entry = next((n, f) for n, f in m["files"].items() if f["output"])
    assert entry["objects"] > 0 and len(entry["sha256"]) == 64
    broken = [{}, [], None, "x", {**m, "files": None}, {**m, "shard": [k % 3 + 1, 3]}, {**m, "inputs": [1, 2]},
              {**m, "files": {name: {**entry, "objects": "9"}}}, {**m, "files": {name: None}}]
    for bad in broken:
        manifest.write_text(json.dumps(bad))
        line = one_line_error(run("combine", out, "-o", tmp_path / "all.gpkg"))
        assert line.endswith(f"{manifest} is damaged: rerun shard {k}/3 (--shard {k}/3) to write it again"), (bad, line)
    manifest.write_text(good)

    target = out / entry["output"]
    gdf = pyogrio.read_dataframe(target)
    shutil.copy(target, tmp_path / "kept.gpkg")
    target.unlink()
    pyogrio.write_dataframe(gdf.iloc[: len(gdf) - 3], target, layer="detections")  # a valid file, 3 fewer
    line = one_line_error(run("combine", out, "-o", tmp_path / "all.gpkg"))
    assert f"{target} holds {len(gdf) - 3} features but shard {k}/3 wrote {len(gdf)}" in line
    target.unlink()
    gdf.loc[0, "label"] = "tampered"
    pyogrio.write_dataframe(gdf, target, layer="detections")  # as many objects, another content
    line = one_line_error(run("combine", out, "-o", tmp_path / "all.gpkg"))
    assert f"{target} is not the file shard {k}/3 wrote" in line
    assert not (tmp_path / "all.gpkg").exists()
    shutil.copy(tmp_path / "kept.gpkg", target)
    r = run("combine", out, "-o", tmp_path / "all.gpkg")
    assert r.exit_code == 0, r.output
