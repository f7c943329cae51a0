"""What a run did, per input and in all: the value `geoseg.run.pipeline.run` returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import geopandas as gpd

from geoseg.run.profile import Profile


@dataclass
class FileResult:
    """What a run did with one input."""

    source: str
    state: str = "pending"  #: "done", "failed" or "skipped" (outside the area)
    tiles: int = 0
    objects: int = 0
    area_m2: float = 0.0
    seconds: float = 0.0
    error: str | None = None
    output: str | None = None
    reused: bool = False  #: done by an earlier, interrupted run
    refined: tuple[int, int, int] = (0, 0, 0)  #: dense tiles refined, sub-tiles segmented, the deepest level
    cost: tuple[int, int] = (0, 0)  #: forward passes (images given to the model) and the pixels in them
    all_nodata: bool = False
    profile: Profile | None = None  #: where the time went (for a file segmented by this run)


@dataclass
class Summary:
    """What a run did: per file, and where the output went."""

    files: list[FileResult]
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    rasters: list[str] = field(default_factory=list)  #: label rasters written (--raster-out)
    frame: gpd.GeoDataFrame | None = None  #: the objects, when asked for
    provenance: dict[str, Any] | None = None  #: the provenance written with the output, when one was

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if f.state == "failed"]

    @property
    def profile(self) -> Profile:
        """Where the run's time went: seconds per stage summed over its files, and the model's idle share."""
        return Profile.total([f.profile for f in self.files if f.profile is not None], self.seconds)

    def report(self) -> str:
        """A few lines for people: files done and failed, objects, area, time."""
        done = [f for f in self.files if f.state == "done"]
        objects = sum(f.objects for f in done)
        area = sum(f.area_m2 for f in done if f.area_m2 == f.area_m2)
        skipped = [f.source for f in self.files if f.state == "skipped"]
        outside = f", {len(skipped)} outside the area" if skipped else ""
        lines = [f"{len(done)} of {len(self.files)} files done, {len(self.failed)} failed{outside}; {objects} objects, "
                 f"{area / 1e6:.4g} km² of objects; {self.seconds:.1f} s"]
        lines += [f"failed: {f.source}: {f.error}" for f in self.failed]
        tiles, subs, deepest = refined(done)
        if tiles:
            lines.append(f"dense scenes: {tiles} tiles refined in {subs} sub-tiles, down to level {deepest}; "
                         f"{cost(done)[0]} forward passes in all")
        if skipped:
            more = " ..." if len(skipped) > 10 else ""
            lines.append("skipped (outside the area): " + ", ".join(skipped[:10]) + more)
        return "\n".join(lines)


def cost(results: Sequence[FileResult]) -> tuple[int, int]:
    """Forward passes and the pixels given to the model, over `results`."""
    return sum(r.cost[0] for r in results), sum(r.cost[1] for r in results)


def refined(results: Sequence[FileResult]) -> tuple[int, int, int]:
    """Dense tiles refined, sub-tiles segmented and the deepest level, over `results`."""
    return (sum(r.refined[0] for r in results), sum(r.refined[1] for r in results),
            max((r.refined[2] for r in results), default=0))
