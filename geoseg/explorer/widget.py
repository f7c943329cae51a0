"""The explorer: a Jupyter widget (anywidget) showing a source on a map with geoseg's controls.

State lives here, in Python (traitlets synced with the browser); the front end
(static/explorer.js, built from js/) only draws and sends what the person does.
Pixels and polygons cross the widget's own comm as binary buffers, so nothing
but the Jupyter server's port is needed. Every run goes through `geoseg.segment`,
the CLI's pipeline: the same seam merge, objects on the area's edge whole.
"""

from __future__ import annotations

import inspect
import threading
import traceback
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import anywidget
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import traitlets
from pyproj import CRS
from rasterio.warp import transform_bounds

from geoseg.core import vectorize
from geoseg.core.merge import Instance
from geoseg.core.segmenter import as_segmenter
from geoseg.errors import GeosegError, UsageError
from geoseg.explorer import state as saved
from geoseg.explorer.buffers import polygon_buffers
from geoseg.explorer.tiles import MapTiles
from geoseg.io import export
from geoseg.io.area import Area
from geoseg.io.inputs import resolve
from geoseg.io.mosaic import from_settings
from geoseg.io.review import ACCEPTED, DECISIONS, REJECTED, REVIEW, decisions
from geoseg.io.services import WebOptions, is_web
from geoseg.io.vectors import read_vector
from geoseg.run.pipeline import segment
from geoseg.run.progress import Found
from geoseg.run.settings import Settings, model_reading

STATIC = Path(__file__).parent / "static"
FLOOR = 0.05  #: runs keep every object scoring at least this; the slider filters above it in the browser
BASEMAP = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
BASEMAP_CREDIT = "© OpenStreetMap contributors"
#: geoseg.segment's own keywords (the rest are the backend's: model, device, ...)
RUN_OPTIONS = set(inspect.signature(segment).parameters) - {"source", "prompts", "segmenter", "watch"}
PALETTE = ["#ffd400", "#00e5ff", "#ff3df2", "#ff8c00", "#8cff00", "#ffffff", "#ff4040", "#4d7dff", "#00ff9d",
           "#c080ff"]  #: bright outlines that stand out on imagery (vegetation, roofs, water)


class Cancelled(GeosegError):
    """The person pressed Cancel: the run stops after the batch in the model."""


