"""geoseg evaluate: hand-made cases with hand-computed results, the OSBS sample, the CLI."""

import json
import math
import time
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from conftest import one_line_error, run
from shapely import box

from geoseg.analysis.evaluate import evaluate, greedy_match
from geoseg.errors import GeosegWarning

UTM = "EPSG:32617"
X0, Y0 = 404000.0, 3286000.0  # UTM 17N near Gainesville: the area CRS is the data's own
SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"


def sq(x, y, w=10.0, h=10.0):
    return box(X0 + x, Y0 + y, X0 + x + w, Y0 + y + h)


def frame(geoms, crs=UTM, **cols):
    return gpd.GeoDataFrame(cols, geometry=gpd.GeoSeries(geoms, crs=crs))


def test_perfect_match():
    g = [sq(0, 0), sq(20, 0), sq(0, 20, 5, 7)]
    s = evaluate(frame(g), frame(g)).score()
    assert (s.tp, s.fp, s.fn, s.splits, s.merges) == (3, 0, 0, 0, 0)
    assert s.precision == s.recall == s.f1 == 1.0 and s.mean_iou == pytest.approx(1.0)


def test_split_one_reference_two_predictions():
    # ref 10x10; predictions its left 6 m (IoU 60/100) and right 4 m (IoU 40/100), each wholly inside it
    r = evaluate(frame([sq(0, 0, 6), sq(6, 0, 4)]), frame([sq(0, 0)]))
    s = r.score()
    assert (s.tp, s.fp, s.fn, s.splits, s.merges) == (1, 1, 0, 1, 0)
    assert s.mean_iou == pytest.approx(0.6) and s.precision == 0.5 and s.recall == 1.0
    assert s.f1 == pytest.approx(2 / 3)
    assert r.tp["pred_index"].tolist() == [0] and r.fp["pred_index"].tolist() == [1]
    assert r.fp["best_iou"].tolist() == pytest.approx([0.4])


def test_merge_one_prediction_two_references():
    r = evaluate(frame([sq(0, 0)]), frame([sq(0, 0, 6), sq(6, 0, 4)]))
    s = r.score()
    assert (s.tp, s.fp, s.fn, s.splits, s.merges) == (1, 0, 1, 0, 1)
    assert r.fn["ref_index"].tolist() == [1]


def test_covered_means_half_of_the_smaller():
    # a 10x10 reference and two 4x10 predictions reaching 2 m (50 %) and 1.9 m (47.5 %) into it
    s = evaluate(frame([sq(-2, 0, 4), sq(10 - 1.9, 0, 4)]), frame([sq(0, 0)])).score()
    assert s.splits == 0  # only one prediction covers it
    s = evaluate(frame([sq(-2, 0, 4), sq(8, 0, 4)]), frame([sq(0, 0)])).score()
    assert s.splits == 1 and s.tp == 0  # both cover it (50 % each), neither reaches IoU 0.5


def test_miss_and_false_alarm():
    s = evaluate(frame([sq(0, 0), sq(100, 100)]), frame([sq(0, 0), sq(50, 50)])).score()
    assert (s.tp, s.fp, s.fn) == (1, 1, 1) and s.f1 == 0.5


def test_shifted_polygon_iou_by_hand():
    # shifted 2 m along x: intersection 8 x 10 = 80, union 200 - 80 = 120, IoU 2/3
    r = evaluate(frame([sq(2, 0)]), frame([sq(0, 0)]), iou=(0.5, 0.7))
    assert r.score(iou=0.5).mean_iou == pytest.approx(2 / 3)
    assert (r.score(iou=0.5).tp, r.score(iou=0.7).tp, r.score(iou=0.7).fp, r.score(iou=0.7).fn) == (1, 0, 1, 1)
    assert r.tp["iou"].tolist() == pytest.approx([2 / 3])
    # 0.50, 0.55, 0.60, 0.65 <= 2/3 < 0.70: matched at 4 of the 10 COCO thresholds
    assert r.coco["all"]["f1"] == pytest.approx(0.4)


