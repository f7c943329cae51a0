"""Remote rasters: read window by window through HTTP range requests, never
downloaded whole, against a Cloud-Optimised GeoTIFF served on 127.0.0.1."""

import os
import urllib.error
import urllib.request

import numpy as np
import pytest
import rasterio
from conftest import one_line_error, run
from rasterio.windows import Window

import geoseg
from geoseg.io.raster import RasterSource, ReadOptions
from geoseg.io.sources import source_name
from geoseg.testing import ColorSegmenter, make_scene
from geoseg.testing.http import RangeServer

PROMPTS = ["red", "green", "blue"]
SIZE = 4096
REGION = Window(col_off=1100, row_off=1700, width=1024, height=1024)  # 1/16 of the scene, not block-aligned


@pytest.fixture(scope="module")
def cog(tmp_path_factory):
    """A 4096² px RGB COG (512 px deflate blocks, overviews) of a generated scene.

    Its grey background is noisy, so blocks do not compress to almost nothing
    and byte counts mean something; objects keep their exact colours.
    """
    folder = tmp_path_factory.mktemp("remote")
    with rasterio.open(make_scene(folder / "plain.tif", size=SIZE, seed=5)) as src:
        rgb, profile = src.read(), src.profile
    os.remove(folder / "plain.tif")
    background = rgb.max(axis=0) < 192
    noise = np.random.default_rng(0).integers(-12, 13, rgb.shape, dtype=np.int16)
    rgb = np.where(background, rgb + noise, rgb).astype(np.uint8)
    path = folder / "scene.tif"
    with rasterio.open(path, "w", driver="COG", width=SIZE, height=SIZE, count=3, dtype="uint8",
                       crs=profile["crs"], transform=profile["transform"], compress="deflate",
                       blocksize=512, overview_resampling="nearest") as dst:
        dst.write(rgb)
    with rasterio.open(path) as ds:
        assert ds.overviews(1) == [2, 4, 8] and ds.block_shapes == [(512, 512)] * 3
    return path


@pytest.fixture(scope="module")
def local_result(cog):
    return geoseg.segment(cog, PROMPTS, segmenter=ColorSegmenter())


def objects(gdf):
    """(label, normalised WKB) of every object, sorted: equal only if the polygons are."""
    return sorted(zip(gdf["label"], gdf.geometry.normalize().to_wkb()))


