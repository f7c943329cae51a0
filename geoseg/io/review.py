"""Reviewed results: a `review` column saying, object by object, what a person decided.

`accepted`: the object is right; `rejected`: it is wrong (no such object
there); empty (null or ""): nobody has looked at it yet. The explorer writes
the column; `export-dataset`, `train`, `distill` and `evaluate` read it with
`--reviewed`. Values are read case-blind, spaces trimmed; anything else is
refused, naming the file.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd

from geoseg.errors import GeosegWarning, UsageError, option
from geoseg.io.vectors import Vector, polygons_only, read_vector, shown

REVIEW = "review"  # the column
ACCEPTED = "accepted"
REJECTED = "rejected"
DECISIONS = (ACCEPTED, REJECTED)  # an empty value (None or "") means not reviewed yet


def decision(value: object) -> str | None:
    """ACCEPTED, REJECTED or None (not reviewed) for one value of the column; ValueError for others."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if not isinstance(value, str):
        raise ValueError(value)
    text = value.strip().lower()
    if not text:
        return None
    if text not in DECISIONS:
        raise ValueError(value)
    return text


def decisions(gdf: gpd.GeoDataFrame, named: str) -> np.ndarray:
    """The review of each row (ACCEPTED, REJECTED or None), refusing, naming `named`, a file
    without the column or a value that is none of them."""
    if REVIEW not in gdf.columns:
        raise UsageError(f"{named} has no {REVIEW} column: {option('reviewed')} needs a file reviewed in the explorer "
                         f"(a {REVIEW} column of {ACCEPTED}, {REJECTED} or empty)")
    out = np.empty(len(gdf), dtype=object)
    for k, v in enumerate(gdf[REVIEW]):
        try:
            out[k] = decision(v)
        except ValueError:
            raise UsageError(f"{named}: its {REVIEW} column holds {v!r}: use {ACCEPTED}, {REJECTED} or leave it "
                             f"empty (not reviewed)") from None
    return out


def reviewed_decisions(gdf: gpd.GeoDataFrame, named: str) -> np.ndarray:
    """`decisions`, also refusing a file where nothing is accepted: what --reviewed reads."""
    review = decisions(gdf, named)
    if not (review == ACCEPTED).any():
        raise UsageError(f"{named}: none of its {len(gdf)} objects is {ACCEPTED} ({counts(review)}): accept some "
                         f"in the explorer first")
    return review


def counts(review: np.ndarray) -> str:
    """`3 accepted, 2 rejected, 5 not reviewed`."""
    n = {d: int((review == d).sum()) for d in DECISIONS}
    return f"{n[ACCEPTED]} {ACCEPTED}, {n[REJECTED]} {REJECTED}, {len(review) - sum(n.values())} not reviewed"


@dataclass(frozen=True)
class Reviewed:
    """A reviewed layer split three ways (each keeps the rows' index in the file)."""

    accepted: gpd.GeoDataFrame
    rejected: gpd.GeoDataFrame
    unreviewed: gpd.GeoDataFrame


def split_review(gdf: gpd.GeoDataFrame, named: str) -> Reviewed:
    """The accepted, rejected and not reviewed rows of `gdf` (refused as `reviewed_decisions` refuses)."""
    review = reviewed_decisions(gdf, named)
    return Reviewed(gdf[review == ACCEPTED], gdf[review == REJECTED], gdf[pd.isna(review)])


def read_reviewed(source: Vector, what: str = "vector", *, name: str | None = None) -> gpd.GeoDataFrame:
    """A reviewed polygon layer, its `review` column checked (see `reviewed_decisions`); messages name
    it as `read_vector` does (`what` and the file, or the parameter `name`)."""
    if name is not None:
        named = shown("GeoDataFrame" if isinstance(source, gpd.GeoDataFrame) else str(source), name)
    else:
        named = f"{what} {'(a GeoDataFrame)' if isinstance(source, gpd.GeoDataFrame) else source}"
    gdf = polygons_only(read_vector(source, what, name=name), named)
    reviewed_decisions(gdf, named)
    return gdf


def warn_unreviewed_use(gdf: gpd.GeoDataFrame, named: str, flag: str) -> None:
    """Warn that a reviewed file read without `--reviewed` counts its rejected and unreviewed
    objects as objects. Silent for a `review` column of other values (it is not ours)."""
    if REVIEW not in gdf.columns:
        return
    try:
        review = np.array([decision(v) for v in gdf[REVIEW]], dtype=object)
    except ValueError:
        return
    decided = (review == ACCEPTED) | (review == REJECTED)
    if decided.any() and (review != ACCEPTED).any():
        warnings.warn(f"{named} has a {REVIEW} column ({counts(review)}): all of them count as objects here; "
                      f"pass {flag} to take only the accepted ones", GeosegWarning, stacklevel=3)