def test_match_exactly_at_the_threshold():
    # shifted 10/3 m: intersection 20/3 * 10, union 400/3 ... IoU exactly 0.5 up to rounding
    r = evaluate(frame([sq(10 / 3, 0)]), frame([sq(0, 0)]))
    assert r.score().tp == 1 and r.score().mean_iou == pytest.approx(0.5)


def test_greedy_takes_the_best_pair_first():
    # pred 0 overlaps ref 0 (IoU 0.5) and ref 1 (0.9); pred 1 only ref 1 (0.8). Greedy (SpaceNet) takes
    # (0, 1) first, which leaves pred 1 and ref 0 unmatched: one match, where a maximum matching has two
    i, j, iou = np.array([0, 0, 1]), np.array([0, 1, 1]), np.array([0.5, 0.9, 0.8])
    assert greedy_match(i, j, iou).tolist() == [1]
    # ties go to the lower prediction index
    assert greedy_match(np.array([1, 0]), np.array([0, 0]), np.array([0.7, 0.7])).tolist() == [1]


def test_crs_mismatch_reference_is_reprojected():
    g = [sq(0, 0), sq(30, 0), sq(0, 30)]
    r = evaluate(frame(g), frame(g).to_crs(4326))
    s = r.score()
    assert (s.tp, s.fp, s.fn) == (3, 0, 0) and s.mean_iou == pytest.approx(1.0, abs=1e-6)
    assert r.area_crs == UTM and r.crs == UTM
    # the other way round: predictions in degrees, areas still in UTM 17N
    r = evaluate(frame(g).to_crs(4326), frame(g))
    assert r.score().tp == 3 and r.area_crs == UTM and r.tp.crs.to_epsg() == 4326


def test_empty_inputs():
    empty = frame([])
    s = evaluate(empty, frame([sq(0, 0), sq(20, 0)])).score()
    assert (s.tp, s.fp, s.fn) == (0, 0, 2) and math.isnan(s.precision) and s.recall == 0 and s.f1 == 0
    s = evaluate(frame([sq(0, 0)]), empty).score()
    assert (s.tp, s.fp, s.fn) == (0, 1, 0) and s.precision == 0 and math.isnan(s.recall)
    s = evaluate(empty, empty).score()
    assert (s.tp, s.fp, s.fn) == (0, 0, 0) and math.isnan(s.f1)


def bow_tie(x, y, w=10.0):
    """A self-intersecting square (corners crossed): two triangles meeting at its centre, area 0 as drawn."""
    return shapely.Polygon([(X0 + x, Y0 + y), (X0 + x + w, Y0 + y + w), (X0 + x + w, Y0 + y), (X0 + x, Y0 + y + w)])


def triangles(x, y, w=10.0):
    """The bow-tie's two triangles as one valid MultiPolygon."""
    c = (X0 + x + w / 2, Y0 + y + w / 2)
    return shapely.MultiPolygon([shapely.Polygon([(X0 + x, Y0 + y), c, (X0 + x, Y0 + y + w)]),
                                 shapely.Polygon([(X0 + x + w, Y0 + y), c, (X0 + x + w, Y0 + y + w)])])


