"""Where a run's time goes: seconds per stage, and the share of the wall time
the model sat idle.

Stages overlap (reading runs ahead of the model in a thread, staging and the
merge behind it, post-processing and vectorising in worker processes), so the
seconds are busy time summed over the threads and processes doing that stage,
not slices of the wall time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields

from geoseg.errors import option

_LOCK = threading.Lock()

#: stage -> its name in the table
STAGES = {
    "read": "read",
    "model": "model",
    "post": "post-process",
    "stage": "stage",
    "merge": "merge",
    "write": "vectorise+write",
}


@dataclass
class Profile:
    """Seconds spent per stage of one file's run (or of a whole run).

    `read`: windowed reads, stretch and resampling; `model`: the segmenter's
    calls; `post`: masks -> pieces (clip to valid pixels, crop); `stage`:
    writing pieces to the work folder; `merge`: reading rows of pieces back
    and merging them across seams; `write`: vectorising, areas, reprojection
    and writing the output.
    """

    read: float = 0.0
    model: float = 0.0
    post: float = 0.0
    stage: float = 0.0
    merge: float = 0.0
    write: float = 0.0
    wall: float = 0.0  #: from the first read to the last object written
    tiles: int = 0
    passes: int = 0  #: forward passes: images given to the model (tiles and refinement's sub-tiles)
    workers: int = 0  #: CPU worker processes (0: all in the run's own process)

    def add(self, stage: str, seconds: float) -> None:
        """Count `seconds` of `stage` (thread-safe)."""
        with _LOCK:
            setattr(self, stage, getattr(self, stage) + seconds)

    @contextmanager
    def time(self, stage: str) -> Iterator[None]:
        """Count the time spent in the `with` block as `stage`."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - t)

    @property
    def model_idle(self) -> float:
        """Share of the wall time the model was not running (0..1)."""
        return max(0.0, 1.0 - self.model / self.wall) if self.wall > 0 else 0.0

    @classmethod
    def total(cls, profiles: Iterable[Profile], wall: float) -> Profile:
        """The stages of several files summed, over a run that took `wall` s."""
        out = cls(wall=wall)
        for p in profiles:
            for f in fields(cls):
                if f.name not in ("wall", "workers"):
                    setattr(out, f.name, getattr(out, f.name) + getattr(p, f.name))
            out.workers = max(out.workers, p.workers)
        return out

    def table(self, title: str) -> str:
        """A few lines for people: seconds per stage and the model's idle share."""
        where = f"{self.workers} CPU worker process{'es' if self.workers != 1 else ''}" if self.workers \
            else "no CPU worker process"
        rate = f", {self.tiles / self.wall:.1f} tiles/s" if self.wall > 0 and self.tiles else ""
        passes = f" in {self.passes} forward passes" if self.passes else ""
        lines = [f"profile: {title}: {self.tiles} tiles{passes}, {self.wall:.2f} s wall{rate}, {where}",
                 f"  {'stage':<16} {'seconds':>8} {'% of wall':>9}"]
        for key, name in STAGES.items():
            s = getattr(self, key)
            share = f"{100 * s / self.wall:.0f}" if self.wall > 0 else "-"
            lines.append(f"  {name:<16} {s:>8.2f} {share:>9}")
        lines.append(f"  model idle {100 * self.model_idle:.0f}% of the wall time"
                     " (stages overlap: their seconds are summed over threads and processes)")
        lines.append(f"  {self.verdict()}")
        return "\n".join(lines)

    def verdict(self) -> str:
        """What set the pace, in a line."""
        if self.wall <= 0 or self.model_idle < 0.2:
            return "the model set the pace"
        busiest = max((k for k in STAGES if k != "model"), key=lambda k: getattr(self, k))
        hint = {"read": "reading (a compressed or remote raster; see docs/reading.md)",
                "write": f"vectorise+write: more {option('cpu_workers')} spread it over more cores"}.get(
            busiest, f"{STAGES[busiest]}, in the run's own process")
        return f"the CPU side set the pace; its busiest stage: {hint}"
