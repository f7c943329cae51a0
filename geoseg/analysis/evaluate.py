"""Scoring predicted polygons against reference polygons, object by object.

Matching follows the SpaceNet convention: every (prediction, reference) pair
that intersects is a candidate (found with an STRtree); candidates are taken
in descending IoU and a pair is matched when neither member is matched yet and
its IoU is at least the threshold (to 1e-9). Matched pairs are true positives,
unmatched predictions false positives, unmatched references false negatives.
Because the greedy pass takes pairs in descending IoU, the matching at a higher
threshold is a prefix of the matching at a lower one: one pass serves all.

With labels, only objects of the same label are compared; "all" sums the
counts over labels. Areas and IoU are computed in the UTM zone of the
predictions (`GeoSeries.estimate_utm_crs`), after the references are
reprojected to the predictions' CRS.

Splits and merges do not depend on the IoU threshold. A prediction P *covers*
a reference R (and R covers P) when area(P ∩ R) >= 50 % of the area of the
smaller of the two. A *split* is a reference covered by two or more
predictions; a *merge* is a prediction covering two or more references.

With an area of interest, objects are scored when their centroid lies in it;
objects that only reach into it still take part in the matching, so an object
cut by the AOI edge is neither a false positive nor a false negative when its
partner lies across the edge: a matched pair counts when the reference's
centroid is inside, and is ignored otherwise.

A reviewed reference (`reviewed`, a `review` column: see `geoseg.io.review`)
holds the truth in its accepted objects; its rejected and unreviewed objects
are no references (never false negatives). A prediction left unmatched is a
false positive, as always, and is flagged `on_rejected` when half or more of
its area lies on rejected objects (a mistake a person already turned down).
An unmatched prediction lying half or more on objects not reviewed yet (and
not on rejected ones) is not scored: nobody knows yet whether it is right.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely
from pyproj import CRS

from geoseg import errors
from geoseg.errors import NotFoundError, OutputError, UsageError, option
from geoseg.io import files
from geoseg.io.export import check_output
from geoseg.io.review import split_review, warn_unreviewed_use
from geoseg.io.vectors import Vector, polygons_only, read_vector

COCO_IOUS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))  # 0.50:0.95
ALL = "all"
_EPS = 1e-9
_POLYGONAL = ("Polygon", "MultiPolygon")


@dataclass(frozen=True)
class Scores:
    """Counts and rates for one label (or "all") at one IoU threshold.

    Precision is NaN without predictions, recall NaN without references, F1
    (= 2 TP / (2 TP + FP + FN)) NaN without either; mean IoU NaN without matches.
    """

    label: str
    iou: float
    tp: int
    fp: int
    fn: int
    mean_iou: float
    splits: int
    merges: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else math.nan

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else math.nan

    @property
    def f1(self) -> float:
        n = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / n if n else math.nan

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("label", "iou", "tp", "fp", "fn", "precision", "recall", "f1",
                                            "mean_iou", "splits", "merges")}
        return {k: _jsonable(v) for k, v in d.items()}


@dataclass(frozen=True)
class SweepRow:
    """Overall scores keeping only predictions with score >= `threshold`."""

    threshold: float
    predictions: int
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float

    def to_dict(self) -> dict[str, Any]:
        return {k: _jsonable(v) for k, v in self.__dict__.items()}


@dataclass
class Evaluation:
    """The result of `evaluate`.

    Attributes:
        scores: per label (and "all") and per IoU threshold.
        coco: per label, the mean precision, recall and F1 over IoU 0.50:0.95.
        tp: matched pairs at the first threshold, geometry of the prediction, with
            `pred_index`, `ref_index` (row numbers in the inputs), `label`, `iou`,
            and `ref_geometry` as WKT.
        fp: unmatched predictions (their columns, `pred_index`, `best_iou`).
        fn: unmatched references (their columns, `ref_index`, `best_iou`).
        sweep: precision/recall/F1 against the score threshold (with `sweep_field`).
        best: the sweep row with the best F1 (the lowest threshold among ties).
        review: with a reviewed reference, its objects per decision (`accepted`, `rejected`,
            `unreviewed`), and at the first threshold the false positives on rejected objects
            (`on_rejected`) and the predictions on unreviewed ones left unscored (`unscored`);
            None otherwise.
        All GeoDataFrames are in the predictions' CRS.
    """

    thresholds: tuple[float, ...]
    labels: list[str]
    n_pred: int
    n_ref: int
    crs: str | None
    area_crs: str | None
    label_field: str | None
    scores: list[Scores]
    coco: dict[str, dict[str, float]]
    tp: gpd.GeoDataFrame
    fp: gpd.GeoDataFrame
    fn: gpd.GeoDataFrame
    sweep: list[SweepRow] = field(default_factory=list)
    sweep_field: str | None = None
    review: dict[str, int] | None = None

    @property
    def best(self) -> SweepRow | None:
        rows = [r for r in self.sweep if not math.isnan(r.f1)]
        return max(rows, key=lambda r: (r.f1, -r.threshold)) if rows else None

    def score(self, label: str = ALL, iou: float | None = None) -> Scores:
        """The scores of `label` at `iou` (default: the first threshold)."""
        iou = self.thresholds[0] if iou is None else iou
        for s in self.scores:
            if s.label == label and abs(s.iou - iou) < _EPS:
                return s
        raise NotFoundError(f"no scores for label {label!r} at IoU {iou}: the labels are "
                            f"{sorted({s.label for s in self.scores})}, the thresholds {list(self.thresholds)}")

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "predictions": self.n_pred, "references": self.n_ref, "crs": self.crs, "area_crs": self.area_crs,
            "label_field": self.label_field, "iou_thresholds": list(self.thresholds),
            "scores": [s.to_dict() for s in self.scores],
            "coco_0.50:0.95": {k: {m: _jsonable(v) for m, v in d.items()} for k, d in self.coco.items()},
            "sweep": None if not self.sweep else {
                "field": self.sweep_field, "rows": [r.to_dict() for r in self.sweep],
                "best": best.to_dict() if best else None,
            },
            "review": self.review,
        }


def _jsonable(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(v) else round(float(v), 6)
    if isinstance(v, np.integer):
        return int(v)
    return v


def candidate_pairs(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, intersection area) for every prediction i and reference j that overlap."""
    if len(pred) == 0 or len(ref) == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0)
    i, j = shapely.STRtree(ref).query(pred, predicate="intersects")
    inter = shapely.area(shapely.intersection(pred[i], ref[j]))
    keep = inter > 0
    return i[keep], j[keep], inter[keep]


