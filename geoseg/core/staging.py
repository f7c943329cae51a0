"""On-disk staging of per-tile detections: one SQLite file per input raster.

A batch of tiles is committed in one transaction (its pieces, and its tiles
marked done), so a run killed at any moment keeps every finished batch and
nothing half written. Masks are stored bit-packed (large ones compressed); the merge
reads them back one row of tiles at a time.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.core.bits import LARGE, Bits
from geoseg.core.merge import KEY_BITS, Piece
from geoseg.errors import DiskFullError, disk_full

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tiles (tile INTEGER PRIMARY KEY, pieces INTEGER NOT NULL, nodata INTEGER NOT NULL,
                                  sub_tiles INTEGER NOT NULL DEFAULT 0, depth INTEGER NOT NULL DEFAULT 0,
                                  passes INTEGER NOT NULL DEFAULT 0, pixels INTEGER NOT NULL DEFAULT 0,
                                  needed TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS pieces (
    tile INTEGER NOT NULL, seq INTEGER NOT NULL, trow INTEGER NOT NULL,
    label TEXT NOT NULL, score REAL NOT NULL,
    row INTEGER NOT NULL, col INTEGER NOT NULL, height INTEGER NOT NULL, width INTEGER NOT NULL,
    mask BLOB NOT NULL, level INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tile, seq)
);
CREATE INDEX IF NOT EXISTS pieces_trow ON pieces (trow);
"""

def pack(mask: np.ndarray) -> bytes:
    """A boolean mask as bits (its shape is stored beside it); large ones compressed."""
    bits = np.packbits(mask, axis=None).tobytes()
    return b"z" + zlib.compress(bits, 1) if len(bits) > 4096 else b"b" + bits


def _flat(blob: bytes) -> np.ndarray:
    return np.frombuffer(zlib.decompress(blob[1:]) if blob[:1] == b"z" else blob[1:], np.uint8)


def unpack(blob: bytes, height: int, width: int) -> np.ndarray:
    return np.unpackbits(_flat(blob), count=height * width).reshape(height, width).astype(bool)


class TileStore:
    """The staged detections of one raster, in a SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with self._full():
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            # WAL: a committed batch survives kill -9; NORMAL: no fsync per batch
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _full(self) -> Iterator[None]:
        """A full disk named as such, with this file."""
        try:
            yield
        except sqlite3.Error as e:
            if disk_full(e):
                raise DiskFullError(self.path) from e
            raise

    def load(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def save(self, key: str, value: Any) -> None:
        with self._full():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def done(self) -> set[int]:
        """Indices of the tiles already segmented (nodata tiles included)."""
        return {t for (t,) in self._db.execute("SELECT tile FROM tiles")}

    def put(self, tiles: Iterable[int], pieces: Sequence[Piece], grid_cols: int, nodata: Iterable[int] = (),
            refined: dict[int, tuple[int, int]] | None = None, cost: dict[int, tuple[int, int]] | None = None,
            needed: dict[int, dict[str, int]] | None = None) -> None:
        """Stage `pieces` and mark `tiles` done (`nodata`: those without a valid pixel), in one transaction.
        `refined`: for the tiles refined, (sub-tiles segmented, deepest level); `cost`: per tile,
        (forward passes, pixels) given to the model; `needed`: per tile, prompt -> the level it
        needed (see `geoseg.core.refine`).

        Pieces keep their order within a tile (`seq`), so reading them back
        gives the same order whatever order the tiles were done in.
        """
        tiles, empty = list(tiles), set(nodata)
        seq: dict[int, int] = {}
        rows = []
        for p in pieces:
            k = seq.get(p.tile, 0)
            seq[p.tile] = k + 1
            rows.append((p.tile, k, p.tile // grid_cols, p.label, p.score, p.row, p.col,
                         p.mask.shape[0], p.mask.shape[1], pack(p.mask), p.level))
        with self._full(), self._db:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM pieces WHERE tile = ?", [(t,) for t in tiles])  # a batch run again
            self._db.executemany("INSERT INTO pieces VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            refined, cost, needed = refined or {}, cost or {}, needed or {}
            self._db.executemany("INSERT OR REPLACE INTO tiles VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                 [(t, seq.get(t, 0), t in empty, *refined.get(t, (0, 0)), *cost.get(t, (0, 0)),
                                   json.dumps(needed.get(t, {}), sort_keys=True)) for t in tiles])

    def pieces_in_row(self, trow: int) -> list[Piece]:
        """The pieces of one row of tiles, in (tile, seq) order, keyed (tile << KEY_BITS) | seq; large
        masks as `Bits`, as the row merge holds them (a row of a forest's masks is not unpacked at once)."""
        cur = self._db.execute(
            "SELECT tile, seq, label, score, row, col, height, width, mask, level FROM pieces WHERE trow = ? "
            "ORDER BY tile, seq", (trow,))
        return [Piece(label, score, tile, row, col, Bits.from_flat(_flat(blob), h, w) if h * w >= LARGE
                      else unpack(blob, h, w), key=(tile << KEY_BITS) | seq, level=level)
                for tile, seq, label, score, row, col, h, w, blob, level in cur]

    def nodata(self) -> int:
        """Number of staged tiles without a valid pixel."""
        return int(self._db.execute("SELECT COUNT(*) FROM tiles WHERE nodata").fetchone()[0])

    def refinement(self) -> tuple[int, int, int]:
        """(tiles refined, sub-tiles segmented in them, the deepest level segmented)."""
        tiles, subs, deepest = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(sub_tiles), 0), COALESCE(MAX(depth), 0) FROM tiles WHERE sub_tiles > 0",
        ).fetchone()
        return int(tiles), int(subs), int(deepest)

    def cost(self) -> tuple[int, int]:
        """(forward passes, pixels) given to the model for the staged tiles."""
        passes, pixels = self._db.execute("SELECT COALESCE(SUM(passes), 0), COALESCE(SUM(pixels), 0) FROM tiles"
                                          ).fetchone()
        return int(passes), int(pixels)

    def costs(self) -> dict[int, tuple[int, int]]:
        """Per staged tile, (forward passes, pixels) given to the model."""
        return {t: (n, px) for t, n, px in self._db.execute("SELECT tile, passes, pixels FROM tiles")}

    def needed(self) -> dict[int, dict[str, int]]:
        """Per staged tile, prompt -> the level it needed (`geoseg.core.refine.needed`)."""
        return {t: json.loads(n) for t, n in self._db.execute("SELECT tile, needed FROM tiles")}

    def n_pieces(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM pieces").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> TileStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
