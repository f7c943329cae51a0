"""`geoseg evaluate`: predicted polygons against reference polygons."""

from __future__ import annotations

import json
import math

import click

from geoseg.analysis.evaluate import ALL, Evaluation, check_errors_path, evaluate, write_errors
from geoseg.cli import main


def _num(v: float, digits: int = 3) -> str:
    return "-" if math.isnan(v) else f"{v:.{digits}f}"


def format_table(result: Evaluation) -> str:
    """The scores as a plain-text table."""
    lines = [f"{result.n_pred} predicted, {result.n_ref} reference objects; "
             f"areas in {result.area_crs or 'the CRS units (no CRS)'}"]
    r = result.review
    if r is not None:
        lines.append(f"REF reviewed: {r['accepted']} accepted (the reference), {r['rejected']} rejected, "
                     f"{r['unreviewed']} not reviewed; at IoU {result.thresholds[0]:.2f}: {r['on_rejected']} false "
                     f"positives on rejected objects, {r['unscored']} predictions on objects not reviewed not scored")
    head = f"{'label':<16} {'IoU':>9} {'TP':>6} {'FP':>6} {'FN':>6} {'prec':>6} {'recall':>6} {'F1':>6} " \
           f"{'mIoU':>6} {'splits':>6} {'merges':>6}"
    lines += [head, "-" * len(head)]
    for s in result.scores:
        lines.append(f"{s.label[:16]:<16} {s.iou:>9.2f} {s.tp:>6} {s.fp:>6} {s.fn:>6} {_num(s.precision):>6} "
                     f"{_num(s.recall):>6} {_num(s.f1):>6} {_num(s.mean_iou):>6} {s.splits:>6} {s.merges:>6}")
    for label, d in result.coco.items():
        lines.append(f"{label[:16]:<16} {'0.50:0.95':>9} {'':>6} {'':>6} {'':>6} {_num(d['precision']):>6} "
                     f"{_num(d['recall']):>6} {_num(d['f1']):>6}   (mean over 10 thresholds)")
    if result.sweep:
        lines += ["", f"sweep of {result.sweep_field} at IoU {result.thresholds[0]:.2f} (label {ALL}):",
                  f"{'threshold':>10} {'kept':>6} {'TP':>6} {'FP':>6} {'FN':>6} {'prec':>6} {'recall':>6} {'F1':>6}"]
        for r in result.sweep:
            lines.append(f"{r.threshold:>10.4g} {r.predictions:>6} {r.tp:>6} {r.fp:>6} {r.fn:>6} "
                         f"{_num(r.precision):>6} {_num(r.recall):>6} {_num(r.f1):>6}")
        best = result.best
        if best is not None:
            lines.append(f"best F1 {best.f1:.3f} at {result.sweep_field} >= {best.threshold:.4g}")
    return "\n".join(lines)


@main.command("evaluate")
@click.argument("pred")
@click.argument("ref")
@click.option("--iou", "ious", type=click.FloatRange(0, 1, min_open=True), multiple=True,
              help="IoU threshold for a match; repeat for several [default: 0.5]. The first one is used "
                   "for --sweep and the error layers.")
@click.option("--label-field", default=None,
              help="Column with labels in both files; objects match only their own label [default: label].")
@click.option("--class-agnostic", is_flag=True, help="Ignore labels: score all objects as one class.")
@click.option("--aoi", default=None, help="Polygon file: score only objects whose centroid lies inside.")
@click.option("--sweep", default=None, help="PRED column (e.g. score): precision/recall/F1 against its threshold.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--errors", "errors", default=None, metavar="FILE.gpkg",
              help="Write the matches and errors at the first --iou to a GeoPackage: layers tp, fp, fn.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --errors file.")
@click.option("--reviewed", is_flag=True,
              help="REF was reviewed in the explorer (a review column): its accepted objects are the reference; "
                   "predictions on objects not reviewed yet are not scored.")
def evaluate_cmd(pred: str, ref: str, ious: tuple[float, ...], label_field: str | None, class_agnostic: bool,
                 aoi: str | None, sweep: str | None, as_json: bool, errors: str | None, overwrite: bool,
                 reviewed: bool) -> None:
    """Score predicted polygons PRED against reference polygons REF (object by object, SpaceNet matching)."""
    if errors is not None:
        check_errors_path(errors, overwrite)  # before the work: a refused file costs nothing
    result = evaluate(pred, ref, iou=ious or (0.5,), label_field=label_field, class_agnostic=class_agnostic,
                      aoi=aoi, sweep=sweep, reviewed=reviewed)
    if errors is not None:
        path = write_errors(result, errors, overwrite=overwrite)
        click.echo(f"{path}: layers tp ({len(result.tp)}), fp ({len(result.fp)}), fn ({len(result.fn)})", err=True)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(format_table(result))
