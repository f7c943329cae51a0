"""Object prompts run: each object segmented in a window centred on its prompts, grown until whole.

The window is a tile of `tile_size` pixels of the grid read, about centred on the
prompts (on a grid of a quarter window, so that clicks near each other share a window
and a segmenter that keeps a window's features runs its backbone once). Where the object's
mask reaches the window's edge (inside the raster), the window is read again
twice as wide and twice as coarse (nearest-neighbour, so at most 2, 4, 8 times
the run's pixel; `GROWTH`), until the mask stays off its edges or the last
scale is reached: the object's `whole` column says which. An object larger
than the window so comes back whole, its outline at the coarser pixel.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
from scipy import ndimage

from geoseg.core import vectorize
from geoseg.core.exemplars import centrality, home_tile
from geoseg.core.merge import Instance
from geoseg.core.objects import ObjectPrompt, segment_objects
from geoseg.core.segmenter import Detection
from geoseg.core.tiling import TilePlan, Window, plan_tiles
from geoseg.io import export
from geoseg.io.objects import ObjectFile, Placed, place
from geoseg.io.raster import RasterSource
from geoseg.io.sources import unique_names
from geoseg.run.assemble import provenance
from geoseg.run.engine import Engine
from geoseg.run.settings import Settings

log = logging.getLogger("geoseg")

GROWTH = (1, 2, 4, 8)  #: pixels of the grid read per pixel the model is given, tried in turn
MAX_CLICKS = 8  #: clicks on an object's parts in one window of its outline, at most (the largest parts)


def _touches(mask: np.ndarray, origin: tuple[int, int], valid: np.ndarray,
             raster_edge: tuple[bool, bool, bool, bool]) -> bool:
    """Whether a detection reaches the edge of its window where the window lies inside the raster;
    `raster_edge`: whether the window's top, left, bottom and right edges are the raster's (an
    object reaching the raster's edge is whole as far as it can be seen)."""
    side_h, side_w = valid.shape
    r, c = origin
    h, w = mask.shape
    top, left, bottom, right = raster_edge
    edges = []
    if r == 0 and not top:
        edges.append(valid[0, c:c + w][mask[0]])
    if c == 0 and not left:
        edges.append(valid[r:r + h, 0][mask[:, 0]])
    if r + h == side_h and not bottom:
        edges.append(valid[-1, c:c + w][mask[-1]])
    if c + w == side_w and not right:
        edges.append(valid[r:r + h, -1][mask[:, -1]])
    return any(e.any() for e in edges)


def _read(src: RasterSource, window: Window, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """`window` read at `scale` times its pixel (every `scale`-th pixel): a tile of window / scale."""
    rgb, valid = src.read(window)
    return rgb[::scale, ::scale], valid[::scale, ::scale]


def _extent(prompt: ObjectPrompt) -> tuple[float, float, float, float]:
    """x0, y0, x1, y1 around every click and the box of `prompt`."""
    corners = [np.asarray(prompt.points, float).reshape(-1, 2)]
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        corners.append(np.array([[x0, y0], [x1, y1]]))
    (lx, ly), (hx, hy) = np.vstack(corners).min(axis=0), np.vstack(corners).max(axis=0)
    return float(lx), float(ly), float(hx), float(hy)


def plan_window(prompt: ObjectPrompt, plan: TilePlan) -> Window | None:
    """The tile of `plan` holding every prompt most centrally, an eighth of a tile from its edges:
    the window a text run reads too (so both use one backbone pass); None where none does."""
    box = _extent(prompt)
    tile = plan.tile(home_tile(box, plan))
    w = tile.window
    if centrality(box, (w.row, w.col, w.height, w.width)) < plan.tile_size / 8:
        return None
    return w


def one_object(src: RasterSource, prompt: ObjectPrompt, segmenter: Any, side: int,
               first: Window | None = None) -> tuple[Detection, bool] | None:
    """The object `prompt` points at (in `src`'s pixels): its detection in `src`'s pixels (its
    origin a raster row and column) and whether it is whole; None where nothing is under it.
    `first`: the window to read first (a tile of the run's plan), else one about centred."""
    pts = np.asarray(prompt.points, float).reshape(-1, 2)
    positive = np.asarray(prompt.positive, bool)
    lx, ly, hx, hy = _extent(prompt)
    cx, cy = (lx + hx) / 2, (ly + hy) / 2
    need = 1.25 * max(hx - lx, hy - ly)  # every click and the box, with a margin around them
    scales = [s for s in GROWTH if side * s >= need] or [GROWTH[-1]]
    # the first positive click's pixel is one of those a coarser read keeps (a thin object stays under it)
    anchor = pts[positive][0] if positive.any() else (cx, cy)
    found: tuple[Detection, int, int, int, bool] | None = None
    for scale in scales:
        extent = side * scale
        # on a grid of a quarter window: clicks near each other share a window (and its kept features)
        step = max(1, extent // 4)
        col0, row0 = int(round((cx - extent / 2) / step)) * step, int(round((cy - extent / 2) / step)) * step
        col0 += (int(anchor[0]) - col0) % scale
        row0 += (int(anchor[1]) - row0) % scale
        if scale == 1 and first is not None:
            row0, col0 = first.row, first.col
        tile, valid = _read(src, Window(row0, col0, extent, extent), scale)
        det = segment_objects(segmenter, tile, [prompt.moved(col0, row0, scale)])[0]
        if det is None:
            break
        edge = (row0 <= 0, col0 <= 0, row0 + extent >= src.height, col0 + extent >= src.width)
        whole = not _touches(np.asarray(det.mask, bool), det.origin, valid, edge)
        found = (det, row0, col0, scale, whole)
        if whole:
            break
    if found is None:
        return None
    det, row0, col0, scale, whole = found
    r, c = det.origin
    if scale == 1:
        return Detection(det.label, det.score, np.asarray(det.mask, bool), (row0 + r, col0 + c)), whole
    coarse = np.asarray(det.mask, bool).repeat(scale, axis=0).repeat(scale, axis=1)
    fine = _refine(src, coarse, (row0 + r * scale, col0 + c * scale), scale, side, segmenter, prompt)
    return (replace(fine, score=det.score), whole) if fine is not None else None


def _refine(src: RasterSource, coarse: np.ndarray, origin: tuple[int, int], scale: int, side: int, segmenter: Any,
            prompt: ObjectPrompt) -> Detection | None:
    """An object found on a coarser read (`coarse`: its mask brought back to the run's pixels, at
    `origin`) segmented again at the run's pixel near its outline: its inside stays, and within
    `scale` pixels of its edge each tile of `side` pixels is asked again, clicked on the object's
    inside there (one click per part of it in the tile)."""
    pad = scale
    mask = np.pad(coarse, pad)
    r0, c0 = origin[0] - pad, origin[1] - pad
    sure = ndimage.binary_erosion(mask, iterations=scale)
    maybe = ndimage.binary_dilation(mask, iterations=scale)
    out = sure.copy()
    h, w = mask.shape
    for tr in range(0, h, side):
        for tc in range(0, w, side):
            part = (slice(tr, min(tr + side, h)), slice(tc, min(tc + side, w)))
            edge = maybe[part] & ~sure[part]
            if not edge.any():
                continue
            inside = sure[part] if sure[part].any() else mask[part]
            labels, n = ndimage.label(inside)
            if n == 0:
                out[part] |= mask[part]  # a sliver the coarser read saw alone: kept as it saw it
                continue
            # a click on each of its largest parts there, at the pixel farthest from the part's edge
            sizes = ndimage.sum_labels(inside, labels, index=np.arange(1, n + 1))
            parts = (np.argsort(-sizes)[:MAX_CLICKS] + 1).tolist()
            depth = ndimage.distance_transform_edt(inside)
            clicks = [(x + 0.5, y + 0.5) for y, x in ndimage.maximum_position(depth, labels, index=parts)]
            tile, _ = src.read(Window(r0 + tr, c0 + tc, side, side))
            ask = ObjectPrompt(np.array(clicks), np.ones(len(clicks), bool), None, prompt.label)
            det = segment_objects(segmenter, tile, [ask])[0]
            if det is None:
                out[part] |= mask[part]
                continue
            got = np.zeros((side, side), bool)
            dr, dc = det.origin
            got[dr:dr + det.mask.shape[0], dc:dc + det.mask.shape[1]] = np.asarray(det.mask, bool)
            out[part] |= got[:part[0].stop - tr, :part[1].stop - tc] & maybe[part]
    rows, cols = np.flatnonzero(out.any(axis=1)), np.flatnonzero(out.any(axis=0))
    if rows.size == 0:
        return None
    crop = out[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return Detection(prompt.label, 0.0, crop, (r0 + int(rows[0]), c0 + int(cols[0])))


def first_window(prompt: ObjectPrompt, src: RasterSource, settings: Settings) -> Window | None:
    """The tile of the run's plan over `src` to read an object in first, where one holds its prompts
    well inside (`plan_window`): the window a text run over the whole raster reads too. None with
    an area (a text run then reads its own window's tiles)."""
    if settings.read.area is not None:
        return None
    return plan_window(prompt, plan_tiles(src.height, src.width, settings.tile_size, settings.overlap))


def _by_input(placed: list[Placed]) -> list[tuple[int, list[Placed]]]:
    """The objects placed, grouped by the input holding them (each input opened once)."""
    return [(s, [p for p in placed if p.source == s]) for s in sorted({p.source for p in placed})]


def window_pixels(paths: list[Any], placed: list[Placed], settings: Settings) -> list[np.ndarray]:
    """The pixels of each object's first window (`first_window`), as a text run reads them."""
    read = replace(settings.read, area=None)
    out = []
    for s, mine in _by_input(placed):
        with RasterSource(paths[s], read) as src:
            windows = [first_window(p.prompt, src, settings) for p in mine]
            out += [src.read(w)[0] for w in windows if w is not None]
    return out


def run_objects(paths: list[Any], objects: ObjectFile, settings: Settings, engine: Engine, *,
                output: Any = None, layer: str = "detections", overwrite: bool = False,
                placed: list[Placed] | None = None) -> gpd.GeoDataFrame:
    """Segment every object of `objects` on the input that holds it (`placed`, where the caller
    placed them already); one polygon per object found (columns id, object, label, score, whole,
    area_m2, source), written to `output` if given. An object held well inside a tile of the run's
    plan is read first in that tile (see `first_window`)."""
    placed = place(objects, paths, settings.read) if placed is None else placed
    names = unique_names(paths)
    read = replace(settings.read, area=None)
    frames = []
    for s, mine in _by_input(placed):
        with RasterSource(paths[s], read) as src:
            rows, instances = [], []
            for p in mine:
                got = one_object(src, p.prompt, engine.segmenter, settings.tile_size,
                                 first_window(p.prompt, src, settings))
                if got is None:
                    log.info("%s: nothing found under object %r", names[s], objects.ids[p.index])
                    continue
                det, whole = got
                instances.append(Instance(det.label, float(det.score), 1, det.origin[0], det.origin[1],
                                          np.asarray(det.mask, bool)))
                rows.append((objects.ids[p.index], whole))
            if not instances:
                continue
            gdf = vectorize.to_frame(instances, src.transform, src.crs, source=names[s], simplify=settings.simplify)
            gdf.insert(0, "object", [r[0] for r in rows])
            gdf["whole"] = [r[1] for r in rows]
            frames.append(vectorize.finish(gdf, src.transform, settings.dst_crs, settings.min_area))
    crs = settings.dst_crs if settings.dst_crs is not None else (frames[0].crs if frames else None)
    out = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=crs) if frames else gpd.GeoDataFrame(
        {"object": [], "label": [], "score": [], "whole": [], "area_m2": [], "source": []}, geometry=[], crs=crs)
    out = out.drop(columns=[c for c in ("n_tiles", "level", "part") if c in out.columns])
    out.insert(0, "id", np.arange(1, len(out) + 1, dtype=np.int64))
    out = out[["id", "object", "label", "score", "whole", "area_m2", "source", "geometry"]]
    meta = {**provenance(engine, settings, names, inputs=paths), "objects": objects.fingerprint()}
    out.attrs["geoseg"] = meta
    if output is not None:
        with export.Writer(output, layer=layer, overwrite=overwrite, provenance=meta) as w:
            if len(out):
                w.write(out)
            w.commit(out.iloc[:0])
    return out
