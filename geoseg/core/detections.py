"""One tile's detections in columns: labels, scores, origins and mask crops.

A segmenter may return, per tile, a `Detections` instead of a list of
`Detection`: the columns are filtered with one numpy index (by score, by
label) without touching the masks, and convert to and from
`supervision.Detections`. Pure numpy; supervision is imported only by the
converters.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from geoseg.core.segmenter import Detection
from geoseg.errors import UsageError

_INSTALL = "pip install supervision"


class Detections:
    """The instances found in one tile, in columns.

    Attributes:
        labels: (N,) str, the prompt that found each.
        scores: (N,) float, confidence in [0, 1].
        origins: (N, 2) int, (row, col) of each crop's top-left pixel in the tile.
        masks: N boolean 2-D crops (ragged); crop i covers rows
            origins[i, 0] + [0, h) and cols origins[i, 1] + [0, w) of the tile.

    `labels` may be one str for all. Indexing with a boolean array, an int
    array or list, or a slice gives a `Detections` that shares the masks;
    an int gives one `Detection`.
    """

    __slots__ = ("labels", "scores", "origins", "masks")

    labels: np.ndarray
    scores: np.ndarray
    origins: np.ndarray
    masks: list[np.ndarray]

    def __init__(self, labels: Sequence[str] | np.ndarray | str, scores: Sequence[float] | np.ndarray,
                 origins: Sequence[Sequence[int]] | np.ndarray, masks: Iterable[np.ndarray]) -> None:
        masks = list(masks)
        for i, m in enumerate(masks):
            if not isinstance(m, np.ndarray) or m.ndim != 2 or m.dtype != bool:
                what = f"a {m.ndim}-D {m.dtype} array" if isinstance(m, np.ndarray) else type(m).__name__
                raise UsageError(f"Detections: mask {i} is {what}; each mask must be a 2-D bool array (crop)")
        n = len(masks)
        if isinstance(labels, str):
            labels = [labels] * n
        self._set(_labels(labels), _column(scores, np.float64, "scores"), _origins(origins), masks)
        sizes = {"labels": len(self.labels), "scores": len(self.scores), "origins": len(self.origins), "masks": n}
        if len(set(sizes.values())) > 1:
            given = ", ".join(f"{k} {v}" for k, v in sizes.items())
            raise UsageError(f"Detections: the columns differ in length ({given}); give one entry per detection")

    def _set(self, labels: np.ndarray, scores: np.ndarray, origins: np.ndarray, masks: list[np.ndarray]) -> None:
        self.labels, self.scores, self.origins, self.masks = labels, scores, origins, masks

    @classmethod
    def _trusted(cls, labels: np.ndarray, scores: np.ndarray, origins: np.ndarray,
                 masks: list[np.ndarray]) -> Detections:
        """Columns already checked (a subset of checked ones): no second check."""
        dets = cls.__new__(cls)
        dets._set(labels, scores, origins, masks)
        return dets

    @classmethod
    def empty(cls) -> Detections:
        """No detections."""
        return cls._trusted(np.array([], dtype=str), np.zeros(0), np.zeros((0, 2), np.int64), [])

    @classmethod
    def of(cls, dets: Iterable[Detection] | Detections) -> Detections:
        """Columns from `Detection`s (a `Detections` comes back as it is)."""
        if isinstance(dets, Detections):
            return dets
        dets = list(dets)
        if not dets:
            return cls.empty()
        # asarray: bool masks are kept, not copied; 0/1 masks become bool as `to_piece` reads them
        return cls([d.label for d in dets], [d.score for d in dets], [d.origin for d in dets],
                   [np.asarray(d.mask, dtype=bool) for d in dets])

    @classmethod
    def concat(cls, parts: Iterable[Detections]) -> Detections:
        """One tile's columns from several (one per prompt, say), in order; masks shared."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        return cls._trusted(np.concatenate([p.labels for p in parts]), np.concatenate([p.scores for p in parts]),
                            np.concatenate([p.origins for p in parts]), [m for p in parts for m in p.masks])

    def to_list(self) -> list[Detection]:
        """The rows as `Detection`s (sharing the masks)."""
        return list(self)

    def __len__(self) -> int:
        return len(self.masks)

    def __iter__(self) -> Iterator[Detection]:
        for label, score, (r, c), mask in zip(self.labels.tolist(), self.scores.tolist(), self.origins.tolist(),
                                              self.masks):
            yield Detection(label, score, mask, (r, c))

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            i = range(len(self))[key]  # IndexError past the end, as a list
            return Detection(str(self.labels[i]), float(self.scores[i]), self.masks[i],
                             (int(self.origins[i, 0]), int(self.origins[i, 1])))
        if not isinstance(key, slice):
            key = np.asarray(key)
            if key.dtype == bool:
                if key.shape != (len(self),):
                    raise UsageError(f"Detections: a boolean index needs {len(self)} values, got shape {key.shape}")
            elif key.size == 0:
                key = key.astype(np.int64)  # [] reads as floats
            elif key.dtype.kind not in "iu" or key.ndim != 1:
                raise UsageError(f"Detections: index with booleans, ints or a slice, not {key.dtype} {key.shape}")
        idx = np.arange(len(self))[key]
        return Detections._trusted(self.labels[idx], self.scores[idx], self.origins[idx],
                                   [self.masks[i] for i in idx.tolist()])

    def __repr__(self) -> str:
        return f"Detections({len(self)}: labels {sorted(set(self.labels.tolist()))})"

    def boxes(self) -> np.ndarray:
        """(N, 4) int boxes x0, y0, x1, y1 in tile pixels: the crops' edges, so
        x1 = col + width (exclusive, as numpy slices)."""
        shapes = np.array([m.shape for m in self.masks], np.int64).reshape(-1, 2)
        start = self.origins[:, ::-1]
        return np.hstack([start, start + shapes[:, ::-1]])

    @classmethod
    def from_supervision(cls, detections: Any, labels: str | Sequence[str] | None = None) -> Detections:
        """Columns from a `supervision.Detections` with masks, in tile pixels.

        Each full (H, W) mask is cropped to its box (widened to hold every mask
        pixel) and copied, so the (N, H, W) array can be freed; a `CompactMask`
        gives its crops without a full mask. Labels come from `labels` (one str
        for all, or class names indexed by `class_id`), else from
        `data["class_name"]`.
        """
        _supervision()
        n = len(detections)
        if n == 0:
            return cls.empty()
        if detections.mask is None:
            raise UsageError("from_supervision: these supervision Detections have no masks; geoseg needs masks")
        if detections.confidence is None:
            raise UsageError("from_supervision: these supervision Detections have no confidence; geoseg needs scores")
        names = _sv_labels(detections, labels, n)
        mask = detections.mask
        if callable(getattr(mask, "crop", None)) and hasattr(mask, "offsets"):  # supervision's CompactMask
            crops = [np.asarray(mask.crop(i), dtype=bool) for i in range(n)]
            origins = np.asarray(mask.offsets, np.int64)[:, ::-1]
        else:
            full = np.asarray(mask)
            if full.ndim != 3 or full.shape[0] != n:
                raise UsageError(f"from_supervision: mask has shape {full.shape}; expected ({n}, H, W)")
            crops, corners = [], []
            for i in range(n):
                r0, c0, crop = _crop(full[i], np.asarray(detections.xyxy[i], np.float64))
                crops.append(crop)
                corners.append((r0, c0))
            origins = np.array(corners, np.int64)
        return cls(names, np.asarray(detections.confidence, np.float64), origins, crops)

    def to_supervision(self, shape: tuple[int, int], classes: Sequence[str] | None = None) -> Any:
        """A `supervision.Detections` on a tile of `shape` (H, W): full masks,
        inclusive xyxy boxes (supervision's convention), confidence, class_id
        (the index of the label in `classes`, default the sorted labels) and
        data["class_name"]."""
        sv = _supervision()
        h, w = (int(v) for v in shape)
        boxes = self.boxes()
        if len(self) and (boxes[:, 2].max() > w or boxes[:, 3].max() > h):
            raise UsageError(f"to_supervision: a mask reaches past the {h} x {w} tile; pass the tile's shape")
        full = np.zeros((len(self), h, w), bool)
        for i, ((c0, r0, c1, r1), m) in enumerate(zip(boxes.tolist(), self.masks)):
            full[i, r0:r1, c0:c1] = m
        names = sorted(set(self.labels.tolist())) if classes is None else list(classes)
        missing = set(self.labels.tolist()) - set(names)
        if missing:
            raise UsageError(f"to_supervision: labels {sorted(missing)} are not in classes {names}")
        index = {name: k for k, name in enumerate(names)}
        xyxy = (boxes - np.array([0, 0, 1, 1])).astype(np.float32)  # supervision's max is the last pixel
        return sv.Detections(xyxy=xyxy.reshape(-1, 4), mask=full, confidence=self.scores.copy(),
                             class_id=np.array([index[x] for x in self.labels.tolist()], np.int64),
                             data={"class_name": self.labels.copy()})


