"""STAC inputs: an Item or ItemCollection, as a file or served from 127.0.0.1,
names the rasters; each object records its item's id and datetime."""

import json

import pandas as pd
import pyogrio
import pytest
import rasterio
from conftest import one_line_error, run
from pyproj import Transformer

from geoseg.errors import UsageError
from geoseg.io.inputs import list_inputs
from geoseg.io.sources import unique_names
from geoseg.io.stac import StacAsset, expand, is_stac
from geoseg.testing import make_scene
from geoseg.testing.http import RangeServer

COLORS = ["--backend", "colors", "--tile-size", "256", "--overlap", "32", "-q", "-p", "red", "-p", "green",
          "-p", "blue"]
WHEN = {"a": "2024-05-01T10:30:00Z", "b": "2023-08-17T09:00:00Z"}


def _item(scene: str, item_id: str, href: str, *, asset: str = "visual", bands: bool = False) -> dict:
    with rasterio.open(scene) as ds:
        to_lonlat = Transformer.from_crs(ds.crs, 4326, always_xy=True)
        west, south, east, north = to_lonlat.transform_bounds(*ds.bounds)
    extra = {"eo:bands": [{"name": n, "common_name": n} for n in ("red", "green", "blue")]} if bands else {}
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id,
        "geometry": {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north],
                                                          [west, north], [west, south]]]},
        "bbox": [west, south, east, north], "properties": {"datetime": WHEN[item_id]}, "links": [],
        "assets": {
            "thumbnail": {"href": "thumb.png", "type": "image/png", "roles": ["thumbnail"]},
            asset: {"href": href, "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                    "roles": ["data"], **extra},
        },
    }


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """A static catalogue: items/a.json and items/b.json beside their rasters
    (relative hrefs), and an ItemCollection of both (absolute-path hrefs made
    relative to it)."""
    root = tmp_path_factory.mktemp("stac")
    (root / "items").mkdir()
    scenes = {k: make_scene(root / "items" / f"{k}.tif", size=500 + 100 * (k == "a"), seed=k == "a")
              for k in ("a", "b")}
    for k, scene in scenes.items():
        (root / "items" / f"{k}.json").write_text(json.dumps(_item(scene, k, f"./{k}.tif")))
    collection = {"type": "FeatureCollection",
                  "features": [_item(s, k, f"items/{k}.tif") for k, s in scenes.items()]}
    (root / "collection.json").write_text(json.dumps(collection))
    return root, scenes


def test_item_file_names_its_asset(catalogue):
    root, scenes = catalogue
    [asset] = list_inputs(str(root / "items" / "a.json"))
    assert isinstance(asset, StacAsset) and asset == scenes["a"]  # relative href resolved against the item
    assert asset.item_id == "a" and asset.datetime == pd.Timestamp(WHEN["a"]).to_pydatetime()
    paths = list_inputs(str(root / "collection.json"))
    assert paths == [scenes["a"], scenes["b"]] and [p.item_id for p in paths] == ["a", "b"]
    assert unique_names(paths) == ["a.tif", "b.tif"]


def test_item_served_end_to_end(catalogue, tmp_path):
    """An Item URL and an ItemCollection URL on 127.0.0.1: the objects are the
    local files', with the item's id and datetime in every row."""
    root, scenes = catalogue
    local = tmp_path / "local.gpkg"
    assert run("segment", scenes["a"], scenes["b"], *COLORS, "-o", local).exit_code == 0
    want = pyogrio.read_dataframe(local)
    with RangeServer(root) as server:
        one = run("segment", server.url("items/a.json"), *COLORS, "-o", tmp_path / "one.gpkg")
        both = run("segment", server.url("collection.json"), *COLORS, "-o", tmp_path / "both.gpkg")
        paths = [r.path for r in server.requests]
    assert one.exit_code == 0, one.output
    assert both.exit_code == 0, both.output
    assert "/items/a.tif" in paths and "/thumb.png" not in paths
    got = pyogrio.read_dataframe(tmp_path / "both.gpkg")
    assert list(got.columns[-3:]) == ["item_id", "datetime", "geometry"]
    assert len(got) == len(want) and sorted(got.geometry.normalize().to_wkb()) == \
        sorted(want.geometry.normalize().to_wkb())
    for k in ("a", "b"):
        rows = got[got["source"] == f"{k}.tif"]
        assert len(rows) > 0 and set(rows["item_id"]) == {k}
        assert set(pd.to_datetime(rows["datetime"], utc=True)) == {pd.Timestamp(WHEN[k])}
    single = pyogrio.read_dataframe(tmp_path / "one.gpkg")
    assert set(single["item_id"]) == {"a"} and len(single) == (want["source"] == "a.tif").sum()


def test_output_dir_per_item(catalogue, tmp_path):
    root, _ = catalogue
    result = run("segment", root / "collection.json", *COLORS, "--output-dir", tmp_path, "--format", "fgb")
    assert result.exit_code == 0, result.output
    b = pyogrio.read_dataframe(tmp_path / "b.fgb")
    assert set(b["item_id"]) == {"b"}


def test_asset_choice(catalogue, tmp_path):
    root, scenes = catalogue
    item = _item(scenes["a"], "a", str(scenes["a"]), asset="rgb", bands=True)
    (tmp_path / "rgb.json").write_text(json.dumps(item))
    assert expand(str(tmp_path / "rgb.json")) == [scenes["a"]]  # no "visual": the first RGB asset
    assert expand(str(tmp_path / "rgb.json"), asset="rgb") == [scenes["a"]]
    with pytest.raises(UsageError, match="no asset 'nir'.*rgb, thumbnail"):
        expand(str(tmp_path / "rgb.json"), asset="nir")
    plain = _item(scenes["a"], "a", str(scenes["a"]), asset="image")
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    err = one_line_error(run("segment", tmp_path / "plain.json", *COLORS, "-o", tmp_path / "o.gpkg"))
    assert "no 'visual' asset nor an RGB one" in err and "--asset" in err and "image, thumbnail" in err
    assert run("segment", tmp_path / "plain.json", *COLORS, "--asset", "image",
               "-o", tmp_path / "o.gpkg").exit_code == 0
    err = one_line_error(run("segment", scenes["a"], *COLORS, "--asset", "visual", "-o", tmp_path / "p.gpkg"))
    assert "--asset visual picks an asset of STAC items" in err


def test_bad_stac_input(tmp_path):
    assert is_stac("https://earth-search.example/v1/collections/naip/items/abc")
    assert is_stac("item.json") and not is_stac("a.tif") and not is_stac(42)
    assert not is_stac("https://host/data/items/tile-1/visual.tif")
    (tmp_path / "cat.json").write_text(json.dumps({"type": "Catalog", "id": "c"}))
    err = one_line_error(run("segment", tmp_path / "cat.json", *COLORS, "-o", tmp_path / "o.gpkg"))
    assert "not a STAC Item or ItemCollection" in err
    err = one_line_error(run("segment", tmp_path / "missing.json", *COLORS, "-o", tmp_path / "o.gpkg"))
    assert "missing.json: no such file" in err
    (tmp_path / "empty.json").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    err = one_line_error(run("segment", tmp_path / "empty.json", *COLORS, "-o", tmp_path / "o.gpkg"))
    assert "holds no item" in err