def greedy_match(i: np.ndarray, j: np.ndarray, iou: np.ndarray) -> np.ndarray:
    """Indices of the pairs matched one-to-one in descending IoU (ties: lower i, then j)."""
    order = np.lexsort((j, i, -iou))
    used_p: set[int] = set()
    used_r: set[int] = set()
    chosen = []
    for k in order:
        p, r = int(i[k]), int(j[k])
        if p not in used_p and r not in used_r:
            used_p.add(p)
            used_r.add(r)
            chosen.append(k)
    return np.asarray(chosen, dtype=np.int64)


def _labels(gdf: gpd.GeoDataFrame, field_name: str | None) -> np.ndarray:
    if field_name is None:
        return np.full(len(gdf), ALL, dtype=object)
    return gdf[field_name].astype(str).to_numpy(dtype=object)


def _label_field(pred: gpd.GeoDataFrame, ref: gpd.GeoDataFrame, label_field: str | None,
                 class_agnostic: bool) -> str | None:
    if class_agnostic:
        return None
    if label_field is None:
        return "label" if "label" in pred.columns and "label" in ref.columns else None
    for name, gdf in (("PRED", pred), ("REF", ref)):
        if label_field not in gdf.columns:
            cols = ", ".join(c for c in gdf.columns if c != gdf.geometry.name) or "none"
            raise UsageError(f"{option('label_field', label_field)}: {name} has no such column (columns: {cols})")
    return label_field