class Explorer(anywidget.AnyWidget):
    """A map of `source` with a prompt box, drawing modes, a score slider and review.

    Use `geoseg.explore(...)` to make one; see docs/explore.md.
    """

    _esm = STATIC / "explorer.js"
    _css = STATIC / "explorer.css"

    bounds = traitlets.List([]).tag(sync=True)  #: the source's lon/lat bounds
    max_zoom = traitlets.Int(18).tag(sync=True)
    view_lonlat = traitlets.List([]).tag(sync=True)  #: the map's lon/lat bounds (west, south, east, north)
    threshold = traitlets.Float(0.5).tag(sync=True)  #: the score slider
    mode = traitlets.Unicode("pan").tag(sync=True)  #: pan, positive, negative, object or review
    prompt = traitlets.Unicode("").tag(sync=True)
    status = traitlets.Unicode("").tag(sync=True)
    running = traitlets.Bool(False).tag(sync=True)
    boxes = traitlets.List([]).tag(sync=True)  #: drawn exemplars: {west, south, east, north, positive, prompt}
    clicks = traitlets.List([]).tag(sync=True)  #: object clicks: {lon, lat, positive, object}
    selected = traitlets.List([]).tag(sync=True)  #: uids of the selected objects
    basemap = traitlets.Unicode(BASEMAP).tag(sync=True)
    credit = traitlets.Unicode(BASEMAP_CREDIT).tag(sync=True)
    floor = traitlets.Float(FLOOR).tag(sync=True)

    def __init__(self, source: Any, *, state: str | Path | None = None, backend: Any = "sam3",
                 threshold: float = 0.5, floor: float = FLOOR, basemap: str | None = BASEMAP,
                 credit: str = BASEMAP_CREDIT, **options: Any) -> None:
        super().__init__()
        self._run_options = {k: v for k, v in options.items() if k in RUN_OPTIONS}
        self._backend_options = {k: v for k, v in options.items() if k not in RUN_OPTIONS}
        for bad in ("output", "bbox", "aoi", "objects", "exemplars", "mosaic"):
            if bad in self._run_options and not (bad in ("bbox", "aoi") and is_web(source)):
                raise UsageError(f"explore(..., {bad}=...) is not taken: the map chooses the area and holds the "
                                 f"boxes, clicks and results (see ex.segment, ex.exemplars, ex.objects, ex.save)")
        if options.get("pixel_coords"):
            raise UsageError("explore() draws a map: it needs a georeferenced raster (leave out pixel_coords)")
        if not 0 <= floor <= threshold <= 1:
            raise UsageError(f"explore(): need 0 <= floor ({floor}) <= threshold ({threshold}) <= 1")
        self._web_area = Area.of(bbox=self._run_options.pop("bbox", None),
                                 bbox_crs=self._run_options.pop("bbox_crs", None),
                                 aoi=self._run_options.pop("aoi", None))
        web = WebOptions.of(**{k.removeprefix("web_"): self._run_options.pop(k) for k in list(self._run_options)
                               if k in ("web_zoom", "web_resolution")},
                            **{k: self._run_options.pop(k) for k in list(self._run_options)
                               if k in ("max_connections", "max_tiles", "headers", "attribution")},
                            cache=self._run_options.pop("tile_cache", None))
        read = model_reading(bands=self._run_options.get("bands"), resolution=self._run_options.get("resolution"),
                             stretch=self._run_options.get("stretch", (2.0, 98.0)),
                             area=None if self._web_area is None else Area.of(
                                 bbox=None, aoi=self._web_area.geometry, bbox_crs=self._web_area.crs,
                                 margin=self._run_options.get("overlap", 128)))
        settings = Settings(prompts=[], overlap=self._run_options.get("overlap", 128), read=read,
                            dst_crs=None)
        paths = resolve(source, web=web, settings=settings)
        if len(paths) > 1:  # a folder (or a list): one mosaic, as --mosaic
            paths = [from_settings(paths, settings)]
        #: what every run segments: the file, the folder's mosaic or the tile service's area (a VRT)
        self.path: str = str(paths[0])
        self.source = source
        self.tiles = MapTiles(self.path, replace(read, area=None))
        self.crs = CRS.from_user_input(self.tiles.crs) if self.tiles.crs else None
        self._backend = backend
        self._segmenter: Any = None
        self._lock = threading.Lock()  # one run at a time
        self._changing = threading.Lock()  # the objects, changed by a run's thread and by review clicks
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._frame = saved.empty_results(self.crs)  # every object found, by uid, with its review
        self._next_uid = 1
        self._provenance: dict[str, Any] = {}
        self.bounds = list(self.tiles.bounds)
        self.max_zoom = self.tiles.max_zoom
        self.floor, self.threshold = floor, threshold
        self.basemap, self.credit = basemap or "", credit
        self.state = None if state is None else saved.StateFile(
            state, self.path, lambda: (self.threshold, self.view_lonlat))
        if self.state is not None and self.state.exists():
            self._restore(self.state.load(self.crs))
        self.on_msg(self._on_msg)
        self.observe(self._keep, names=["threshold", "boxes", "clicks", "view_lonlat"])

    # --- the Python side of the map ---

    @property
    def view(self) -> tuple[float, float, float, float] | None:
        """The map's bounds in the source's CRS (minx, miny, maxx, maxy); set it to move the map."""
        if len(self.view_lonlat) != 4:
            return None
        return transform_bounds("EPSG:4326", self.crs, *self.view_lonlat, densify_pts=21)

    @view.setter
    def view(self, bounds: Sequence[float]) -> None:
        self.view_lonlat = list(transform_bounds(self.crs, "EPSG:4326", *(float(v) for v in bounds), densify_pts=21))

    @property
    def results(self) -> gpd.GeoDataFrame:
        """What the map shows: objects scoring at least `threshold` (and those outlined from clicks), not
        rejected, in the source's CRS, with the columns of a CLI output and `review`; indexed by their ids."""
        f = self._frame
        keep = self._above() & (f[REVIEW] != REJECTED)
        return f[keep].copy()

    def _above(self) -> pd.Series:
        """Objects scoring at least the threshold, and the objects clicked: a person asked for each of those."""
        return (self._frame["score"] >= self.threshold) | self._clicked()

    def _clicked(self) -> pd.Series:
        """The objects outlined from clicks (they have `whole`, the column of object prompts)."""
        f = self._frame
        return f["whole"].notna() if "whole" in f.columns else pd.Series(False, index=f.index)

    @property
    def exemplars(self) -> gpd.GeoDataFrame:
        """The example boxes drawn (columns `positive`, `prompt`), in the source's CRS; settable."""
        geoms = [shapely.box(b["west"], b["south"], b["east"], b["north"]) for b in self.boxes]
        gdf = gpd.GeoDataFrame({"positive": [bool(b["positive"]) for b in self.boxes],
                                "prompt": [b.get("prompt") or None for b in self.boxes]},
                               geometry=geoms, crs="EPSG:4326")
        return gdf.to_crs(self.crs)

    @exemplars.setter
    def exemplars(self, gdf: gpd.GeoDataFrame | None) -> None:
        ll, positive = _in_lonlat(gdf, "exemplars")
        prompt = ll["prompt"] if "prompt" in ll.columns else pd.Series(None, index=ll.index)
        self.boxes = [{"west": g.bounds[0], "south": g.bounds[1], "east": g.bounds[2], "north": g.bounds[3],
                       "positive": p, "prompt": None if pd.isna(t) else str(t)}
                      for g, p, t in zip(ll.geometry, positive, prompt)]

    @property
    def objects(self) -> gpd.GeoDataFrame:
        """The clicks on single objects (columns `object`, `positive`), in the source's CRS; settable."""
        gdf = gpd.GeoDataFrame({"object": [str(c.get("object", k + 1)) for k, c in enumerate(self.clicks)],
                                "positive": [bool(c["positive"]) for c in self.clicks]},
                               geometry=[shapely.Point(c["lon"], c["lat"]) for c in self.clicks], crs="EPSG:4326")
        return gdf.to_crs(self.crs)

    @objects.setter
    def objects(self, gdf: gpd.GeoDataFrame | None) -> None:
        ll, positive = _in_lonlat(gdf, "objects")
        if not ll.geometry.geom_type.eq("Point").all():
            raise UsageError("ex.objects takes points (clicks); for a box around an object, use "
                             "geoseg.segment(..., objects=...)")
        ids = ll["object"] if "object" in ll.columns else pd.Series(range(1, len(ll) + 1), index=ll.index)
        self.clicks = [{"lon": g.x, "lat": g.y, "positive": p, "object": str(i)}
                       for g, p, i in zip(ll.geometry, positive, ids)]

    def segment(self, prompt: str | Sequence[str] | None = None, area: Any = None) -> gpd.GeoDataFrame:
        """Run as the Run button does, and wait: `prompt` (default the prompt box) over `area`: None for the
        map's view, "all" for the whole source, a bbox (minx, miny, maxx, maxy) or a shapely polygon in the
        source's CRS. The boxes drawn for this prompt are its exemplars. Returns the objects found (all of
        them above the floor; the map and `results` show those above the threshold)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or ([self.prompt] if self.prompt else []))
        if self.running:
            raise UsageError("a run is going on in the explorer: wait for it, or press Cancel")
        return self._run(prompts, area)

    def segment_objects(self) -> gpd.GeoDataFrame:
        """The one object under each of `objects`' clicks (as the object mode does on each click)."""
        if not self.clicks:
            raise UsageError("no object clicked: set ex.objects, or click in the object mode")
        return self._run_objects()

    def add(self, results: Any) -> None:
        """Show objects found elsewhere, to review them here: a vector file (a CLI run's output) or a
        GeoDataFrame with `label` and `score` columns (and `review`, kept). Nothing is replaced."""
        gdf = read_vector(results, "results")
        missing = [c for c in ("label", "score") if c not in gdf.columns]
        if missing or gdf.crs is None:
            raise UsageError(f"ex.add(): {'no CRS' if not missing else 'no ' + missing[0] + ' column'} in "
                             f"{'the GeoDataFrame' if isinstance(results, gpd.GeoDataFrame) else results}: "
                             f"give a geoseg output (or columns label and score, with a CRS)")
        if REVIEW in gdf.columns:
            gdf = gdf.assign(**{REVIEW: decisions(gdf, "ex.add()") if len(gdf) else []})
        self._merge(gdf, [], None)

    def review(self, index: Any, decision: str | None) -> None:
        """Decide for objects of `results` (an id or a list of them): "accepted", "rejected" or None."""
        if decision is not None and decision not in DECISIONS:
            raise UsageError(f"review(): {decision!r} is not a decision: give 'accepted', 'rejected' or None")
        uids = [index] if np.isscalar(index) else list(index)
        missing = [u for u in uids if u not in self._frame.index]
        if missing:
            raise UsageError(f"review(): no object {missing[0]!r} (see ex.results.index)")
        with self._changing:
            self._frame.loc[uids, REVIEW] = decision
            self.send({"kind": "review", "uids": [int(u) for u in uids], "value": decision})
            if self.state is not None:
                self.state.save_reviews(self._frame)

    def save(self, path: str | Path, layer: str | None = None, *, overwrite: bool = False) -> Path:
        """Write what is kept, as the CLI writes (provenance; atomically; an existing file or layer is replaced
        only with `overwrite`): the objects scoring at least `threshold` and every object decided, each
        with its `review` ("accepted", "rejected" or empty), so that `--reviewed` finds the rejected
        ones as known negatives."""
        f = self._frame
        gdf = f[self._above() | f[REVIEW].notna()].reset_index(drop=True)
        meta = dict(self._provenance, explorer={"threshold": self.threshold,
                                                ACCEPTED: int((gdf[REVIEW] == ACCEPTED).sum()),
                                                REJECTED: int((gdf[REVIEW] == REJECTED).sum())})
        return export.write(gdf, path, layer=layer or "detections", overwrite=overwrite, provenance=meta)

    def cancel(self) -> None:
        """Stop the run going on (after the batch in the model)."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the run started from the map (Run, Run all, a click) to finish."""
        if self._thread is not None:
            self._thread.join(timeout)

    # --- runs ---

    def _model(self) -> Any:
        if self._segmenter is None:
            self.status = "loading the model…"
            options = dict(self._backend_options)
            if isinstance(self._backend, str):
                options.setdefault("score_threshold", self.floor)
            self._segmenter = as_segmenter(self._backend, **options)
        return self._segmenter

    def _area(self, area: Any) -> dict[str, Any]:
        if isinstance(area, str) and area == "all":  # a tile service: the area it was opened over
            web = self._web_area
            return {} if web is None else {"aoi": web.geometry, "bbox_crs": web.crs or self.crs}
        if area is None:
            if len(self.view_lonlat) != 4:
                return {}
            return {"bbox": tuple(self.view_lonlat), "bbox_crs": "EPSG:4326"}
        if isinstance(area, shapely.Geometry):
            return {"aoi": area, "bbox_crs": self.crs}
        return {"bbox": tuple(float(v) for v in area), "bbox_crs": self.crs}

    def _run(self, prompts: list[str], area: Any) -> gpd.GeoDataFrame:
        where = self._area(area)
        boxes = self.exemplars
        if len(boxes):
            boxes = boxes[boxes["prompt"].isna() | boxes["prompt"].isin(prompts)].copy()
            boxes["prompt"] = boxes["prompt"].fillna(prompts[0] if prompts else "example")
        with self._lock:
            try:
                gdf = self._segment("running…", prompts or None, watch=self._found,
                                    exemplars=boxes if len(boxes) else None, **where)
            except Cancelled:
                self.status = "cancelled"
                self.send({"kind": "found", "clear": True})
                raise
            labels = sorted(set(prompts) | set(boxes["prompt"]) if len(boxes) else set(prompts))
            self._merge(gdf, labels, None if not where else self._region(where))
            self.status = f"{len(gdf)} objects found"
        return gdf

    def _run_objects(self) -> gpd.GeoDataFrame:
        with self._lock:
            gdf = self._segment("outlining the objects clicked…", None, objects=self.objects)
            self._merge(gdf, sorted(set(gdf["label"])), None)
            self.status = f"{len(gdf)} objects outlined"
        return gdf

    def _segment(self, status: str, prompts: list[str] | None, **options: Any) -> gpd.GeoDataFrame:
        """`geoseg.segment` of the source with the loaded model, `running` while it goes on."""
        self._cancel.clear()
        self.running, self.status = True, status
        try:
            gdf = segment(self.path, prompts, segmenter=self._model(), **options, **self._run_options)
        finally:
            self.running = False
        self._provenance = dict(gdf.attrs.get("geoseg", {}))
        return gdf

    def _region(self, where: dict[str, Any]) -> shapely.Geometry:
        """The area of a run (`bbox` or `aoi`, in `bbox_crs`) in the source's CRS, placed as the run places it."""
        area = Area.of(**where)
        assert area is not None
        return area.in_crs(self.crs, self.path)

    def _merge(self, gdf: gpd.GeoDataFrame, labels: list[str], region: shapely.Geometry | None) -> None:
        """Put a run's objects in place of those it saw again (its labels, inside its area); decisions
        carry over to the new object that covers the old one best (IoU ≥ 0.5)."""
        with self._changing:
            self._put(gdf, labels, region)

    def _put(self, gdf: gpd.GeoDataFrame, labels: list[str], region: shapely.Geometry | None) -> None:
        old = self._frame
        inside = old["label"].isin(labels)
        if region is not None:
            inside &= shapely.contains(region, old.geometry.representative_point().values)
        gone = old[inside]
        new = gdf.to_crs(self.crs) if gdf.crs is not None and self.crs is not None else gdf
        new = saved.as_results(new, self.crs, range(self._next_uid, self._next_uid + len(new)))
        self._next_uid += len(new)
        decided = gone[gone[REVIEW].notna()]
        if len(decided) and len(new):
            tree = shapely.STRtree(new.geometry.values)
            for geom, decision in zip(decided.geometry.values, decided[REVIEW]):
                hits = tree.query(geom, predicate="intersects")
                if not len(hits):
                    continue
                cand = new.geometry.values[hits]
                iou = shapely.area(shapely.intersection(cand, geom)) / shapely.area(shapely.union(cand, geom))
                if iou.max() >= 0.5:
                    new.loc[new.index[hits[int(iou.argmax())]], REVIEW] = decision
        self._frame = saved.as_results(pd.concat([old[~inside], new]), self.crs)
        self.send({"kind": "found", "clear": True})
        self._send_results()
        if self.state is not None:
            self.state.save_results(self._frame)

    def _found(self, found: Found) -> None:
        """A batch's detections, drawn at once (replaced by the merged objects when the run ends)."""
        if self._cancel.is_set():
            raise Cancelled("cancelled")
        self.status = f"running: {found.done} of {found.total} tiles"
        if not found.pieces:
            return
        pieces = [Instance(p.label, p.score, 1, p.row, p.col, p.mask, p.level) for p in found.pieces]
        gdf = gpd.GeoDataFrame({"score": [p.score for p in found.pieces]},
                               geometry=vectorize.polygons(pieces, found.transform), crs=found.crs)
        meta, buffers = polygon_buffers(gdf)
        self.send({"kind": "found", **meta}, buffers + [gdf["score"].to_numpy(np.float32).tobytes()])

    def _send_results(self) -> None:
        f = self._frame
        labels = sorted(set(f["label"]))
        meta, buffers = polygon_buffers(f)
        code = np.array([labels.index(v) for v in f["label"]], np.uint16)
        review = f[REVIEW].map({ACCEPTED: 1, REJECTED: 2}).fillna(0).to_numpy(np.uint8)
        self.send({"kind": "results", **meta, "labels": labels,
                   "colors": [PALETTE[k % len(PALETTE)] for k in range(len(labels))]},
                  buffers + [f.index.to_numpy(np.uint32).tobytes(), f["score"].to_numpy(np.float32).tobytes(),
                             code.tobytes(), review.tobytes(), f["area_m2"].to_numpy(np.float32).tobytes(),
                             f["level"].to_numpy(np.uint8).tobytes(), self._clicked().to_numpy(np.uint8).tobytes()])

    def _restore(self, kept: saved.Kept) -> None:
        self._frame = saved.as_results(kept.results, self.crs)
        self._next_uid = int(self._frame.index.max()) + 1 if len(self._frame) else 1
        if kept.threshold is not None:
            self.threshold = kept.threshold
        if kept.view is not None:
            self.view_lonlat = kept.view
        self.exemplars = kept.exemplars
        self.objects = kept.clicks

    def _keep(self, change: dict[str, Any]) -> None:
        """Keep a change in the state file: the boxes or the clicks drawn, else the threshold and the view."""
        if self.state is None:
            return
        if change["name"] == "boxes":
            self.state.save_drawn("boxes", self.exemplars)
        elif change["name"] == "clicks":
            self.state.save_drawn("clicks", self.objects)
        else:
            self.state.save_setting()

    # --- messages from the map ---

    def _on_msg(self, _: Any, msg: dict[str, Any], buffers: list[Any]) -> None:
        kind = msg.get("kind")
        if kind == "tile":
            try:
                png = self.tiles.png(int(msg["x"]), int(msg["y"]), int(msg["z"]))
            except Exception as e:  # noqa: BLE001 - a tile that cannot be read is left blank, and said
                png, self.status = None, f"imagery: {type(e).__name__}: {e}"
            self.send({"kind": "tile", "id": msg["id"]}, [] if png is None else [png])
        elif kind == "ready":
            self._send_results()
        elif kind in ("run", "objects"):
            self._background(kind, msg.get("area"))
        elif kind == "cancel":
            self.cancel()
        elif kind == "review":
            self.review([u for u in self.selected if u in self._frame.index], msg.get("value"))
        elif kind == "select":
            self.selected = self._within(msg["bounds"])

    def _within(self, lonlat: Sequence[float]) -> list[int]:
        """The objects shown whose outline meets the box `lonlat` (west, south, east, north)."""
        shown = self._frame[self._above()]
        region = self._region({"bbox": tuple(lonlat), "bbox_crs": "EPSG:4326"})
        return [int(u) for u in shown.index[shapely.intersects(shown.geometry.values, region)]]

    def _background(self, kind: str, area: str | None) -> None:
        if self.running:
            return

        def work() -> None:
            try:
                if kind == "objects":
                    self._run_objects()
                else:
                    self._run([self.prompt] if self.prompt else [], "all" if area == "all" else None)
            except Cancelled:
                pass
            except GeosegError as e:
                self.status = f"error: {e}"
            except Exception as e:  # noqa: BLE001 - shown on the map, not lost in a thread
                self.status = f"error: {type(e).__name__}: {e}"
                traceback.print_exc()

        self.running = True  # at once, so a second press starts nothing
        self._thread = threading.Thread(target=work, name="geoseg-explore", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return (f"Explorer({Path(self.path).name if len(self.path) < 300 else 'mosaic'!r}, "
                f"{len(self._frame)} objects, threshold {self.threshold})")


def _in_lonlat(gdf: Any, name: str) -> tuple[gpd.GeoDataFrame, list[bool]]:
    """Drawings given from code (`ex.<name> = gdf`), in lon/lat, with their `positive` column (default true)."""
    if gdf is None:
        return gpd.GeoDataFrame(geometry=[], crs="EPSG:4326"), []
    if isinstance(gdf, gpd.GeoSeries):
        gdf = gpd.GeoDataFrame(geometry=gdf)
    if not isinstance(gdf, gpd.GeoDataFrame) or gdf.crs is None:
        raise UsageError(f"ex.{name} takes a GeoDataFrame or GeoSeries with a CRS")
    ll = gdf.to_crs("EPSG:4326")
    return ll, [bool(v) for v in (ll["positive"] if "positive" in ll.columns else [True] * len(ll))]
