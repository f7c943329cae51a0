"""A signed URL's secrets (user, password, query string) reach nothing geoseg shows or writes:
messages, logs, `info` (text and JSON), the work folder of a killed run, outputs and provenance."""

import json
import signal
import sys
from pathlib import Path

import pytest
from conftest import run
from test_resume import start_and_stop

import geoseg
from geoseg.errors import RasterError, keep_secret, redact
from geoseg.testing import make_scene
from geoseg.testing.http import RangeServer

SECRETS = ["SIGSECRET", "TOKSECRET", "PASSWORDX"]
KILLABLE = r"""
import sys
import geoseg
from geoseg.testing import ColorSegmenter
geoseg.segment(sys.argv[1], ["red"], segmenter=ColorSegmenter(delay=0.2, batch_size=1), tile_size=128, overlap=16,
               output=sys.argv[2])
"""


@pytest.mark.parametrize("text, shown", [
    ("https://alice:pw@host:8080/a/b.tif?X-Amz-Signature=s&token=t#f", "https://host:8080/a/b.tif"),
    ("/vsicurl/https://host/x.tif?sig=1: cannot fetch", "/vsicurl/https://host/x.tif: cannot fetch"),
    ('{"path": "s3://bucket/k.tif?versionId=3"}', '{"path": "s3://bucket/k.tif"}'),
    ("(see http://u:p@h/b.tif)", "(see http://h/b.tif)"),
    (r"C:\data\a b.tif, me@example.org", r"C:\data\a b.tif, me@example.org"),  # no URL: as it was
])
def test_redact_takes_out_userinfo_and_query_strings(text, shown):
    assert redact(text) == shown


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    make_scene(folder / "scene.tif", size=800, seed=3, n_objects=100)
    with RangeServer(folder) as srv:
        yield srv


def signed(url: str) -> str:
    return url.replace("http://", "http://alice:PASSWORDX@") + "?X-Amz-Signature=SIGSECRET&token=TOKSECRET"


def assert_clean(text: str | bytes, where: object) -> None:
    for s in SECRETS:
        assert (s.encode() if isinstance(text, bytes) else s) not in text, f"{s} in {where}"


def test_no_secret_in_anything_a_run_prints_or_writes(server, tmp_path):
    url, missing = signed(server.url("scene.tif")), signed(server.url("gone.tif"))
    colors = ["-p", "red", "--backend", "colors", "--tile-size", "256", "--overlap", "32"]
    printed = []
    for args in (["info", url], ["info", url, "--json"], ["info", missing],
                 ["segment", missing, *colors, "-o", tmp_path / "a.gpkg", "--log-file", tmp_path / "a.log"],
                 ["segment", url, *colors, "-v", "-o", tmp_path / "b.gpkg", "--log-file", tmp_path / "b.log"]):
        r = run(*args)
        printed.append(r.output)
        assert_clean(r.output, args)
    assert "http://127.0.0.1:" in printed[0] and "gone.tif" in printed[2] and "objects" in printed[4]
    with pytest.raises(RasterError) as err:  # the Python API's errors too
        geoseg.segment(missing, "red", segmenter="colors")
    assert "gone.tif" in str(err.value)
    assert_clean(str(err.value), "the exception")

    out = tmp_path / "c.gpkg"  # a run killed midway: its work folder, then `info` of it
    work = Path(f"{out}.geoseg-work")
    start_and_stop([sys.executable, "-c", KILLABLE, url, str(out)], work, signal.SIGKILL, at_least=3)
    for f in work.iterdir():
        assert_clean(f.read_bytes(), f)
    r = run("info", work)
    assert r.exit_code == 0 and "scene.tif" in r.output, r.output
    assert_clean(r.output, "info of the work folder")
    r = run("segment", url, "-p", "red", "--backend", "colors", "--tile-size", "128", "--overlap", "16", "-o", out)
    assert r.exit_code == 0, r.output
    files = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert {f.name for f in files} >= {"a.log", "b.log", "b.gpkg", "c.gpkg"}
    for f in files:
        assert_clean(f.read_bytes(), f)