def test_invalid_polygons_are_repaired_with_a_warning():
    assert not bow_tie(0, 0).is_valid and bow_tie(0, 0).area == 0 and triangles(0, 0).is_valid
    bows, valid = frame([bow_tie(0, 0), sq(50, 0)]), frame([triangles(0, 0), sq(50, 0)])
    with pytest.warns(GeosegWarning, match=r"^the GeoDataFrame given as pred=: 1 of 2 polygons invalid .*"
                                           r"shapely.make_valid keeping their polygonal parts$"):
        s = evaluate(bows, valid).score()
    assert (s.tp, s.fp, s.fn) == (2, 0, 0) and s.mean_iou == pytest.approx(1.0)  # the bow-tie matches its triangles
    with pytest.warns(GeosegWarning, match="given as ref=: 1 of 2 polygons invalid"):
        s = evaluate(valid, bows).score()
    assert (s.tp, s.fp, s.fn) == (2, 0, 0)
    with pytest.warns(GeosegWarning) as caught:
        evaluate(bows, bows)
    assert sorted(str(w.message).split(":")[0] for w in caught) == ["the GeoDataFrame given as pred=",
                                                                   "the GeoDataFrame given as ref="]
    flat = shapely.Polygon([(X0, Y0), (X0 + 10, Y0), (X0 + 5, Y0), (X0, Y0)])  # a line drawn as a polygon
    with pytest.warns(GeosegWarning, match="given as pred=: 1 of 2 polygons invalid .*; 1 had no area left and "
                                           "cannot match$"):
        s = evaluate(frame([flat, sq(50, 0)]), valid).score()
    assert (s.tp, s.fp, s.fn) == (1, 1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeosegWarning)  # valid polygons: not a word
        evaluate(valid, valid)


def test_per_label_and_overall():
    pred = frame([sq(0, 0), sq(20, 0), sq(40, 0)], label=["tree", "tree", "house"])
    # the house at 20 is not a tree: it matches nothing; the house at 40 is found
    ref = frame([sq(0, 0), sq(20, 0), sq(40, 0)], label=["tree", "house", "house"])
    r = evaluate(pred, ref)
    assert r.label_field == "label" and r.labels == ["house", "tree"]
    tree, house, overall = r.score("tree"), r.score("house"), r.score()
    assert (tree.tp, tree.fp, tree.fn) == (1, 1, 0)
    assert (house.tp, house.fp, house.fn) == (1, 0, 1)
    assert (overall.tp, overall.fp, overall.fn) == (2, 1, 1)
    s = evaluate(pred, ref, class_agnostic=True).score()
    assert (s.tp, s.fp, s.fn) == (3, 0, 0)


def test_aoi_scores_objects_by_centroid_and_ignores_pairs_across_its_edge():
    aoi = box(X0 - 100, Y0 - 100, X0 + 25, Y0 + 100)
    # inside: one match, one false alarm; far outside: a miss; across the edge: reference centroid at x=27
    # (outside) matched by a prediction whose centroid is at x=24 (inside): ignored, not a false positive
    pred = frame([sq(0, 0), sq(0, 40), sq(19, 0)])
    ref = frame([sq(0, 0), sq(60, 60), sq(22, 0)])
    e = evaluate(pred, ref, aoi=aoi)
    s = e.score()
    assert (s.tp, s.fp, s.fn) == (1, 1, 0)
    assert (len(e.tp), len(e.fp), len(e.fn)) == (1, 1, 0)  # the error layers count as the scores do
    s = evaluate(pred, ref).score()
    assert (s.tp, s.fp, s.fn) == (2, 1, 1)


def test_sweep_over_scores():
    # refs at 0 and 20; predictions: right (0.9), wrong place (0.8), right (0.3)
    pred = frame([sq(0, 0), sq(50, 50), sq(20, 0)], score=[0.9, 0.8, 0.3])
    r = evaluate(pred, frame([sq(0, 0), sq(20, 0)]), sweep="score")
    rows = {row.threshold: row for row in r.sweep}
    assert sorted(rows) == pytest.approx([0.3, 0.8, 0.9])
    assert (rows[0.3].tp, rows[0.3].fp, rows[0.3].fn) == (2, 1, 0) and rows[0.3].f1 == pytest.approx(0.8)
    assert rows[0.8].f1 == pytest.approx(0.5) and rows[0.9].f1 == pytest.approx(2 / 3)
    assert r.best.threshold == pytest.approx(0.3)


