"""Object storage in and out, against a real S3-compatible server (moto in
server mode) on 127.0.0.1: bucket prefixes listed as folders and read through
GDAL's /vsis3/, outputs written locally then uploaded whole, reruns skipping
what the bucket holds, credentials kept out of every output."""

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import boto3
import pyogrio
import pytest
from conftest import one_line_error, run

from geoseg.errors import RasterError, RunError
from geoseg.io import buckets as cloud
from geoseg.io.export import read_provenance
from geoseg.io.inputs import list_inputs
from geoseg.io.sources import RASTER_SUFFIXES, SIDECARS, unique_names
from geoseg.run.engine import LocalEngine
from geoseg.run.pipeline import run as run_pipeline
from geoseg.run.settings import Settings
from geoseg.run.workdir import default_work_dir
from geoseg.testing import CountingSegmenter, make_scene

SECRET = "geoseg-fake-secret-4b1d9e"
KEY_ID = "AKIAGEOSEGTEST"
COLORS = ["--backend", "colors", "--tile-size", "256", "--overlap", "32", "-q", "-p", "red", "-p", "green",
          "-p", "blue"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server in a child process on a free port; its endpoint URL."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("moto server exited") from None
                time.sleep(0.05)
        else:
            raise RuntimeError("moto server did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3(s3_server, monkeypatch, tmp_path):
    """The environment a batch job has: fake credentials, GDAL's endpoint
    variables (also used by geoseg's own requests), the command run in tmp_path.
    A boto3 client to the server, to set up and inspect buckets."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_S3_ENDPOINT", s3_server.split("://")[1])
    monkeypatch.setenv("AWS_HTTPS", "NO")
    monkeypatch.setenv("AWS_VIRTUAL_HOSTING", "FALSE")
    monkeypatch.chdir(tmp_path)
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id=KEY_ID,
                          aws_secret_access_key=SECRET)
    for bucket in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:  # every test starts afresh
        for o in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            client.delete_object(Bucket=bucket, Key=o["Key"])
        client.delete_bucket(Bucket=bucket)
    client.create_bucket(Bucket="src")
    client.create_bucket(Bucket="dst")
    return client


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    return [make_scene(folder / "a.tif", size=600, seed=1), make_scene(folder / "b.tif", size=500, seed=2)]


def _upload_scenes(client, scenes, prefix="orthos/2024/"):
    for path in scenes:
        client.upload_file(path, "src", prefix + Path(path).name)
    client.put_object(Bucket="src", Key=prefix + "README.txt", Body=b"not a raster")
    client.put_object(Bucket="src", Key=prefix + ".staging/c.tif", Body=b"hidden: left out")


def _objects(gdf):
    return sorted(zip(gdf["source"], gdf["label"], gdf.geometry.normalize().to_wkb()))


def _download(client, key, path, bucket="dst"):
    client.download_file(bucket, key, str(path))
    return path


def test_prefix_lists_as_gdal_paths(s3, scenes):
    _upload_scenes(s3, scenes)
    paths = list_inputs("s3://src/orthos/")
    assert paths == ["/vsis3/src/orthos/2024/a.tif", "/vsis3/src/orthos/2024/b.tif"]
    assert unique_names(paths) == ["a.tif", "b.tif"]
    assert list_inputs("s3://src/orthos/2024/a.tif") == ["/vsis3/src/orthos/2024/a.tif"]
    with pytest.raises(RasterError, match="holds no raster"):
        list_inputs("s3://src/elsewhere/")
    with pytest.raises(RasterError, match="cannot reach the bucket"):
        list_inputs("s3://no-such-bucket/x/")


def test_bucket_in_and_out_end_to_end(s3, scenes, tmp_path):
    """An input prefix and an output object, through the CLI; the result is the
    local run's, the work folder was local and is gone, no secret anywhere."""
    _upload_scenes(s3, scenes)
    local = tmp_path / "local.gpkg"
    assert run("segment", *scenes, *COLORS, "-o", local).exit_code == 0
    log_file = tmp_path / "run.log"
    result = run("segment", "s3://src/orthos/", *COLORS, "-o", "s3://dst/results/buildings.gpkg",
                 "--log-file", log_file)
    assert result.exit_code == 0, result.output
    assert "s3://dst/results/buildings.gpkg" in result.output
    got = _download(s3, "results/buildings.gpkg", tmp_path / "got.gpkg")
    want, have = pyogrio.read_dataframe(local), pyogrio.read_dataframe(got)
    assert len(have) > 20 and _objects(have) == _objects(want)
    assert read_provenance(got)["sources"] == ["a.tif", "b.tif"]
    assert pyogrio.read_info("/vsis3/dst/results/buildings.gpkg")["features"] == len(want)  # GDAL reads it back
    assert not list(tmp_path.glob(".geoseg-work-*")), "the local work folder and stand-ins are removed"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="dst")["Contents"]]
    assert keys == ["results/buildings.gpkg"]  # no temporary object, no work folder in the bucket
    for path in [got, log_file]:
        assert SECRET.encode() not in path.read_bytes() and KEY_ID.encode() not in path.read_bytes(), path
    assert SECRET not in result.output