def _aoi_geometry(aoi: Any, crs: Any) -> shapely.Geometry:
    if isinstance(aoi, shapely.Geometry):
        return aoi
    frame = isinstance(aoi, gpd.GeoDataFrame)
    named = f"the GeoDataFrame given as {option('aoi')}" if frame else option("aoi", str(aoi))
    gdf = polygons_only(read_vector(aoi, name="aoi"), named)
    if gdf.empty:
        raise UsageError(f"{named}: holds no polygon")
    if crs is not None:
        if gdf.crs is None:
            raise UsageError(f"{named} has no CRS: set one (e.g. ogr2ogr -a_srs EPSG:XXXX)")
        gdf = gdf.to_crs(crs)
    return shapely.union_all(gdf.geometry.values)


def _named(source: Vector, what: str) -> str:
    """An input as its caller named it: `PRED out.gpkg` on the command line, `pred='out.gpkg'` in Python."""
    if isinstance(source, gpd.GeoDataFrame):
        return f"the GeoDataFrame given as {what.lower()}="
    return f"{what} {source}" if errors.cli_terms else option(what.lower(), str(source))


def _check_crs(pred: gpd.GeoDataFrame, ref: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    if (pred.crs is None) != (ref.crs is None):
        which = "PRED" if pred.crs is None else "REF"
        raise UsageError(f"{which} has no CRS and the other has one: set it (e.g. ogr2ogr -a_srs EPSG:XXXX)")
    if ref.crs is not None and not CRS(ref.crs).equals(CRS(pred.crs)):
        ref = ref.to_crs(pred.crs)
    return ref


def evaluate(
    pred: Vector, ref: Vector, *, iou: float | tuple[float, ...] | list[float] = 0.5,
    label_field: str | None = None, class_agnostic: bool = False, aoi: Any = None,
    sweep: str | None = None, sweep_steps: int = 50, reviewed: bool = False,
) -> Evaluation:
    """Score predicted polygons `pred` against reference polygons `ref`.

    Args:
        pred, ref: vector files (any format geopandas reads) or GeoDataFrames;
            `ref` is reprojected to the CRS of `pred`. Invalid polygons are
            repaired (`shapely.make_valid`, polygonal parts) with a warning
            (`geoseg.io.vectors.InvalidGeometryWarning`).
        iou: IoU threshold(s) for a match; the first one gives `tp`/`fp`/`fn`
            and the sweep.
        label_field: column holding labels in both inputs (default `label` when
            both have it); objects only match objects of their label.
        class_agnostic: ignore labels.
        aoi: a polygon file, GeoDataFrame or shapely geometry (in PRED's CRS).
        sweep: a PRED column (e.g. `score`): precision/recall/F1 keeping only
            predictions whose value reaches each of up to `sweep_steps`
            thresholds (its distinct values, or quantiles of them).
        reviewed: `ref` has a `review` column: its accepted objects are the
            truth; see the module docstring for the rejected and unreviewed ones.
    """
    thresholds = tuple(float(t) for t in ((iou,) if isinstance(iou, (int, float)) else iou))
    if not thresholds or any(not 0 < t <= 1 for t in thresholds):
        raise UsageError(f"{option('iou', thresholds)}: IoU thresholds must be in (0, 1], e.g. {option('iou', 0.5)}")
    pred_in = polygons_only(read_vector(pred, "PRED"), _named(pred, "PRED"))
    ref_in = polygons_only(read_vector(ref, "REF"), _named(ref, "REF"))
    review = None  # with `reviewed`: REF split three ways; the accepted are the reference
    if reviewed:
        review = split_review(ref_in, _named(ref, "REF"))
        ref_in = review.accepted
    else:
        warn_unreviewed_use(ref_in, _named(ref, "REF"), option("reviewed"))
    field_name = _label_field(pred_in, ref_in, label_field, class_agnostic)
    if sweep is not None and sweep not in pred_in.columns:
        raise UsageError(f"{option('sweep', sweep)}: PRED has no such column "
                         f"(try {option('sweep', 'score')} on geoseg's output)")
    ref_in = _check_crs(pred_in, ref_in)
    p_lab, r_lab = _labels(pred_in, field_name), _labels(ref_in, field_name)
    if field_name is not None and len(p_lab) and len(r_lab) and not set(p_lab) & set(r_lab):
        raise UsageError(f"{option('label_field', field_name)}: PRED labels {sorted(set(p_lab))[:5]} and REF labels "
                         f"{sorted(set(r_lab))[:5]} have none in common: "
                         f"pass {option('class_agnostic', True)} to ignore labels")
    area_crs = None
    if pred_in.crs is not None and (len(pred_in) or len(ref_in)):
        area_crs = (pred_in if len(pred_in) else ref_in).geometry.estimate_utm_crs()
    to_area = (lambda g: g.to_crs(area_crs)) if area_crs is not None else (lambda g: g)
    pg, rg = to_area(pred_in.geometry).values, to_area(ref_in.geometry).values
    p_in, r_in = np.ones(len(pg), bool), np.ones(len(rg), bool)
    p_use, r_use = np.ones(len(pg), bool), np.ones(len(rg), bool)
    if aoi is not None:
        zone = _aoi_geometry(aoi, pred_in.crs)
        if area_crs is not None:
            zone = gpd.GeoSeries([zone], crs=pred_in.crs).to_crs(area_crs).iloc[0]
        shapely.prepare(zone)
        p_in, r_in = shapely.contains(zone, shapely.centroid(pg)), shapely.contains(zone, shapely.centroid(rg))
        p_use, r_use = shapely.intersects(zone, pg), shapely.intersects(zone, rg)

    i, j, inter = candidate_pairs(pg, rg)
    same = (p_lab[i] == r_lab[j]) & p_use[i] & r_use[j]
    i, j, inter = i[same], j[same], inter[same]
    a_p, a_r = shapely.area(pg), shapely.area(rg)
    pair_iou = inter / (a_p[i] + a_r[j] - inter) if len(i) else np.zeros(0)
    chosen = greedy_match(i, j, pair_iou)
    covers = inter >= 0.5 * np.minimum(a_p[i], a_r[j]) - _EPS
    on_rejected = unscored = np.zeros(len(pg), bool)
    if review is not None:
        on_rejected = _mostly_on(pg, to_area(_check_crs(pred_in, review.rejected).geometry).values)
        unscored = _mostly_on(pg, to_area(_check_crs(pred_in, review.unreviewed).geometry).values) & ~on_rejected

    labels = sorted(set(p_lab[p_use & p_in]) | set(r_lab[r_use & r_in])) if field_name else []
    scores = []
    for t in thresholds:
        m = chosen[pair_iou[chosen] >= t - _EPS]
        for lab in [*labels, ALL]:
            scores.append(_score(lab, t, m, i, j, pair_iou, covers, p_lab, r_lab, p_in & p_use, r_in & r_use,
                                 unscored))
    coco = {}
    for lab in [*labels, ALL]:
        rows = [_score(lab, t, chosen[pair_iou[chosen] >= t - _EPS], i, j, pair_iou, covers, p_lab, r_lab,
                       p_in & p_use, r_in & r_use, unscored) for t in COCO_IOUS]
        coco[lab] = {m: float(np.nanmean([getattr(r, m) for r in rows])) if any(
            not math.isnan(getattr(r, m)) for r in rows) else math.nan for m in ("precision", "recall", "f1")}

    first = chosen[pair_iou[chosen] >= thresholds[0] - _EPS]
    tp, fp, fn = _frames(pred_in, ref_in, first, i, j, pair_iou, p_in & p_use & ~unscored, r_in & r_use, p_lab,
                         on_rejected if review is not None else None)
    summary = None
    if review is not None:
        matched = np.zeros(len(pg), bool)
        matched[i[first]] = True
        left = p_in & p_use & ~matched  # the false positives at the first threshold, as _score counts them
        summary = {"accepted": len(review.accepted), "rejected": len(review.rejected),
                   "unreviewed": len(review.unreviewed), "on_rejected": int((left & on_rejected).sum()),
                   "unscored": int((left & unscored).sum())}
    sweep_rows = _sweep(pred_in[sweep].to_numpy(dtype=float), sweep_steps, thresholds[0], i, j, pair_iou,
                        p_in & p_use, r_in & r_use, unscored) if sweep else []
    return Evaluation(
        thresholds=thresholds, labels=labels, n_pred=int((p_in & p_use).sum()), n_ref=int((r_in & r_use).sum()),
        crs=None if pred_in.crs is None else pred_in.crs.to_string(),
        area_crs=None if area_crs is None else area_crs.to_string(), label_field=field_name, scores=scores,
        coco=coco, tp=tp, fp=fp, fn=fn, sweep=sweep_rows, sweep_field=sweep, review=summary,
    )


def _mostly_on(pred: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Whether half or more of each prediction's area lies on `others` (their overlaps counted once per object)."""
    out = np.zeros(len(pred), bool)
    i, _, inter = candidate_pairs(pred, others)
    if len(i):
        on = np.bincount(i, weights=inter, minlength=len(pred))
        out = on >= 0.5 * shapely.area(pred) - _EPS
        out &= on > 0
    return out


def _score(label: str, t: float, m: np.ndarray, i: np.ndarray, j: np.ndarray, pair_iou: np.ndarray,
           covers: np.ndarray, p_lab: np.ndarray, r_lab: np.ndarray, p_ok: np.ndarray, r_ok: np.ndarray,
           unscored: np.ndarray) -> Scores:
    """Counts for one label at one threshold; `m` are the matched pair indices; `unscored` predictions
    are no false positives."""
    p_sel = p_ok & ((p_lab == label) if label != ALL else True)
    r_sel = r_ok & ((r_lab == label) if label != ALL else True)
    counted = m[r_sel[j[m]]]  # a pair counts when its reference is scored (AOI: centroid inside)
    matched_p = np.zeros(len(p_lab), bool)
    matched_p[i[m]] = True
    matched_r = np.zeros(len(r_lab), bool)
    matched_r[j[m]] = True
    tp = len(counted)
    fp = int((p_sel & ~matched_p & ~unscored).sum())
    fn = int((r_sel & ~matched_r).sum())
    c = covers & r_sel[j]
    splits = int((np.bincount(j[c], minlength=len(r_lab)) >= 2).sum())
    c = covers & p_sel[i]
    merges = int((np.bincount(i[c], minlength=len(p_lab)) >= 2).sum())
    mean_iou = float(pair_iou[counted].mean()) if tp else math.nan
    return Scores(label, t, tp, fp, fn, mean_iou, splits, merges)


def _frames(pred: gpd.GeoDataFrame, ref: gpd.GeoDataFrame, m: np.ndarray, i: np.ndarray, j: np.ndarray,
            pair_iou: np.ndarray, p_ok: np.ndarray, r_ok: np.ndarray, p_lab: np.ndarray,
            on_rejected: np.ndarray | None) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame, gpd.GeoDataFrame]:
    matched_p = np.zeros(len(pred), bool)
    matched_p[i[m]] = True  # also with a reference outside the AOI: that pair is ignored, not a false positive
    m = m[r_ok[j[m]]]
    best_p = np.zeros(len(pred))
    best_r = np.zeros(len(ref))
    np.maximum.at(best_p, i, pair_iou)
    np.maximum.at(best_r, j, pair_iou)
    tp = gpd.GeoDataFrame({
        "pred_index": pred.index.to_numpy()[i[m]], "ref_index": ref.index.to_numpy()[j[m]],
        "label": p_lab[i[m]], "iou": pair_iou[m],
        "ref_geometry": shapely.to_wkt(ref.geometry.values[j[m]]),
    }, geometry=gpd.GeoSeries(pred.geometry.values[i[m]], crs=pred.crs))
    matched_r = np.zeros(len(ref), bool)
    matched_r[j[m]] = True
    fp = pred[p_ok & ~matched_p].copy()
    fp.insert(0, "pred_index", fp.index.to_numpy())
    fp["best_iou"] = best_p[p_ok & ~matched_p]
    if on_rejected is not None:
        fp["on_rejected"] = on_rejected[p_ok & ~matched_p]
    fn = ref[r_ok & ~matched_r].copy()
    fn.insert(0, "ref_index", fn.index.to_numpy())
    fn["best_iou"] = best_r[r_ok & ~matched_r]
    return tp, fp.reset_index(drop=True), fn.reset_index(drop=True)


def sweep_thresholds(values: np.ndarray, steps: int) -> np.ndarray:
    """The distinct values, or `steps` quantiles of them when there are more."""
    values = np.unique(values[np.isfinite(values)])
    if len(values) > steps:
        values = np.unique(np.quantile(values, np.linspace(0, 1, steps), method="lower"))
    return values  # type: ignore[no-any-return]


def _sweep(score: np.ndarray, steps: int, t: float, i: np.ndarray, j: np.ndarray, pair_iou: np.ndarray,
           p_ok: np.ndarray, r_ok: np.ndarray, unscored: np.ndarray) -> list[SweepRow]:
    rows = []
    n_ref = int(r_ok.sum())
    for s in sweep_thresholds(score[p_ok], steps):
        keep = p_ok & (score >= s)
        sel = keep[i] & (pair_iou >= t - _EPS)
        k = np.flatnonzero(sel)
        m = k[greedy_match(i[k], j[k], pair_iou[k])]
        m = m[r_ok[j[m]]]
        matched_p = np.zeros(len(score), bool)
        matched_p[i[m]] = True
        tp, fp = len(m), int((keep & ~matched_p & ~unscored).sum())
        sc = Scores(ALL, t, tp, fp, n_ref - tp, math.nan, 0, 0)
        rows.append(SweepRow(float(s), int(keep.sum()), tp, fp, n_ref - tp, sc.precision, sc.recall, sc.f1))
    return rows


ERROR_LAYERS = ("tp", "fp", "fn")


def check_errors_path(path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Check, before any work, that the error layers can be written to `path` (a new .gpkg)."""
    shown = option("path", str(path), flag="--errors")  # write_errors(result, path)
    if Path(path).suffix.lower() != ".gpkg":
        raise OutputError(f"{shown}: give a .gpkg file name (it holds three layers: tp, fp, fn)")
    try:
        return check_output(path, overwrite)
    except OutputError as e:
        raise OutputError(f"--errors {e}" if errors.cli_terms else str(e)) from None


def write_errors(result: Evaluation, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write the matches and errors at the first IoU threshold to a GeoPackage, atomically.

    Layers (in PRED's CRS): `tp`, the prediction of each matched pair with `pred_index`,
    `ref_index`, `label`, `iou` and the reference as WKT in `ref_geometry`; `fp`, the
    unmatched predictions with their columns, `pred_index` and `best_iou`; `fn`, the
    unmatched references likewise with `ref_index`. An existing file is replaced only
    with `overwrite`; a failure leaves nothing behind.
    """
    target = check_errors_path(path, overwrite)
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp.gpkg")
    meta = json.dumps({"geoseg": "evaluate", "iou": result.thresholds[0], "crs": result.crs})
    tmp.unlink(missing_ok=True)  # layers are added to the file one by one: start from nothing
    try:
        for name in ERROR_LAYERS:
            pyogrio.write_dataframe(getattr(result, name), tmp, layer=name, driver="GPKG", promote_to_multi=True,
                                    geometry_type="MultiPolygon", layer_metadata={"geoseg": meta})
        files.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def summary_frame(result: Evaluation) -> pd.DataFrame:
    """The scores as a DataFrame (one row per label and threshold)."""
    return pd.DataFrame([s.to_dict() for s in result.scores])