def test_scales_to_tens_of_thousands():
    # 20 000 squares of 8 m, 10 m apart, against copies shifted 2 m: IoU 6*8 / (128 - 48) = 0.6 each,
    # and a shifted square only touches its neighbour (no area): no other candidate pair
    xs, ys = np.meshgrid(np.arange(200) * 10.0, np.arange(100) * 10.0)
    ref = shapely.box(X0 + xs.ravel(), Y0 + ys.ravel(), X0 + xs.ravel() + 8, Y0 + ys.ravel() + 8)
    pred = shapely.box(X0 + xs.ravel() + 2, Y0 + ys.ravel(), X0 + xs.ravel() + 10, Y0 + ys.ravel() + 8)
    start = time.perf_counter()
    s = evaluate(frame(pred), frame(ref)).score()
    assert time.perf_counter() - start < 10
    assert (s.tp, s.fp, s.fn) == (20000, 0, 0) and s.mean_iou == pytest.approx(0.6)


def test_osbs_reference_boxes_against_a_shifted_copy():
    """Each axis-aligned w x h box shifted by d along x: IoU (w - d) h / ((w + d) h) = (w - d) / (w + d)."""
    ref = gpd.read_file(SAMPLE / "OSBS_029_trees.gpkg", layer="trees")
    d = 0.5  # metres, 5 pixels
    pred = ref.copy()
    pred["geometry"] = ref.geometry.translate(xoff=d)
    minx, _, maxx, _ = ref.geometry.bounds.to_numpy().T
    w = maxx - minx
    expected = (w - d) / (w + d)
    r = evaluate(pred, ref)
    s = r.score()
    hit = expected >= 0.5
    assert (r.tp["pred_index"] == r.tp["ref_index"]).all()  # every box matched to its own shifted copy
    assert s.tp == hit.sum() == len(ref)
    assert sorted(r.tp["iou"]) == pytest.approx(sorted(expected[hit]))
    assert s.mean_iou == pytest.approx(expected.mean())
    r = evaluate(pred, ref, iou=0.9)
    assert r.score().tp == (expected >= 0.9).sum()


def _write(gdf, path):
    gdf.to_file(path)
    return path


def test_cli_table_and_json(tmp_path):
    pred = _write(frame([sq(0, 0, 6), sq(6, 0, 4), sq(50, 0)], score=[0.9, 0.6, 0.7], label=["t", "t", "t"]),
                  tmp_path / "pred.gpkg")
    ref = _write(frame([sq(0, 0), sq(50, 0)], label=["t", "t"]).to_crs(4326), tmp_path / "ref.geojson")
    r = run("evaluate", pred, ref, "--sweep", "score")
    assert r.exit_code == 0, r.output
    assert "0.50:0.95" in r.output and "best F1" in r.output and "splits" in r.output
    r = run("evaluate", pred, ref, "--json", "--iou", "0.5", "--iou", "0.75")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    overall = [s for s in data["scores"] if s["label"] == "all"]
    assert [s["iou"] for s in overall] == [0.5, 0.75]
    assert (overall[0]["tp"], overall[0]["fp"], overall[0]["fn"], overall[0]["splits"]) == (2, 1, 0, 1)
    assert data["area_crs"] == UTM and data["sweep"] is None


def test_cli_errors(tmp_path):
    good = _write(frame([sq(0, 0)], label=["a"]), tmp_path / "good.gpkg")
    assert "no such file" in one_line_error(run("evaluate", tmp_path / "nope.gpkg", good))
    junk = tmp_path / "junk.gpkg"
    junk.write_text("not a vector")
    assert "not a readable vector file" in one_line_error(run("evaluate", junk, good))
    assert "--label-field" in one_line_error(run("evaluate", good, good, "--label-field", "kind"))
    other = _write(frame([sq(0, 0)], label=["b"]), tmp_path / "other.gpkg")
    assert "--class-agnostic" in one_line_error(run("evaluate", good, other))
    assert run("evaluate", good, other, "--class-agnostic").exit_code == 0
    points = _write(frame([shapely.Point(X0, Y0)]), tmp_path / "points.gpkg")
    assert "Point" in one_line_error(run("evaluate", points, good))
    nocrs = _write(frame([sq(0, 0)], crs=None), tmp_path / "nocrs.gpkg")
    assert "no CRS" in one_line_error(run("evaluate", good, nocrs))
    assert "--sweep" in one_line_error(run("evaluate", good, good, "--sweep", "score"))
    assert "--iou" in one_line_error(run("evaluate", good, good, "--iou", "0"))