def _labels(labels: Sequence[str] | np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.size == 0:
        return np.array([], dtype=str)
    if arr.ndim != 1 or not all(isinstance(x, str) for x in arr.tolist()):
        raise UsageError("Detections: labels must be one str per detection (the prompt that found it)")
    return arr.astype(str, copy=False)


def _column(values: Any, dtype: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError):
        raise UsageError(f"Detections: {name} must be numbers, one per detection") from None
    if arr.ndim != 1:
        raise UsageError(f"Detections: {name} must be one number per detection, got shape {arr.shape}")
    return arr


def _origins(origins: Any) -> np.ndarray:
    arr = np.asarray(origins)
    if arr.size == 0:
        return np.zeros((0, 2), np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.dtype.kind not in "iu":
        raise UsageError(f"Detections: origins must be (N, 2) ints (row, col), got {arr.dtype} {arr.shape}")
    if (arr < 0).any():
        raise UsageError("Detections: origins must be >= 0: (row, col) of each crop in the tile")
    return arr.astype(np.int64, copy=False)


def _crop(full: np.ndarray, xyxy: np.ndarray) -> tuple[int, int, np.ndarray]:
    """`full` cut to its (inclusive) box, widened to hold every mask pixel, as a copy."""
    h, w = full.shape
    x0, y0 = (int(np.clip(np.floor(v), 0, lim)) for v, lim in ((xyxy[0], w), (xyxy[1], h)))
    x1, y1 = (int(np.clip(np.floor(v) + 1, 0, lim)) for v, lim in ((xyxy[2], w), (xyxy[3], h)))
    rows, cols = np.flatnonzero(full.any(axis=1)), np.flatnonzero(full.any(axis=0))
    if rows.size:
        y0, y1 = min(y0, int(rows[0])), max(y1, int(rows[-1]) + 1)
        x0, x1 = min(x0, int(cols[0])), max(x1, int(cols[-1]) + 1)
    y1, x1 = max(y0, y1), max(x0, x1)
    return y0, x0, np.array(full[y0:y1, x0:x1], dtype=bool)


def _sv_labels(detections: Any, labels: str | Sequence[str] | None, n: int) -> list[str]:
    if isinstance(labels, str):
        return [labels] * n
    if labels is not None:
        if detections.class_id is None:
            raise UsageError("from_supervision: class names were given but the Detections have no class_id")
        names = list(labels)
        ids = np.asarray(detections.class_id).tolist()
        if min(ids) < 0 or max(ids) >= len(names):
            raise UsageError(f"from_supervision: class_id {max(ids)} has no name among the {len(names)} given")
        return [names[i] for i in ids]
    if "class_name" in detections.data:
        return [str(x) for x in np.asarray(detections.data["class_name"]).tolist()]
    raise UsageError("from_supervision: no labels: pass labels='your prompt' (or class names by class_id)")


def _supervision() -> Any:
    try:
        import supervision
    except ImportError:
        raise UsageError(f"converting to or from supervision.Detections needs supervision: {_INSTALL}") from None
    return supervision
