"""geoseg.run.progress.Progress: the plain lines a batch job sees (not a terminal), the bars, and -q."""

import logging
import re
import types

import pytest
from conftest import run

import geoseg
import geoseg.run.progress
from geoseg.run.progress import Progress
from geoseg.testing import ColorSegmenter, make_scene


class Clock:
    """A monotonic clock the test moves by hand, so 'every N seconds' is exact."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def monotonic(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(geoseg.run.progress, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    return clock


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="geoseg.run.progress")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "geoseg.run.progress"]


def test_a_line_every_n_seconds_and_at_the_end_of_a_file(clock, lines, capsys):
    p = Progress(bars=False, every=10)
    objects = iter(range(7, 100))
    p.start("a.tif", total=10, done=2, km2_per_tile=0.25, objects=lambda: next(objects))
    assert lines() == ["a.tif: resuming, 2 of 10 tiles already done"]
    clock.t = 104
    p.advance(2, 5)
    assert len(lines()) == 1  # 4 s: too soon
    clock.t = 110
    p.advance(2, 3)
    # 4 tiles in 10 s, 4 to go: ETA 10 s
    assert lines()[1] == "a.tif: 6/10 tiles (60 %), 1.5 km², 8 detections, 7 objects merged so far, ETA 0:00:10"
    clock.t = 115
    p.advance(3, 0)
    assert len(lines()) == 2  # 5 s since the last line
    clock.t = 121
    p.advance(1, 1)
    assert lines()[2] == "a.tif: 10/10 tiles (100 %), 2.5 km², 9 detections, 8 objects merged so far, ETA 0:00:00"
    p.finish()
    assert lines()[3] == "a.tif: 10/10 tiles (100 %), 2.5 km², 9 detections, 9 objects merged so far, ETA 0:00:00"
    p.close()
    assert capsys.readouterr().err == ""  # no bar drawn without bars


def test_the_eta_is_unknown_before_any_tile_and_a_file_always_ends_with_a_line(clock, lines):
    p = Progress(bars=False, every=10)
    p.start("b.tif", total=4, done=0, km2_per_tile=1.0)
    p.finish()
    assert lines() == ["b.tif: 0/4 tiles (0 %), 0 km², 0 detections, 0 objects merged so far, ETA ?"]


def test_several_files_count_apart_and_the_overall_bar_totals_them(clock, lines, capsys):
    p = Progress(bars=True, n_files=2, total_tiles=10, every=10)
    p.start("a.tif", total=6, done=2, km2_per_tile=1.0)
    clock.t += 20
    p.advance(4, 9)
    p.finish()
    p.start("b.tif", total=4, done=0, km2_per_tile=2.0)
    clock.t += 20
    p.advance(4, 1)
    p.finish()
    assert p.overall.n == p.overall.total == 10  # resumed tiles count too
    p.close()
    assert lines() == [
        "a.tif: resuming, 2 of 6 tiles already done",
        "a.tif: 6/6 tiles (100 %), 6 km², 9 detections, 0 objects merged so far, ETA 0:00:00",
        "a.tif: 6/6 tiles (100 %), 6 km², 9 detections, 0 objects merged so far, ETA 0:00:00",
        "b.tif: 4/4 tiles (100 %), 8 km², 1 detections, 0 objects merged so far, ETA 0:00:00",
        "b.tif: 4/4 tiles (100 %), 8 km², 1 detections, 0 objects merged so far, ETA 0:00:00",
    ]
    err = capsys.readouterr().err
    assert "all files" in err and "10/10" in err


PROGRESS_LINE = re.compile(r"^geoseg: scene\.tif: \d+/\d+ tiles \(\d+ %\), [\d.]+ km², \d+ detections, "
                           r"\d+ objects merged so far(?: \(\d+ still open across rows\))?, ETA [\d:?]+$", re.M)


def test_the_cli_shows_lines_when_not_on_a_terminal_and_nothing_with_quiet(tmp_path):
    scene = make_scene(tmp_path / "scene.tif", size=512, seed=1)
    common = ["segment", scene, "-p", "red", "--backend", "colors", "--tile-size", 256, "--overlap", 32]
    shown = run(*common, "-o", tmp_path / "a.gpkg")
    assert shown.exit_code == 0, shown.output
    assert PROGRESS_LINE.findall(shown.output)[-1].startswith("geoseg: scene.tif: 9/9 tiles (100 %)")
    quiet = run(*common, "-o", tmp_path / "b.gpkg", "-q")
    assert quiet.exit_code == 0, quiet.output
    assert PROGRESS_LINE.findall(quiet.output) == [] and "tiles (" not in quiet.output
    assert re.fullmatch(r"\S+b\.gpkg: \d+ objects", quiet.output.strip())  # only the summary stays


def test_objects_merged_and_open_show_while_the_tiles_are_still_read(tmp_path, lines, monkeypatch):
    """Rows of tiles are merged behind the model: the lines count the objects merged as they come,
    and those still open across rows (a new user saw '0 objects so far' until the end of a run whose
    objects all spanned rows)."""
    monkeypatch.setattr(geoseg.run.progress, "EVERY", 0.0)  # a line at every batch of tiles
    scene = make_scene(tmp_path / "scene.tif", size=1024, seed=2, n_objects=120)
    geoseg.segment(scene, ["red", "green", "blue"], segmenter=ColorSegmenter(delay=0.05, batch_size=1),
                   tile_size=128, overlap=16, progress=True, cpu_workers=1)
    seen = [re.search(r"(\d+)/\d+ tiles .* (\d+) objects merged so far(?: \((\d+) still open across rows\))?", ln)
            for ln in lines()]
    counts = [(int(m[1]), int(m[2]), int(m[3] or 0)) for m in seen if m]
    assert counts and counts[-1][0] == 81
    assert any(merged > 0 for tiles, merged, _ in counts if tiles < 81), counts
    assert any(still > 0 for tiles, _, still in counts if tiles < 81), counts  # the ring spans rows: open