def test_cli_warns_of_invalid_polygons_in_pred_and_ref(tmp_path):
    bows = _write(frame([bow_tie(0, 0), bow_tie(20, 0), sq(50, 0)]), tmp_path / "bows.gpkg")
    valid = _write(frame([triangles(0, 0), triangles(20, 0), sq(50, 0)]), tmp_path / "valid.gpkg")
    for pred, ref, named in ((bows, valid, f"PRED {bows}"), (valid, bows, f"REF {bows}")):
        r = run("evaluate", pred, ref, "--json")
        assert r.exit_code == 0, r.output
        assert r.stderr.splitlines() == [f"geoseg: warning: {named}: 2 of 3 polygons invalid (e.g. self-intersecting), "
                                         "repaired with shapely.make_valid keeping their polygonal parts"]
        overall = next(s for s in json.loads(r.stdout)["scores"] if s["label"] == "all")
        assert (overall["tp"], overall["fp"], overall["fn"]) == (3, 0, 0)
    r = run("evaluate", valid, valid)
    assert r.exit_code == 0 and "warning" not in r.output


def test_cli_writes_the_error_layers(tmp_path):
    # pred 0 matches ref 0 shifted 2 m (IoU 2/3); pred 1 is a false alarm; ref 1 is missed
    pred = _write(frame([sq(2, 0), sq(100, 100)], score=[0.9, 0.4]), tmp_path / "pred.gpkg")
    ref = _write(frame([sq(0, 0), sq(50, 50)], kind=["oak", "pine"]).to_crs(4326), tmp_path / "ref.geojson")
    errors = tmp_path / "errors.gpkg"
    r = run("evaluate", pred, ref, "--errors", errors)
    assert r.exit_code == 0, r.output
    assert [name for name, _ in pyogrio.list_layers(errors)] == ["tp", "fp", "fn"]
    tp = pyogrio.read_dataframe(errors, layer="tp")
    fp = pyogrio.read_dataframe(errors, layer="fp")
    fn = pyogrio.read_dataframe(errors, layer="fn")
    assert tp.crs.to_epsg() == 32617 and fn.crs.to_epsg() == 32617  # all in PRED's CRS
    assert (tp["pred_index"].tolist(), tp["ref_index"].tolist()) == ([0], [0])
    assert tp["iou"].tolist() == pytest.approx([2 / 3])
    assert tp.geometry[0].equals(sq(2, 0))
    assert shapely.from_wkt(tp["ref_geometry"][0]).hausdorff_distance(sq(0, 0)) < 1e-3
    assert fp["pred_index"].tolist() == [1] and fp["score"].tolist() == [0.4] and fp.geometry[0].equals(sq(100, 100))
    assert fn["ref_index"].tolist() == [1] and fn["kind"].tolist() == ["pine"] and fn["best_iou"].tolist() == [0]
    assert fn.geometry[0].hausdorff_distance(sq(50, 50)) < 1e-3  # back from lon/lat
    # an existing file is refused, before any work, and left as it was
    before = errors.read_bytes()
    assert "--overwrite" in one_line_error(run("evaluate", pred, ref, "--errors", errors))
    assert errors.read_bytes() == before
    r = run("evaluate", ref, ref, "--errors", errors, "--overwrite")  # a perfect match: fp and fn are empty
    assert r.exit_code == 0, r.output
    assert len(pyogrio.read_dataframe(errors, layer="tp")) == 2
    assert len(pyogrio.read_dataframe(errors, layer="fp")) == len(pyogrio.read_dataframe(errors, layer="fn")) == 0
    assert "--errors" in one_line_error(run("evaluate", pred, ref, "--errors", tmp_path / "errors.geojson"))
    assert "does not exist" in one_line_error(run("evaluate", pred, ref, "--errors", tmp_path / "no" / "e.gpkg"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["errors.gpkg", "pred.gpkg", "ref.geojson"]
