"""SAM 3's detector: tiles x text prompts (and exemplar tokens) -> detections.

Per batch of tiles the vision encoder runs once; each prompt's text features are
computed once per run and cached; the detection and mask heads then run on tiles x
prompts together, in one call (up to `HEAD_ROWS` rows). Pre- and post-processing
stay on the device: tiles go up as uint8 (on CUDA from pinned memory, on a side
stream, the next batch's while this one computes), masks come back cropped to
their boxes in one copy per chunk; no step waits on the device once per tile.
Attention runs through PyTorch's SDPA, which picks flash kernels on CUDA.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from geoseg.backends.sam3.exemplars import VISUAL, encode_boxes, join, padded
from geoseg.backends.sam3.loading import (
    DTYPES,
    HUB_ID,
    check_hub,
    dtype_name,
    load,
    pick_device,
    pick_dtype,
    return_freed_memory,
    revision,
)
from geoseg.backends.sam3.postprocess import UPSAMPLE_PIXELS, crops
from geoseg.backends.sam3.tracker import Tracker
from geoseg.core.exemplars import EncodedExemplars
from geoseg.core.objects import ObjectPrompt
from geoseg.core.segmenter import Detection, check_prompts
from geoseg.errors import PromptError, RunError, UsageError, option

if TYPE_CHECKING:
    import torch

log = logging.getLogger("geoseg")

# Rough GPU memory per 1008 px tile (activations of the encoder and of one prompt's
# heads, plus post-processing); the OOM back-off in `segment` covers a wrong guess.
GPU_BYTES_PER_TILE = {"bfloat16": 1.0 * 2**30, "float16": 1.0 * 2**30, "float32": 2.0 * 2**30}
MAX_AUTO_BATCH = 16
# Tile x prompt rows per call of the heads at most, unless one prompt's batch is more:
# about the memory of the heads of a batch of 16 tiles with one prompt.
HEAD_ROWS = 16
WINDOWS_KEPT = 4  #: windows whose backbone features the object head keeps (a click's neighbourhood)


class Sam3Segmenter:
    """Segment tiles with SAM 3 text prompts.

    Args:
        model: hub id or local folder saved with `save_pretrained`.
        device: "cuda", "cuda:1", "mps", "cpu"; default CUDA, else MPS, else CPU.
        dtype: "bf16", "fp16" or "fp32"; default bf16 on CUDA, fp32 elsewhere.
        batch_size: tiles per forward pass; default from free GPU memory, 1 on CPU.
        score_threshold: keep instances whose score is at least this.
        mask_threshold: binarise mask probabilities above this.
        max_detections: keep at most this many instances per tile and prompt (best first).
        nms_iou: drop an instance overlapping a better one of the same prompt in the same
            tile by more than this mask IoU (computed at the model's 288 px mask grid).
        compile: compile the vision encoder with `torch.compile` (the first batch of
            each new batch size then takes longer; results stay the same).

    Raises:
        ModelLoadError: the weights cannot be had.
        UsageError: an unknown device or dtype.
    """

    def __init__(
        self,
        *,
        model: str = HUB_ID,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | None = None,
        score_threshold: float = 0.5,
        mask_threshold: float = 0.5,
        max_detections: int | None = None,
        nms_iou: float | None = None,
        compile: bool = False,
    ) -> None:
        local_only = check_hub(str(model))  # before torch loads: a missing model fails in a second
        import torch

        self._local_only = local_only
        self._tracker: Tracker | None = None  #: the single-object head, loaded on the first object prompt
        self._windows: OrderedDict[bytes, list[Any]] = OrderedDict()  #: its embeddings of recent windows
        self._wanted: set[bytes] = set()  #: windows object prompts will follow (see `keep_windows`)

        self.name = "sam3"
        self.model_id = str(model)
        self.device = pick_device(device)
        if self.device.type == "cpu":
            return_freed_memory()
        self.dtype = pick_dtype(dtype, self.device)
        self.processor, self.model = load(str(model), self.device, self.dtype, local_only=local_only)
        self.revision = revision(str(model), self.model)
        self.score_threshold = float(score_threshold)
        self.mask_threshold = float(mask_threshold)
        self.max_detections = max_detections
        self.nms_iou = nms_iou
        self.compiled = bool(compile)
        if self.compiled:
            # In place: the weights stay where they are; the first call compiles.
            self.model.vision_encoder.compile()

        config = self.model.config
        self.input_size: int = int(config.vision_config.image_size)
        self.max_objects: int = int(config.detr_decoder_config.num_queries)
        self.max_tokens: int = int(config.text_config.max_position_embeddings)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        images = self.processor.image_processor
        # Fold rescale (1/255) and normalisation into one multiply-add on the device.
        std = torch.tensor(images.image_std, device=self.device).view(1, 3, 1, 1)
        mean = torch.tensor(images.image_mean, device=self.device).view(1, 3, 1, 1)
        self._scale = images.rescale_factor / std
        self._shift = -mean / std
        self._text: dict[str, tuple[Any, Any]] = {}
        self._checked: set[str] = set()  # prompts whose length was checked
        self._positions: tuple[Any, ...] | None = None  # FPN position encodings: the same for every tile
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._prefetched: tuple[tuple[int, ...], Any] | None = None  # (key of the tiles, upload) of the next batch
        self._estimate: list[int] | None = None  # CPU: tiles, prompts, calls and tiles seen (see `begin`)

        self.batch_size: int = self._default_batch_size() if batch_size is None else int(batch_size)
        if self.batch_size < 1:
            raise UsageError(f"{option('batch_size', batch_size)}: give 1 or more")
        if self.device.type == "cpu":
            log.warning(
                "SAM 3 is running on the CPU: expect ~25 s per tile with the full model on 2 cores; "
                "a CUDA GPU is hundreds of times faster"
            )

    # -- the contract --------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The settings that change what SAM 3 finds (device and batch size do not); `revision`
        tells the weights apart when a folder's are replaced (see `revision`)."""
        short = {v: k for k, v in DTYPES.items()}
        return {"model": self.model_id, "revision": self.revision, "dtype": short[dtype_name(self.dtype)],
                "score_threshold": self.score_threshold,
                "mask_threshold": self.mask_threshold, "max_detections": self.max_detections, "nms_iou": self.nms_iou}

    def check_prompts(self, prompts: Sequence[str]) -> None:
        """Raise PromptError for an empty prompt or one longer than the text encoder takes."""
        for prompt in check_prompts(prompts):
            if prompt in self._checked:
                continue
            n = len(self.processor.tokenizer(prompt)["input_ids"])
            if n > self.max_tokens:
                raise PromptError(
                    f"prompt {prompt!r} is {n} tokens long but the SAM 3 text encoder takes at most "
                    f"{self.max_tokens} (start and end tokens included): shorten it"
                )
            self._checked.add(prompt)

    def begin(self, n_tiles: int, prompts: list[str]) -> None:
        """On CPU, where a run can take hours, log a time estimate once the second
        batch has run: measured, since a guess from the model's size misses the
        fixed costs per tile, and the first batch also pays for warming up."""
        self._estimate = [n_tiles, len(prompts), 0, 0] if self.device.type == "cpu" and n_tiles > 0 else None

    def _log_estimate(self, n_done: int, seconds: float) -> None:
        if self._estimate is None or n_done == 0:
            return
        n_tiles, n_prompts, calls, seen = self._estimate
        calls, seen = calls + 1, seen + n_done
        self._estimate[2:] = [calls, seen]
        if calls < 2:
            return
        self._estimate = None
        per_tile, left = seconds / n_done, max(n_tiles - seen, 0)
        if left:
            log.warning("estimated CPU time: %s more for the %d tile(s) x %d prompt(s) left of %d "
                        "(%.2g s per tile, measured)", _duration(per_tile * left), left, n_prompts, n_tiles, per_tile)

    def segment(self, tiles: np.ndarray, prompts: Sequence[str],
                exemplars: dict[str, EncodedExemplars] | None = None) -> list[list[Detection]]:
        """Segment `tiles` (uint8, N x H x W x 3, any H and W) with each prompt; one list per tile.
        `exemplars`: the encoded exemplars of some prompts (`encode_exemplars`), appended to them.

        Runs `batch_size` tiles at a time; on CUDA the next batch goes up while this one
        computes. On CUDA out-of-memory the batch is halved and the same tiles retried,
        and `batch_size` stays lowered for the next calls.
        """
        import torch

        tiles = _check_tiles(tiles)
        prompts = list(prompts)
        self._check_text(prompts, exemplars)
        results: list[list[Detection]] = []
        start, size, lowered = 0, max(1, self.batch_size), False
        started = time.perf_counter()
        self._prefetched = None  # one left by a failed call: this call's tiles may sit at its address
        while start < len(tiles):
            batch = tiles[start : start + size]
            upcoming = tiles[start + len(batch) : start + len(batch) + size]
            try:
                results.extend(self._segment_batch(batch, prompts, exemplars=exemplars, upcoming=upcoming))
            except torch.cuda.OutOfMemoryError:
                self._prefetched = None
                if size == 1:
                    raise RunError(
                        f"out of GPU memory with one tile per batch: use {option('dtype', 'bf16')}, a smaller "
                        f"{option('tile_size')}, or free the GPU"
                    ) from None
                size = max(1, min(size, len(batch)) // 2)
                lowered = True
                # Out of the except block before freeing, so the traceback's tensors are gone.
            else:
                start += len(batch)
                continue
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            log.debug("out of GPU memory: retrying with %d tile(s) per batch", size)
        if lowered:
            log.warning("out of GPU memory: batch size lowered from %d to %d", self.batch_size, size)
            self.batch_size = size
        self._log_estimate(len(results), time.perf_counter() - started)
        return results

    # -- reusing vision features (geoseg.Segmentation) ------------------------------

    def vision_features(self, tiles: np.ndarray) -> list[dict[str, Any]]:
        """Run the vision encoder once on uint8 tiles (N, H, W, 3); one feature set per tile,
        on the model's device, for `segment_features`. Position encodings depend only on
        the input size, so they are kept once and shared by every tile."""
        import torch

        tiles = _check_tiles(tiles)
        with torch.inference_mode():
            vision = self._encode(self._preprocess(tiles))
        return [
            {
                "fpn_hidden_states": tuple(f[i : i + 1] for f in vision.fpn_hidden_states),
                "size": tiles.shape[1:3],
            }
            for i in range(len(tiles))
        ]

    def segment_features(self, features: Sequence[dict[str, Any]], prompts: Sequence[str],
                         exemplars: dict[str, EncodedExemplars] | None = None) -> list[list[Detection]]:
        """The detection and mask heads only, on features from `vision_features`; one list per tile."""
        import torch

        prompts = list(prompts)
        self._check_text(prompts, exemplars)
        found: list[list[Detection]] = [[] for _ in features]
        step = max(1, self.batch_size)
        for lo in range(0, len(features), step):
            batch = features[lo : lo + step]
            with torch.inference_mode():
                # Tiles of one size per call of the heads (masks go back to each tile's size).
                for size in dict.fromkeys(tuple(f["size"]) for f in batch):
                    index = [i for i, f in enumerate(batch) if tuple(f["size"]) == size]
                    levels = zip(*(batch[i]["fpn_hidden_states"] for i in index))
                    fpn = tuple(torch.cat(level) for level in levels)
                    for i, detections in zip(index, self._heads(fpn, size[0], size[1], prompts, exemplars)):
                        found[lo + i].extend(detections)
        return found

    # -- internals -----------------------------------------------------------------

    def _default_batch_size(self) -> int:
        import torch

        if self.device.type != "cuda":
            return 1
        free, _ = torch.cuda.mem_get_info(self.device)
        per_tile = GPU_BYTES_PER_TILE[dtype_name(self.dtype)]
        # Keep 2 GiB for the CUDA context, allocator slack and the text encoder.
        return int(max(1, min(MAX_AUTO_BATCH, (free - 2 * 2**30) // per_tile)))

    def _text_features(self, prompt: str) -> tuple[Any, Any]:
        """Text encoder output for `prompt` (1 x 32 x D) and its attention mask, cached:
        the text encoder runs once per prompt and run."""
        import torch

        if prompt not in self._text:
            # Pad to the encoder's length, as Sam3Processor does, so results match it.
            tokens = self.processor.tokenizer(
                [prompt], padding="max_length", max_length=self.max_tokens, return_tensors="pt"
            ).to(self.device)
            with torch.inference_mode():
                features = self.model.get_text_features(
                    input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                ).pooler_output
            self._text[prompt] = (features, tokens["attention_mask"])
        return self._text[prompt]

    def _prompt_features(self, prompt: str, exemplars: EncodedExemplars | None) -> tuple[Any, Any]:
        """A prompt's tokens and mask: its text's (SAM 3's "visual" for an exemplar-only
        concept), then each of its exemplar token sets, as `Sam3Model.forward` joins them."""
        if exemplars is None:
            return self._text_features(prompt)
        return join(self._text_features(prompt if exemplars.text else VISUAL), exemplars)

    def _check_text(self, prompts: list[str], exemplars: dict[str, EncodedExemplars] | None) -> None:
        """`check_prompts` of the prompts read as text (an exemplar-only concept's label is not)."""
        text = [p for p in prompts if exemplars is None or p not in exemplars or exemplars[p].text]
        if text or not prompts:
            self.check_prompts(text)

    # -- object prompts --------------------------------------------------------------

    def segment_objects(self, tile: np.ndarray, prompts: Sequence[ObjectPrompt]) -> list[Detection | None]:
        """The one object each prompt points at in `tile` (H x W x 3 uint8): SAM 3's single-object
        head on the window's backbone features. The features of the last `WINDOWS_KEPT` windows are
        kept, so another click on a window seen runs the prompt decoder alone."""
        import torch

        tile = _check_tiles(np.asarray(tile)[None])[0]
        tracker = self._object_head()
        key = _window_key(tile)
        embeddings = self._windows.get(key)
        if embeddings is None:
            with torch.inference_mode():
                embeddings = tracker.embeddings(self._encode(self._preprocess(tile[None])))
            self._remember(key, embeddings)
        self._windows.move_to_end(key)
        return [tracker.segment(embeddings, tile.shape[:2], p) for p in prompts]

    def keep_windows(self, tiles: Sequence[np.ndarray]) -> None:
        """Windows (H x W x 3 uint8) that object prompts will follow in this run: where `segment`
        meets one, it keeps the object head's features of it, so that text and object prompts
        run the backbone once on that window."""
        self._wanted = {_window_key(np.asarray(t)) for t in tiles}

    def _remember(self, key: bytes, embeddings: list[Any]) -> None:
        self._windows[key] = embeddings
        while len(self._windows) > max(WINDOWS_KEPT, len(self._wanted)):
            self._windows.popitem(last=False)

    def _keep_wanted(self, tiles: np.ndarray, vision: Any) -> None:
        """The object head's features of the `keep_windows` windows among `tiles`, from their
        backbone pass for the text prompts."""
        from types import SimpleNamespace

        for i, tile in enumerate(tiles):
            key = _window_key(tile)
            if key in self._wanted and key not in self._windows:
                one = SimpleNamespace(last_hidden_state=vision.last_hidden_state[i:i + 1])
                self._remember(key, self._object_head().embeddings(one))

    def _object_head(self) -> Tracker:
        if self._tracker is None:
            folder = os.path.expanduser(self.model_id)
            where = folder if os.path.isdir(folder) else self.model_id
            self._tracker = Tracker(where, self.model, self.device, self.dtype, local_only=self._local_only)
        return self._tracker

    # -- exemplars -----------------------------------------------------------------

    def encode_exemplars(self, tile: np.ndarray, boxes: np.ndarray, positive: np.ndarray) -> tuple[Any, Any]:
        """Run the geometry encoder on boxes (K x 4: x0, y0, x1, y1 in the pixels of `tile`, H x W x 3)
        against the tile's own vision features, as `Sam3Model.forward` does with `input_boxes`:
        (tokens 1 x (K + 1) x D, their mask), to append to a prompt on any tile."""
        import torch

        tile = _check_tiles(np.asarray(tile)[None])
        height, width = tile.shape[1:3]
        with torch.inference_mode():
            vision = self._encode(self._preprocess(tile))
            return encode_boxes(self.model, vision, boxes, positive, height, width, self.dtype)

    def _upload(self, tiles: np.ndarray) -> torch.Tensor:
        """uint8 tiles onto the device. On CUDA: from pinned memory, without blocking, on
        a side stream; the caller's stream waits for the copy only when it needs it."""
        import torch

        host = torch.from_numpy(np.ascontiguousarray(tiles))
        if self._copy_stream is None:
            return host.to(self.device)
        host = host.pin_memory()  # torch's caching host allocator: no new pinning per batch
        with torch.cuda.stream(self._copy_stream):
            return host.to(self.device, non_blocking=True)

    def _uploaded(self, tiles: np.ndarray) -> torch.Tensor:
        """`tiles` on the device: the prefetched copy if it is of these tiles, else a new one."""
        import torch

        ahead, self._prefetched = self._prefetched, None
        x = ahead[1] if ahead is not None and ahead[0] == _key(tiles) else self._upload(tiles)
        if self._copy_stream is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_stream(self._copy_stream)
            x.record_stream(compute)  # allocated on the copy stream, freed after use on this one
        return x

    def _prefetch(self, tiles: np.ndarray) -> None:
        """Start the upload of the next batch: on CUDA it runs while this batch computes."""
        if len(tiles):
            self._prefetched = (_key(tiles), self._upload(tiles))

    def _preprocess(self, tiles: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 N x H x W x 3 (numpy, or already on the device) -> normalised N x 3 x S x S
        in the model dtype, on the device; other sizes are resized as the processor does."""
        import torch
        import torch.nn.functional as F

        x = tiles if isinstance(tiles, torch.Tensor) else self._uploaded(tiles)
        x = x.permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True
            )
        return (x * self._scale + self._shift).to(self.dtype)

    def _encode(self, pixels: torch.Tensor) -> Any:
        """The vision encoder; keeps the position encodings (the same for every tile)."""
        try:
            vision = self.model.get_vision_features(pixel_values=pixels)
        except Exception as err:
            if not self.compiled or _is_oom(err):
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RunError(f"torch.compile of the SAM 3 vision encoder failed ({first}); run without "
                           f"{option('compile', True)}") from err
        if self._positions is None:
            # A copy: a view would keep the whole batch's encodings (B x 256 x 288 x 288 at the finest).
            self._positions = tuple(p[:1].clone() for p in vision.fpn_position_encoding)
        return vision

    def _segment_batch(
        self, tiles: np.ndarray, prompts: list[str], exemplars: dict[str, EncodedExemplars] | None = None,
        upcoming: np.ndarray | None = None,
    ) -> list[list[Detection]]:
        import torch

        height, width = tiles.shape[1:3]
        with torch.inference_mode():
            vision = self._encode(self._preprocess(tiles))
            if upcoming is not None:
                self._prefetch(upcoming)  # queued behind nothing: overlaps the encoder
            if self._wanted:
                self._keep_wanted(tiles, vision)
            return self._heads(vision.fpn_hidden_states, height, width, prompts, exemplars)

    def _heads(self, fpn: tuple[Any, ...], height: int, width: int, prompts: list[str],
               exemplars: dict[str, EncodedExemplars] | None = None) -> list[list[Detection]]:
        """The detection and mask heads on tiles x prompts rows (prompt-major), up to
        `HEAD_ROWS` rows per call, on `n` tiles' FPN features; one list per tile. A prompt's
        exemplar tokens follow its text's; prompts of other lengths are padded (masked out)."""
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        n = len(fpn[0])
        found: list[list[Detection]] = [[] for _ in range(n)]
        per_call = max(1, HEAD_ROWS // n)  # prompts per call
        calls = -(-len(prompts) // per_call)
        per_call = -(-len(prompts) // max(1, calls))  # evenly: 3 prompts as 2 + 1 would waste a call's rows
        assert self._positions is not None
        for lo in range(0, len(prompts), per_call):
            group = prompts[lo : lo + per_call]
            rows = n * len(group)
            text = padded([self._prompt_features(p, (exemplars or {}).get(p)) for p in group])
            features = torch.cat([f.expand(n, -1, -1) for f, _ in text])
            mask = torch.cat([m.expand(n, -1) for _, m in text])
            # The heads use every FPN level but the last; that one is passed along unrepeated.
            vision = Sam3VisionEncoderOutput(
                fpn_hidden_states=(*(f.repeat(len(group), 1, 1, 1) if len(group) > 1 else f for f in fpn[:-1]),
                                   fpn[-1]),
                fpn_position_encoding=tuple(p.expand(rows, -1, -1, -1) for p in self._positions),
            )
            out = self.model(
                vision_embeds=vision, text_embeds=BaseModelOutputWithPooling(pooler_output=features),
                attention_mask=mask,
            )  # fmt: skip
            labels = [p for p in group for _ in range(n)]
            tile_of = [t for _ in group for t in range(n)]
            for t, detections in self._postprocess(out, labels, tile_of, height, width):
                found[t].extend(detections)
        return found

    def _postprocess(
        self, out: Any, labels: list[str], tile_of: list[int], height: int, width: int
    ) -> list[tuple[int, list[Detection]]]:
        """Scores, selection, NMS, upsampling and cropping of the outputs of rows of
        (tile, prompt): per row in order, (tile, its detections best first)."""
        import torch.nn.functional as F

        scores = out.pred_logits.float().sigmoid() * out.presence_logits.float().sigmoid()
        scores, order = scores.sort(dim=1, descending=True)
        row_idx, rank = (scores >= self.score_threshold).nonzero(as_tuple=True)  # by row, then best first
        probs = out.pred_masks[row_idx, order[row_idx, rank]].float().sigmoid()
        kept_scores = scores[row_idx, rank]
        rows = row_idx.tolist()
        if self.nms_iou is not None or self.max_detections is not None:
            selected = self._select(probs, rows)
            probs, kept_scores = probs[selected], kept_scores[selected]
            rows = [rows[k] for k in selected.tolist()]
        scores_list = kept_scores.tolist()

        found: list[list[Detection]] = [[] for _ in labels]
        budget = UPSAMPLE_PIXELS["cuda" if probs.device.type == "cuda" else "other"]
        chunk = max(1, budget // (height * width))
        for lo in range(0, len(probs), chunk):
            up = F.interpolate(probs[lo : lo + chunk, None], size=(height, width), mode="bilinear")
            masks = up[:, 0] > self.mask_threshold
            del up
            boxes, cut = crops(masks, gather=masks.device.type == "cuda")
            for k, (box, crop) in enumerate(zip(boxes, cut)):
                if box is None or crop is None:  # empty mask
                    continue
                r = rows[lo + k]
                found[r].append(Detection(label=labels[r], score=scores_list[lo + k], mask=crop, origin=box))
        return [(tile_of[r], dets) for r, dets in enumerate(found)]

    def _select(self, probs: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """Indices kept by mask NMS and `max_detections`, per row (tile and prompt); input
        sorted by row then score. The IoUs of every row come back in one copy."""
        import torch

        row_of = np.asarray(rows, dtype=np.int64)
        keep = np.ones(len(row_of), dtype=bool)
        groups = [np.flatnonzero(row_of == r) for r in np.unique(row_of)]
        if self.nms_iou is not None:
            ious = []
            for members in groups:
                flat = (probs[members[0] : members[-1] + 1] > self.mask_threshold).flatten(1).float()
                inter = flat @ flat.T
                area = flat.sum(1)
                ious.append((inter / (area[:, None] + area[None, :] - inter).clamp(min=1)).flatten())
            table = torch.cat(ious).cpu().numpy() if ious else np.zeros(0)
            offset = 0
            for members in groups:
                m = len(members)
                iou = table[offset : offset + m * m].reshape(m, m)
                offset += m * m
                for a in range(m):  # greedy, best score first
                    if keep[members[a]]:
                        later = np.arange(a + 1, m)
                        keep[members[later[iou[a, later] > self.nms_iou]]] = False
        if self.max_detections is not None:
            for members in groups:
                survivors = members[keep[members]]
                keep[survivors[self.max_detections :]] = False
        return torch.from_numpy(np.flatnonzero(keep)).to(probs.device)


def _check_tiles(tiles: np.ndarray) -> np.ndarray:
    tiles = np.asarray(tiles)
    if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8:
        raise UsageError(f"tiles must be uint8 (N, H, W, 3), got {tiles.dtype} {tiles.shape}")
    return tiles


def _window_key(tile: np.ndarray) -> bytes:
    """What tells a window's pixels from another's."""
    return hashlib.sha1(np.ascontiguousarray(tile).tobytes()).digest() + repr(tile.shape).encode()


def _key(tiles: np.ndarray) -> tuple[int, ...]:
    """Which memory `tiles` views: the next batch is a slice of the same array."""
    return (tiles.__array_interface__["data"][0], *tiles.shape, *tiles.strides)


def _is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError)


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
