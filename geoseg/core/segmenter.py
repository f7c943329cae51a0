"""The segmenter contract: what any model plugged into geoseg must do.

A segmenter takes a batch of RGB tiles and text prompts and returns, for each
tile, the instances it found as `Detection`s in that tile's pixel grid.
"""

from __future__ import annotations

import inspect
import json
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

import numpy as np

from geoseg.errors import PromptError, UsageError, option

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

    `tiles` is a uint8 array (N, H, W, 3); the result has, per tile, a list
    of `Detection` or one `geoseg.core.detections.Detections` (the same in columns).
    The optional parts a segmenter may add are listed in `FullSegmenter`;
    geoseg reads them only through `Backend`.
    """

    def segment(self, tiles: np.ndarray, prompts: Sequence[str]) -> list[list[Detection]]: ...


class FullSegmenter(Segmenter, Protocol):
    """The whole contract: `segment` and every optional part, with what it means.

    Attributes:
        name: the backend's name, for provenance and the resume check
            (default: the class name).
        batch_size: tiles per `segment` call (default 4).
        max_objects: the most instances one call can return for one tile and
            one prompt (SAM 3: its query count), or None for no limit.
    """

    name: str
    batch_size: int
    max_objects: int | None

    def check_prompts(self, prompts: Sequence[str]) -> None:
        """Raise `PromptError` for prompts it cannot take; called before any tile is read."""

    def begin(self, n_tiles: int, prompts: list[str]) -> None:
        """Called once per raster, before its first tile, with the number of tiles to segment."""

    def config(self) -> dict[str, Any]:
        """Every setting that changes what it finds (model, precision, thresholds),
        JSON-able, keyed by keyword option name: recorded in each output's
        provenance, and an interrupted run resumes only with the same values."""

    def vision_features(self, tiles: np.ndarray) -> list[Any]:
        """With `segment_features`: encode tiles once, so that `geoseg.Segmentation`
        runs later prompts on the kept features (one object per tile)."""

    def segment_features(self, features: list[Any], prompts: Sequence[str]) -> list[list[Detection]]:
        """`segment` on features from `vision_features` (with `exemplars=` too where it takes exemplars)."""

    def encode_exemplars(self, tile: np.ndarray, boxes: np.ndarray, positive: np.ndarray) -> Any:
        """Encode exemplar boxes drawn on `tile` (H, W, 3) uint8: `boxes` (K, 4) float x0, y0, x1, y1
        in its pixels, `positive` (K,) bool. Returns opaque tokens, kept for the run: then
        `segment(tiles, prompts, exemplars={prompt: geoseg.core.exemplars.EncodedExemplars})` must
        add each prompt's tokens to it, on any tile. With it, a segmenter takes exemplars."""


