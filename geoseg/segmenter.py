"""The segmenter contract: what any model plugged into geoseg must do.

A segmenter takes a batch of RGB tiles and text prompts and returns, for each
tile, the instances it found as `Detection`s in that tile's pixel grid.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

import numpy as np

from geoseg.errors import PromptError, UsageError

ENTRY_POINT_GROUP = "geoseg.backends"


@dataclass(frozen=True)
class Detection:
    """One instance found in one tile.

    Attributes:
        label: the prompt that found it.
        score: confidence in [0, 1].
        mask: boolean mask. Either the tile's full H x W, or a crop of it whose
            top-left pixel sits at `origin` (row, col) in the tile: segmenters
            that know their instances' boxes return crops to save memory.
        origin: (row, col) of `mask[0, 0]` in the tile; (0, 0) for a full mask.
    """

    label: str
    score: float
    mask: np.ndarray
    origin: tuple[int, int] = (0, 0)


@runtime_checkable
class Segmenter(Protocol):
    """Anything with this method can segment for geoseg.

    `tiles` is a uint8 array (N, H, W, 3); the result has one list per tile.
    Optional: `check_prompts(prompts)`, called before any tile is read, to
    reject prompts it cannot take (raise `PromptError`); `begin(n_tiles,
    prompts)`, called once per raster before its first tile; and an int
    attribute `batch_size`, the number of tiles the pipeline passes per call.
    """

    def segment(self, tiles: np.ndarray, prompts: Sequence[str]) -> list[list[Detection]]: ...


def check_prompts(prompts: Sequence[str] | str) -> list[str]:
    """Return the prompts stripped, or raise PromptError for an empty or blank one."""
    if isinstance(prompts, str):
        prompts = [prompts]
    cleaned = [p.strip() if isinstance(p, str) else p for p in prompts]
    if not cleaned:
        raise PromptError("no prompt given: pass at least one, e.g. -p building")
    for p in cleaned:
        if not isinstance(p, str) or not p:
            raise PromptError(f"empty prompt {p!r}: give some words, e.g. -p 'tree crown'")
    # keep the user's order, drop repeats
    return list(dict.fromkeys(cleaned))


_BUILTIN: dict[str, str] = {
    "sam3": "geoseg.backends.sam3:Sam3Segmenter",
    "colors": "geoseg.testing.segmenters:ColorSegmenter",
}


def backend_names() -> list[str]:
    """Names of the registered backends (built in and from entry points)."""
    names = set(_BUILTIN)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def _resolve(name: str) -> Callable[..., Any]:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()  # type: ignore[no-any-return]
    if name in _BUILTIN:
        module, attr = _BUILTIN[name].split(":")
        return getattr(__import__(module, fromlist=[attr]), attr)  # type: ignore[no-any-return]
    raise UsageError(f"unknown backend {name!r}: choose one of {', '.join(backend_names())}")


def load_segmenter(name: str, **options: Any) -> Segmenter:
    """Build the registered backend `name` with `options` (those left None are dropped).

    Raises UsageError naming an option the backend does not take.
    """
    factory = _resolve(name)
    options = {k: v for k, v in options.items() if v is not None}
    params = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        for key in options:
            if key not in params:
                flag = "--" + key.replace("_", "-")
                raise UsageError(f"backend {name!r} does not take {flag}: drop it or pick another --backend")
    segmenter = factory(**options)
    if not callable(getattr(segmenter, "segment", None)):
        raise UsageError(f"backend {name!r} gave an object without a segment(tiles, prompts) method")
    return segmenter  # type: ignore[no-any-return]


def as_segmenter(segmenter: Segmenter | str, **options: Any) -> Segmenter:
    """A segmenter object as given, or the registered backend of that name built with `options`."""
    if isinstance(segmenter, str):
        return load_segmenter(segmenter, **options)
    if options:
        raise TypeError(f"backend options {sorted(options)} go with a backend name, not a segmenter object")
    return segmenter