def test_output_dir_rerun_skips_what_the_bucket_holds(s3, scenes, tmp_path):
    _upload_scenes(s3, scenes)
    settings = Settings.of(["red", "green", "blue"], tile_size=256, overlap=32)
    seg = CountingSegmenter()
    summary = run_pipeline("s3://src/orthos/", settings, LocalEngine(seg), output_dir="s3://dst/per-file/",
                           fmt="fgb")
    assert [f.output for f in summary.files] == ["s3://dst/per-file/a.fgb", "s3://dst/per-file/b.fgb"]
    listing = {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket="dst")["Contents"]}
    assert sorted(listing) == ["per-file/a.fgb", "per-file/a.fgb.geoseg.json", "per-file/b.fgb",
                               "per-file/b.fgb.geoseg.json"]
    counts = [f.objects for f in summary.files]
    s3.delete_object(Bucket="dst", Key="per-file/b.fgb")  # as if the job died before uploading b
    tiles = seg.tiles
    again = run_pipeline("s3://src/orthos/", settings, LocalEngine(seg), output_dir="s3://dst/per-file/", fmt="fgb")
    assert [(f.source, f.reused, f.objects) for f in again.files] == [("a.tif", True, counts[0]),
                                                                     ("b.tif", False, counts[1])]
    assert tiles < seg.tiles < 2 * tiles  # only b was segmented again
    after = {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket="dst")["Contents"]}
    assert after["per-file/a.fgb"] == listing["per-file/a.fgb"]  # not written again
    # a shard's run: the work folder is local and named after the shard
    assert not list(tmp_path.glob(".geoseg-work-*"))


class _Stopped(CountingSegmenter):
    """Stops the run as a signal would, once given more than `after` tiles."""

    def __init__(self, after):
        super().__init__()
        self.after = after

    def segment(self, tiles, prompts):
        if self.tiles + len(tiles) > self.after:
            raise KeyboardInterrupt
        return super().segment(tiles, prompts)


def test_each_output_is_uploaded_as_soon_as_written(s3, scenes):
    """A job stopped part way (preempted: no summary, no cleanup) has uploaded
    the files it finished: a rerun, on any machine, does only the rest."""
    _upload_scenes(s3, scenes)
    settings = Settings.of(["red", "green", "blue"], tile_size=256, overlap=32)
    with pytest.raises(KeyboardInterrupt):  # a.tif is 9 tiles: stopped in b.tif
        run_pipeline("s3://src/orthos/", settings, LocalEngine(_Stopped(after=9)), output_dir="s3://dst/p/")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="dst")["Contents"]] == ["p/a.gpkg"]
    seg = CountingSegmenter()
    again = run_pipeline("s3://src/orthos/", settings, LocalEngine(seg), output_dir="s3://dst/p/")
    assert [(f.state, f.reused) for f in again.files] == [("done", True), ("done", False)]
    assert seg.tiles == 9  # b only
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket="dst")["Contents"]) == ["p/a.gpkg", "p/b.gpkg"]