def block_spans(path, window=None, overview=None):
    """Byte spans [start, end) of the blocks of `path` (of one overview level)
    that intersect `window` (all if None), from the TIFF's own tags."""
    with rasterio.open(path) as ds:
        spans = []
        ovr = {} if overview is None else {"ovr": overview}
        height, width = (ds.height, ds.width) if overview is None else \
            (-(-ds.height // ds.overviews(1)[overview]), -(-ds.width // ds.overviews(1)[overview]))
        for r in range(-(-height // 512)):
            for c in range(-(-width // 512)):
                block = Window(c * 512, r * 512, 512, 512)
                if window is not None and not _overlap(block, window):
                    continue
                off = int(ds.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=1, **ovr))
                size = int(ds.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=1, **ovr))
                spans.append((off, off + size))
        return spans


def merged(spans):
    """Spans [start, end) joined where they touch or overlap."""
    out = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _overlap(a, b):
    return (a.col_off < b.col_off + b.width and b.col_off < a.col_off + a.width
            and a.row_off < b.row_off + b.height and b.row_off < a.row_off + a.height)


def served(server, name="scene.tif"):
    """The requests for `name`, after checking each GET asked for a byte range and got one."""
    requests = [r for r in server.requests if r.path == "/" + name]
    gets = [r for r in requests if r.method == "GET"]
    assert gets and all(r.status == 206 and r.range is not None for r in gets), gets
    return requests


def test_range_server_answers_ranges_and_records_them(tmp_path):
    (tmp_path / "f.bin").write_bytes(bytes(range(256)) * 4)
    with RangeServer(tmp_path) as server:
        ranged = urllib.request.Request(server.url("f.bin"), headers={"Range": "bytes=10-19"})
        with urllib.request.urlopen(ranged, timeout=5) as r:
            assert r.status == 206 and r.headers["Content-Range"] == "bytes 10-19/1024"
            assert r.read() == bytes(range(10, 20))
        suffix = urllib.request.Request(server.url("f.bin"), headers={"Range": "bytes=-4"})
        with urllib.request.urlopen(suffix, timeout=5) as r:
            assert r.read() == bytes(range(252, 256)) and r.headers["Content-Range"] == "bytes 1020-1023/1024"
        head = urllib.request.Request(server.url("f.bin"), method="HEAD")
        with urllib.request.urlopen(head, timeout=5) as r:
            assert r.headers["Content-Length"] == "1024" and r.headers["Accept-Ranges"] == "bytes"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(server.url("missing.bin"), timeout=5)
        assert e.value.code == 404
        assert [(r.method, r.status, r.range, r.bytes_sent) for r in server.requests] == [
            ("GET", 206, (10, 19), 10), ("GET", 206, (1020, 1023), 4), ("HEAD", 200, None, 0),
            ("GET", 404, None, 10)]
        assert server.bytes_sent == 24
    assert len(server.requests) == 4  # still there after the server stopped


@pytest.mark.parametrize("form", ["http", "vsicurl"])
def test_whole_remote_cog_read_in_ranges_gives_the_local_result(cog, local_result, form):
    with RangeServer(cog.parent) as server:
        url = server.url("scene.tif")
        result = geoseg.segment(url if form == "http" else "/vsicurl/" + url, PROMPTS, segmenter=ColorSegmenter())
        requests = served(server)
    assert len(result) == len(local_result) > 100 and objects(result) == objects(local_result)
    assert len([r for r in requests if r.status == 206]) > 10
    # uint8 needs no stretch, so past the opening read of the headers not one
    # byte of the overviews is fetched: less than the file
    overviews = [s for level in range(3) for s in block_spans(cog, overview=level)]
    header, *fetched = sorted(r.range for r in requests if r.range)
    assert header[0] == 0 and header[1] < 64 << 10
    assert not [(a, b) for a, b in fetched for lo, hi in overviews if a < hi and lo <= b]
    size = os.path.getsize(cog)
    assert sum(r.bytes_sent for r in requests) < size
    assert sum(hi - lo for lo, hi in overviews) > size / 5


def region_vrt(path, source, like, window):
    """A VRT of `window` of the 3-band raster `source` (georeferenced as the file
    `like`): GDAL reads only that window of it."""
    with rasterio.open(like) as ds:
        crs, transform = ds.crs.to_wkt(), ds.transform @ rasterio.Affine.translation(window.col_off, window.row_off)
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><ColorInterp>{ci}</ColorInterp><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{source}</SourceFilename><SourceBand>{b}</SourceBand>'
        f'<SrcRect xOff="{window.col_off}" yOff="{window.row_off}" xSize="{window.width}" ySize="{window.height}"/>'
        f'<DstRect xOff="0" yOff="0" xSize="{window.width}" ySize="{window.height}"/>'
        f"</SimpleSource></VRTRasterBand>"
        for b, ci in enumerate(("Red", "Green", "Blue"), 1)
    )
    path.write_text(
        f'<VRTDataset rasterXSize="{window.width}" rasterYSize="{window.height}"><SRS>{crs}</SRS>'
        f"<GeoTransform>{', '.join(str(v) for v in transform.to_gdal())}</GeoTransform>{bands}</VRTDataset>"
    )
    return path


def test_region_of_remote_cog_fetches_only_its_blocks(cog, tmp_path):
    local = geoseg.segment(region_vrt(tmp_path / "local.vrt", cog, cog, REGION), PROMPTS,
                           segmenter=ColorSegmenter())
    with RangeServer(cog.parent) as server:
        vrt = region_vrt(tmp_path / "remote.vrt", "/vsicurl/" + server.url("scene.tif"), cog, REGION)
        remote = geoseg.segment(vrt, PROMPTS, segmenter=ColorSegmenter(), output=tmp_path / "out.gpkg")
        requests = served(server)
    assert len(remote) == len(local) > 10 and objects(remote) == objects(local)
    assert (tmp_path / "out.gpkg").exists()
    # past the opening read of the headers, every byte fetched is in a block the
    # region touches (3 x 3 of the 8 x 8), give or take the 4-byte leaders and
    # trailers a COG puts around each block (GDAL reads the next block's leader
    # too, and fetches neighbouring blocks in one range)
    wanted = block_spans(cog, REGION)
    assert len(wanted) == 9
    allowed = merged([(lo - 8, hi + 8) for lo, hi in wanted])
    header, *fetched = sorted(r.range for r in requests if r.range)
    assert header[0] == 0 and header[1] < 64 << 10 and fetched
    for a, b in fetched:
        assert any(lo <= a and b < hi for lo, hi in allowed), (a, b, allowed)
    assert sum(r.bytes_sent for r in requests) < os.path.getsize(cog) / 4


@pytest.mark.parametrize("form", ["http", "vsicurl"])
def test_missing_url_is_one_clear_line(tmp_path, form):
    out = tmp_path / "out.gpkg"
    with RangeServer(tmp_path) as server:
        url = server.url("missing.tif")
        source = url if form == "http" else "/vsicurl/" + url
        line = one_line_error(run("segment", source, "-p", "red", "-o", out, "--backend", "colors"))
        assert any(r.path == "/missing.tif" and r.status == 404 for r in server.requests)
    assert source in line and "404" in line and "check the URL" in line
    assert not out.exists()


def test_remote_uint16_without_overviews_fetches_a_sample_for_the_stretch(tmp_path):
    """The scene-wide stretch reads a few windows, each inside one block: not the whole file."""
    rng = np.random.default_rng(1)
    data = rng.integers(200, 4000, (2, 4096, 4096), dtype=np.uint16)  # noise: blocks do not compress away
    path = tmp_path / "u16.tif"
    with rasterio.open(path, "w", driver="GTiff", width=4096, height=4096, count=2, dtype="uint16",
                       crs="EPSG:32617", transform=rasterio.Affine(0.5, 0, 404000, 0, -0.5, 3286000),
                       tiled=True, blockxsize=256, blockysize=256, compress="deflate", photometric="MINISBLACK") as dst:
        dst.write(data)
    with RasterSource(path, ReadOptions(bands=(1,))) as src:
        local = src.stretch_limits
    with RangeServer(tmp_path) as server:
        with RasterSource(server.url("u16.tif"), ReadOptions(bands=(1,))) as src:
            remote = src.stretch_limits
        sent = server.bytes_sent
    assert np.array_equal(local, remote)  # the same stretch, local or remote
    assert 200 < local[0][0] < local[0][1] < 4000
    assert sent < 0.4 * os.path.getsize(path)  # 8 x 8 sample windows: 64 of the 256 blocks


def test_signed_url_query_stays_out_of_the_source_column():
    assert source_name("https://bucket.example/scenes/a.tif?X-Amz-Signature=secret&X-Amz-Date=1") == "a.tif"
    assert source_name("/vsicurl/https://host/b.tif?sig=secret") == "b.tif"
    assert source_name("/vsis3/bucket/c.tif") == "c.tif"