class Backend:
    """A segmenter seen through the contract: its optional parts, or their
    defaults where it has none. The one place that looks them up."""

    def __init__(self, segmenter: Segmenter) -> None:
        if not callable(getattr(segmenter, "segment", None)):
            raise UsageError(f"{type(segmenter).__name__} has no segment(tiles, prompts) method: it is no segmenter")
        self.segmenter = segmenter
        self.name = str(getattr(segmenter, "name", None) or type(segmenter).__name__)

    @property
    def batch_size(self) -> int:
        return max(1, int(getattr(self.segmenter, "batch_size", None) or 4))

    @property
    def max_objects(self) -> int | None:
        value = getattr(self.segmenter, "max_objects", None)
        return None if value is None else int(value)

    def check_prompts(self, prompts: Sequence[str]) -> None:
        check = getattr(self.segmenter, "check_prompts", None)
        if callable(check) and prompts:  # none: every concept is given by exemplars
            check(prompts)

    def begin(self, n_tiles: int, prompts: list[str]) -> None:
        begin = getattr(self.segmenter, "begin", None)
        if callable(begin):
            begin(n_tiles, prompts)

    def config(self) -> dict[str, Any]:
        """The segmenter's `config()`, checked to be JSON-able; {} without one."""
        config = getattr(self.segmenter, "config", None)
        if not callable(config):
            return {}
        value = config()
        try:
            return dict(json.loads(json.dumps(value)))
        except (TypeError, ValueError):
            raise UsageError(f"{self.name}: config() must return a dict of JSON values, got {value!r}") from None

    @property
    def reuses_features(self) -> bool:
        """Whether it can encode tiles once and run prompts on the kept features."""
        return callable(getattr(self.segmenter, "vision_features", None)) and callable(
            getattr(self.segmenter, "segment_features", None))

    def vision_features(self, tiles: np.ndarray) -> list[Any]:
        return self.segmenter.vision_features(tiles)  # type: ignore[attr-defined, no-any-return]

    def segment_features(self, features: list[Any], prompts: Sequence[str],
                         exemplars: dict[str, Any] | None = None) -> list[list[Detection]]:
        more = {} if exemplars is None else {"exemplars": exemplars}
        return self.segmenter.segment_features(features, prompts, **more)  # type: ignore[attr-defined, no-any-return]

    def encode_exemplars(self, tile: np.ndarray, boxes: np.ndarray, positive: np.ndarray) -> Any:
        return self.segmenter.encode_exemplars(tile, boxes, positive)  # type: ignore[attr-defined]

    def segment(self, tiles: np.ndarray, prompts: Sequence[str],
                exemplars: dict[str, Any] | None = None) -> list[list[Detection]]:
        if exemplars is None:
            return self.segmenter.segment(tiles, prompts)
        return self.segmenter.segment(tiles, prompts, exemplars=exemplars)  # type: ignore[call-arg]


def _offers(segmenter: Any, method: str) -> bool:
    """Whether a segmenter (or the one a `Backend` wraps), its class or the factory of a backend
    name has the optional part `method`: known before any model is built."""
    if isinstance(segmenter, Backend):
        segmenter = segmenter.segmenter
    if isinstance(segmenter, str):
        segmenter = _resolve(segmenter)
    return callable(getattr(segmenter, method, None))


def takes_exemplars(segmenter: Any) -> bool:
    """Whether a segmenter (object, class or backend name) takes exemplars (`encode_exemplars`)."""
    return _offers(segmenter, "encode_exemplars")


def check_takes_exemplars(segmenter: Any) -> None:
    """Refuse exemplars for a segmenter (object or backend name) that does not take them."""
    if not takes_exemplars(segmenter):
        name = segmenter if isinstance(segmenter, str) else Backend(segmenter).name
        raise UsageError(f"the {name} segmenter takes no exemplars: drop {option('exemplars')} or pick a backend "
                         f"that takes them with {option('segmenter', flag='--backend')} (sam3)")


def takes_objects(segmenter: Any) -> bool:
    """Whether a segmenter (object, class or backend name) takes object prompts (`segment_objects`,
    see `geoseg.core.objects`)."""
    return _offers(segmenter, "segment_objects")


def check_takes_objects(segmenter: Any) -> None:
    """Refuse object prompts for a segmenter (object or backend name) that does not take them."""
    if not takes_objects(segmenter):
        name = segmenter if isinstance(segmenter, str) else as_backend(segmenter).name
        raise UsageError(f"the {name} segmenter takes no object prompts: drop {option('objects')} (docs/objects.md "
                         f"lists the backends that take them)")


def as_backend(segmenter: Segmenter | Backend) -> Backend:
    """`segmenter` seen through the contract (a `Backend` is returned as it is)."""
    return segmenter if isinstance(segmenter, Backend) else Backend(segmenter)


MAX_PROMPT_CHARS = 200  #: a prompt names a concept in a few words; a model's own limit may be lower