def test_array_job_shards_then_combine_in_the_bucket(s3, scenes, tmp_path):
    """The batch workflow: N shards each write their part to one prefix (a
    retried shard skips what is there), then combine makes one object."""
    _upload_scenes(s3, scenes)
    for k in (1, 2):
        shard = run("segment", "s3://src/orthos/", *COLORS, "--output-dir", "s3://dst/o/", "--shard", f"{k}/2")
        assert shard.exit_code == 0, shard.output
    again = run("segment", "s3://src/orthos/", *COLORS, "--output-dir", "s3://dst/o/", "--shard", "1/2")
    assert again.exit_code == 0 and "(done before)" in again.output, again.output
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="dst")["Contents"])
    assert keys == ["o/.geoseg-shard-1-of-2.json", "o/.geoseg-shard-2-of-2.json", "o/a.gpkg", "o/b.gpkg"]
    combined = run("combine", "s3://dst/o/", "-o", "s3://dst/all.gpkg")
    assert combined.exit_code == 0, combined.output
    assert run("segment", *scenes, *COLORS, "-o", tmp_path / "local.gpkg").exit_code == 0
    want = pyogrio.read_dataframe(tmp_path / "local.gpkg")
    have = pyogrio.read_dataframe(_download(s3, "all.gpkg", tmp_path / "all.gpkg"))
    assert _objects(have) == _objects(want) and list(have["id"]) == list(range(1, len(have) + 1))
    again = run("combine", "s3://dst/o/", "-o", "s3://dst/all.gpkg")  # never reads its own output
    assert again.exit_code == 2 and "already has a layer 'detections'" in again.output
    assert not list(tmp_path.glob(".geoseg-*")), "no local leftovers"


def test_bucket_shards_write_manifests_that_combine_checks(s3, scenes, tmp_path):
    """Shards writing to a bucket put their manifest beside their outputs (a shard's object count and
    SHA-256 of each): combine refuses a missing shard and an output replaced by another file."""
    _upload_scenes(s3, scenes)
    assert run("segment", "s3://src/orthos/", *COLORS, "--output-dir", "s3://dst/m/", "--shard", "1/2").exit_code == 0
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="dst", Prefix="m/")["Contents"])
    assert "m/.geoseg-shard-1-of-2.json" in keys
    line = one_line_error(run("combine", "s3://dst/m/", "-o", tmp_path / "all.gpkg"))
    assert "shard 2/2 has not finished (1 of 2 have)" in line
    assert run("segment", "s3://src/orthos/", *COLORS, "--output-dir", "s3://dst/m/", "--shard", "2/2").exit_code == 0
    manifests = [json.loads(s3.get_object(Bucket="dst", Key=f"m/.geoseg-shard-{k}-of-2.json")["Body"].read())
                 for k in (1, 2)]
    entries = [f for m in manifests for f in m["files"].values() if f["output"]]
    assert len(entries) == 2 and all(f["objects"] > 0 and len(f["sha256"]) == 64 for f in entries)
    assert run("combine", "s3://dst/m/", "-o", tmp_path / "all.gpkg").exit_code == 0
    victim = entries[0]["output"]  # replaced by a valid GeoPackage with fewer objects
    gdf = pyogrio.read_dataframe(_download(s3, f"m/{victim}", tmp_path / "victim.gpkg"))
    pyogrio.write_dataframe(gdf.iloc[:-2], tmp_path / "fewer.gpkg", layer="detections")
    s3.put_object(Bucket="dst", Key=f"m/{victim}", Body=(tmp_path / "fewer.gpkg").read_bytes())
    line = one_line_error(run("combine", "s3://dst/m/", "-o", tmp_path / "again.gpkg"))
    assert f"holds {len(gdf) - 2} features but shard" in line and not (tmp_path / "again.gpkg").exists()


def test_existing_object_refused_before_the_model(s3, tmp_path, scene_path):
    s3.put_object(Bucket="dst", Key="x.fgb", Body=b"someone's data")
    err = one_line_error(run("segment", scene_path, "-p", "red", "--backend", "colors",
                             "-o", "s3://dst/x.fgb"))
    assert "s3://dst/x.fgb exists" in err and "--overwrite" in err
    assert s3.get_object(Bucket="dst", Key="x.fgb")["Body"].read() == b"someone's data"
    err = one_line_error(run("segment", scene_path, "-p", "red", "-o", "s3://no-such-bucket/x.gpkg"))
    assert "cannot reach the bucket" in err and SECRET not in err
    err = one_line_error(run("segment", scene_path, "-p", "red", "-o", "s3://dst/x.shp"))
    assert "must be one file" in err
    err = one_line_error(run("segment", scene_path, "-p", "red", "-o", "s3://dst/y.gpkg", "--work-dir", "s3://dst/w"))
    assert "--work-dir s3://dst/w: the work folder must be on local disk" in err
    assert not (tmp_path / "s3:").exists()


