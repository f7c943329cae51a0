"""Progress of a run: tqdm bars on a terminal, plain log lines elsewhere.

On a terminal (or in Jupyter with ipywidgets), one bar per file (tiles done/total, km², objects merged so far,
ETA) and, with several files, one overall bar. The same figures go to the
"geoseg.run.progress" logger as a line every `every` seconds and at the end of each
file: the CLI shows them on stderr when it is not a terminal (CI, batch jobs)
and writes them to --log-file. In Jupyter without ipywidgets, tqdm would fall
back to a terminal bar whose cursor escapes show up as garbage in the cell's
output: there the bars are replaced by the same plain lines, printed.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from affine import Affine

from geoseg.core.merge import Piece

log = logging.getLogger("geoseg.run.progress")


def plain_lines_only() -> bool:
    """True in a Jupyter kernel without ipywidgets (tqdm's test for a notebook)."""
    return "ipykernel.zmqshell" in sys.modules and importlib.util.find_spec("ipywidgets") is None


def _eta(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds))) if seconds == seconds and seconds < 1e7 else "?"


EVERY = 10.0  #: seconds between two progress lines (where no bar is drawn)


@dataclass(frozen=True)
class Found:
    """The detections of one batch of tiles, as the model gave them (not yet merged across seams).

    Attributes:
        name: the raster's name; transform, crs: its grid (the one the tiles are read on).
        pieces: each detection's mask, a tight crop at (row, col) of that grid.
        done, total: tiles of the raster segmented so far, and in all.
    """

    name: str
    transform: Affine
    crs: Any
    pieces: list[Piece]
    done: int
    total: int


class Progress:
    """Counts tiles, area and detections of a run over `n_files` files.

    Args:
        bars: draw tqdm bars (else only log lines).
        total_tiles: tiles of all files, for the overall bar.
        watch: called with each batch's `Found` as it is segmented (see `geoseg.segment(watch=...)`).
    """

    def __init__(self, *, bars: bool, n_files: int = 1, total_tiles: int = 0, every: float | None = None,
                 watch: Callable[[Found], None] | None = None) -> None:
        self.watch = watch
        self.printed = bars and plain_lines_only()  # the log lines, printed, instead of bars
        self.bars = bars and not self.printed
        self.every = EVERY if every is None else every
        self.overall: Any = None
        if self.bars:
            from tqdm.auto import tqdm  # imported here: in Jupyter it picks the widget bars

            self._tqdm = tqdm
        if self.bars and n_files > 1:
            self.overall = tqdm(total=total_tiles, desc="all files", unit="tile", position=0, file=sys.stderr,
                                dynamic_ncols=True)
        self.bar: Any = None
        self.name = ""

    def start(self, name: str, total: int, done: int, km2_per_tile: float,
              objects: Callable[[], int | tuple[int, int]] = lambda: 0) -> None:
        """A file begins: `done` of its `total` tiles are already staged;
        `objects()` counts the objects merged so far (and, as a pair, those still open)."""
        self.name, self.total, self.done, self.km2_per_tile = name, total, done, km2_per_tile
        self.objects = objects
        self.detections = self.sub_tiles = self.passes = 0
        self.t0 = self.last = time.monotonic()
        self.done0 = done
        if self.overall is not None:
            self.overall.update(done)
        if self.bars:
            self.bar = self._tqdm(total=total, initial=done, desc=name, unit="tile", leave=False, file=sys.stderr,
                                  position=1 if self.overall is not None else 0, dynamic_ncols=True)
        if done:
            self._say("%s: resuming, %d of %d tiles already done", name, done, total)

    def advance(self, tiles: int, detections: int, sub_tiles: int = 0, passes: int = 0) -> None:
        """`tiles` more staged, with `detections`; `sub_tiles`: those segmented to refine them;
        `passes`: the forward passes (images given to the model) it took."""
        self.done += tiles
        self.detections += detections
        self.sub_tiles += sub_tiles
        self.passes += passes
        if self.overall is not None:
            self.overall.update(tiles)
        if self.bar is not None:
            self.bar.update(tiles)
            refined = f", {self.sub_tiles} sub-tiles, {self.passes} passes" if self.sub_tiles else ""
            self.bar.set_postfix_str(f"{self.done * self.km2_per_tile:.3g} km², {self._objects()}{refined}",
                                     refresh=False)
        if time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            self._say("%s", self.line())

    def found(self, transform: Affine, crs: Any, pieces: list[Piece]) -> None:
        """A batch's detections (before the seam merge), for `watch`; it may raise to stop the run."""
        if self.watch is not None:
            self.watch(Found(self.name, transform, crs, pieces, self.done, self.total))

    def line(self) -> str:
        rate = (self.done - self.done0) / max(time.monotonic() - self.t0, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100 * self.done / max(self.total, 1)
        refined = f" (+{self.sub_tiles} sub-tiles)" if self.sub_tiles else ""
        # where tiles were refined, the passes differ from the tiles: say what the model was given
        passes = f", {self.passes} forward passes" if self.sub_tiles and self.passes else ""
        return (f"{self.name}: {self.done}/{self.total} tiles{refined} ({pct:.0f} %){passes}, "
                f"{self.done * self.km2_per_tile:.3g} km², "
                f"{self.detections} detections, {self._objects()}, ETA {_eta(eta)}")

    def _objects(self) -> str:
        """The objects merged so far, and those still open (a region across rows is one object
        only once no later row can join it: until then it is counted open, not merged)."""
        found = self.objects()
        merged, still = found if isinstance(found, tuple) else (found, 0)
        return f"{merged} objects merged so far" + (f" ({still} still open across rows)" if still else "")

    def finish(self) -> None:
        """The file's tiles are all staged."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self._say("%s", self.line())

    def _say(self, fmt: str, *args: Any) -> None:
        log.info(fmt, *args)
        if self.printed:
            print(fmt % args, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.overall is not None:
            self.overall.close()