def check_prompt(prompt: Any) -> str:
    """One prompt stripped, or PromptError for an empty or blank one, one holding a control
    character (a newline, a tab), or one longer than `MAX_PROMPT_CHARS`."""
    p = prompt.strip() if isinstance(prompt, str) else prompt
    if not isinstance(p, str) or not p:
        raise PromptError(f"empty prompt {p!r}: give some words, e.g. {option('prompts', 'tree crown', flag='-p')}")
    if any(unicodedata.category(c) == "Cc" for c in p):  # a newline or tab would become part of a label
        raise PromptError(f"prompt {p!r} holds a control character (newline, tab, ...): give the words on "
                          f"one line, e.g. {option('prompts', 'tree crown', flag='-p')}")
    if len(p) > MAX_PROMPT_CHARS:
        raise PromptError(f"prompt {p[:40]!r}... is {len(p)} characters long, more than {MAX_PROMPT_CHARS}: "
                          f"name the concept in a few words")
    return p


def check_prompts(prompts: Sequence[str] | str) -> list[str]:
    """Return the prompts stripped, split at commas ("tree, shrub" is two prompts, as `-p tree -p shrub`),
    each checked by `check_prompt`, or raise PromptError."""
    if isinstance(prompts, str):
        prompts = [prompts]
    # one rule on every interface (CLI, Python, QGIS): a comma separates prompts
    cleaned = [q for p in prompts for q in p.split(",")] if all(isinstance(p, str) for p in prompts) \
        else list(prompts)
    if not cleaned:
        raise PromptError(f"no prompt given: pass at least one, e.g. {option('prompts', 'building', flag='-p')}")
    # keep the user's order, drop repeats
    return list(dict.fromkeys(check_prompt(p) for p in cleaned))


_BUILTIN: dict[str, str] = {
    "sam3": "geoseg.backends.sam3:Sam3Segmenter",
    "yolo": "geoseg.backends.yolo:YoloSegmenter",
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


def takes_option(name: str, key: str) -> bool:
    """Whether the registered backend `name` takes the option `key` (known before it is built)."""
    params = inspect.signature(_resolve(name)).parameters
    return key in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


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
                raise UsageError(f"backend {name!r} does not take {option(key)}: drop it or pick another "
                                 f"{option('segmenter', flag='--backend')}")
    segmenter = factory(**options)
    if not callable(getattr(segmenter, "segment", None)):
        raise UsageError(f"backend {name!r} gave an object without a segment(tiles, prompts) method")
    return segmenter  # type: ignore[no-any-return]


def preferred_resolution(segmenter: Segmenter | str, **options: Any) -> float | None:
    """The ground pixel size a model was trained at, in metres, read before it loads: a
    backend's `preferred_resolution(**options)`, or a segmenter object's `resolution`; None for
    models that take any (SAM 3). A run without its own resolution reads at this one (converted
    into each raster's CRS units)."""
    if isinstance(segmenter, str):
        hook = getattr(_resolve(segmenter), "preferred_resolution", None)
        return hook(**{k: v for k, v in options.items() if v is not None}) if callable(hook) else None
    value = getattr(segmenter, "resolution", None)
    return None if value is None else float(value)


def preferred_bands(segmenter: Segmenter | str, **options: Any) -> tuple[int, ...] | None:
    """The 1-based bands a model was trained on, read before it loads: a backend's
    `preferred_bands(**options)`, or a segmenter object's `bands`; None for the raster's default
    choice. A run without its own bands reads these."""
    if isinstance(segmenter, str):
        hook = getattr(_resolve(segmenter), "preferred_bands", None)
        value = hook(**{k: v for k, v in options.items() if v is not None}) if callable(hook) else None
    else:
        value = getattr(segmenter, "bands", None)
    return None if value is None else tuple(int(b) for b in value)


def as_segmenter(segmenter: Segmenter | str, **options: Any) -> Segmenter:
    """A segmenter object as given, or the registered backend of that name built with `options`."""
    if isinstance(segmenter, str):
        return load_segmenter(segmenter, **options)
    if options:
        raise UsageError(f"backend options {sorted(options)} go with a backend name, not a segmenter object")
    return segmenter