def test_gpkg_layer_added_beside_the_others(s3, scene_path, tmp_path):
    args = [scene_path, "--backend", "colors", "--tile-size", "512", "--overlap", "64", "-q"]
    assert run("segment", *args, "-p", "red", "-o", "s3://dst/m.gpkg", "--layer", "red").exit_code == 0
    err = one_line_error(run("segment", *args, "-p", "red", "-o", "s3://dst/m.gpkg", "--layer", "red"))
    assert "s3://dst/m.gpkg already has a layer 'red'" in err
    assert not list(tmp_path.glob(".geoseg-*")), "a refused run leaves nothing behind"
    blue = run("segment", *args, "-p", "blue", "-o", "s3://dst/m.gpkg", "--layer", "blue")
    assert blue.exit_code == 0, blue.output
    got = _download(s3, "m.gpkg", tmp_path / "m.gpkg")
    assert sorted(pyogrio.list_layers(got)[:, 0]) == ["blue", "red"]
    assert set(pyogrio.read_dataframe(got, layer="red")["label"]) == {"red"}


class _Racer(CountingSegmenter):
    """Another program writes the output object while the model runs."""

    def __init__(self, client):
        super().__init__()
        self.client = client

    def segment(self, tiles, prompts):
        self.client.put_object(Bucket="dst", Key="race.fgb", Body=b"theirs")
        return super().segment(tiles, prompts)


def test_changed_during_the_run_is_not_replaced(s3, scene_path, tmp_path):
    """The upload is conditional: an object written by someone else after the
    check is kept, and the result stays local for a rerun."""
    settings = Settings.of(["red"], tile_size=512, overlap=64)
    with pytest.raises(RunError, match="written by another program"):
        run_pipeline(scene_path, settings, LocalEngine(_Racer(s3)), output="s3://dst/race.fgb")
    assert s3.get_object(Bucket="dst", Key="race.fgb")["Body"].read() == b"theirs"
    kept = list(tmp_path.glob(".geoseg-work-*.out/race.fgb"))
    assert len(kept) == 1 and pyogrio.read_info(kept[0])["features"] > 0  # kept for the rerun


class _Listing(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_https_folder_listed_from_its_index(tmp_path, scenes):
    """A web server's folder listing: its rasters as /vsicurl/ URLs, subfolders followed."""
    (tmp_path / "2024" / "north").mkdir(parents=True)
    for k, path in enumerate(scenes):
        (tmp_path / "2024" / ("north" if k else "") / Path(path).name).write_bytes(Path(path).read_bytes())
    (tmp_path / "2024" / "notes.txt").write_text("x")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             lambda *a: _Listing(*a, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/2024/"
        found = cloud.expand(base, RASTER_SUFFIXES, SIDECARS)
    finally:
        server.shutdown()
        server.server_close()
    assert found == ["/vsicurl/" + base + "a.tif", "/vsicurl/" + base + "north/b.tif"]


def test_endpoint_from_gdal_variables(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_S3_ENDPOINT", "minio.local:9000")
    monkeypatch.setenv("AWS_HTTPS", "NO")
    assert cloud._endpoint() == "http://minio.local:9000"
    monkeypatch.setenv("AWS_HTTPS", "YES")
    assert cloud._endpoint() == "https://minio.local:9000"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://other:1")
    assert cloud._endpoint() == "http://other:1"
    assert cloud.gdal_path("gs://b/k/x.tif") == "/vsigs/b/k/x.tif"
    assert cloud.gdal_path("az://c/x.tif") == "/vsiaz/c/x.tif"
    assert os.fspath(default_work_dir("s3://b/o/")).startswith(os.getcwd())


def test_prefix_as_a_mosaic(s3, scenes, tmp_path):
    """A bucket prefix of adjacent tiles read as one raster (--mosaic): the
    listing gives GDAL paths the VRT can hold; the same objects as locally."""
    _upload_scenes(s3, scenes)
    assert run("segment", *scenes, *COLORS, "--mosaic", "-o", tmp_path / "local.gpkg").exit_code == 0
    result = run("segment", "s3://src/orthos/", *COLORS, "--mosaic", "-o", tmp_path / "bucket.gpkg")
    assert result.exit_code == 0, result.output
    want, have = (pyogrio.read_dataframe(tmp_path / n) for n in ("local.gpkg", "bucket.gpkg"))
    assert len(have) > 0
    assert sorted(zip(have["label"], have.geometry.normalize().to_wkb())) == \
        sorted(zip(want["label"], want.geometry.normalize().to_wkb()))