# -- every URL shape: a password holding "/", a query holding a space or a quote, a signed -o, combine's output

@pytest.mark.parametrize("text, shown", [
    ("cannot open https://AKIA:wJal/rXUtn/SLASHSECRET@host/x.tif: 403", "cannot open https://host/x.tif: 403"),
    ("cannot open 'https://host/x.tif?token=SPACE SECRET&b=1': 404", "cannot open 'https://host/x.tif': 404"),
    ('bad "https://host/x.tif?token=QUOTE\\"SECRET": 404', 'bad "https://host/x.tif": 404'),
    ("-o https://host/out.xyz?sig=SIGSECRET: unknown format", "-o https://host/out.xyz: unknown format"),
    ("see https://host/a.tif#frag-SECRET.", "see https://host/a.tif."),
])
def test_redact_every_url_shape(text, shown):
    assert redact(text) == shown


def test_a_url_geoseg_was_given_is_redacted_wherever_it_is_cut():
    """A query with a space, cut by a message at the space, percent-decoded by GDAL, or escaped
    in JSON: its secrets are known once geoseg has seen the URL."""
    keep_secret("https://host/x.tif?token=KEPT SECRET&X-Amz-Signature=KEPTSIG%2Fabc&format=png")
    for text in ("GDAL: https://host/x.tif?token=KEPT SECRET&X-Amz-Signature=KEPTSIG%2Fabc&format=png: HTTP 403",
                 "token=KEPT SECRET", '"KEPTSIG/abc"',
                 json.dumps({"url": 'https://host/x.tif?token=KEPT SECRET'})):
        shown = redact(text)
        assert "SECRET" not in shown and "KEPTSIG" not in shown, (text, shown)
    assert redact("format png") == "format png"  # an ordinary query value stays in ordinary words


def test_no_secret_in_any_url_shape_on_any_surface(server, tmp_path):
    """Each shape on the CLI's messages, --log-file, `info --json`, the provenance and work folder."""
    base = server.url("scene.tif")
    host = base.split("/")[2]
    slash = base.replace("http://", "http://AKIA:SLASH/SECRETPW@")  # the password holds "/"
    space = base + "?token=SPACE%20TOKSECRET&X-Amz-Signature=SP ACESIG"  # a space, as typed in quotes
    quote = base + "?token=QUOTE'TOKSECRET&sig=QU\"OTESIG"
    secrets = ["SECRETPW", "TOKSECRET", "ACESIG", "OTESIG", "OUTSIG", "COMBSIG"]
    colors = ["-p", "red", "--backend", "colors", "--tile-size", "256", "--overlap", "32", "--cpu-workers", "0"]
    shown = []
    for k, url in enumerate((slash, space, quote)):
        log = tmp_path / f"{k}.log"
        for args in (["info", url, "--log-file", log], ["info", url, "--json"],
                     ["segment", url, *colors, "-o", tmp_path / f"{k}.gpkg", "--log-file", log]):
            shown.append(run(*args).output)
    r = run("segment", base, *colors, "-o", f"https://{host}/out.xyz?sig=OUTSIG", "--log-file",
            tmp_path / "o.log")
    assert r.exit_code == 2 and "out.xyz" in r.output, r.output
    shown.append(r.output)
    (tmp_path / "shards").mkdir()
    r = run("combine", tmp_path / "shards", "-o", f"https://{host}/all.gpkg?token=COMBSIG")
    assert r.exit_code != 0
    shown.append(r.output)
    assert any('"path"' in s for s in shown) and any("objects" in s for s in shown), shown
    for text in shown:
        for s in secrets:
            assert s not in text, (s, text)
    for f in [f for f in tmp_path.rglob("*") if f.is_file()]:  # logs, outputs (their provenance), work folders
        for s in secrets:
            assert s.encode() not in f.read_bytes(), (s, f)
