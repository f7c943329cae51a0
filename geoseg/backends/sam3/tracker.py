"""SAM 3's single-object head: clicks and boxes -> the one object under them.

`Sam3TrackerModel` (the SAM 2 style prompt encoder and mask decoder) loads from
the same checkpoint as the detector (`tracker_model.*`, its own neck
`tracker_neck.*`, and the vision backbone stored once). Here it shares the
detector's backbone module: one copy in memory, and one backbone pass per
window serves the detector's neck and the tracker's. `embeddings` turns the
detector's vision output into the tracker's image embeddings (what
`Sam3TrackerModel.get_image_embeddings` computes from pixels), and `segment`
runs the prompt encoder and mask decoder on them, with `Sam3TrackerProcessor`
scaling the prompts and bringing the masks back to the window's size.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from geoseg.backends.sam3.loading import dtype_name, why_not_loaded
from geoseg.core.objects import ObjectPrompt
from geoseg.core.segmenter import Detection
from geoseg.errors import ModelLoadError

log = logging.getLogger("geoseg")


class Tracker:
    """The single-object head of the SAM 3 at `model`, on the detector `detector`'s backbone."""

    def __init__(self, model: str, detector: Any, device: Any, dtype: Any, *, local_only: bool) -> None:
        from transformers import Sam3TrackerModel, Sam3TrackerProcessor
        from transformers.utils import logging as hf_logging

        started = time.perf_counter()
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "a sam3_video checkpoint for a sam3_tracker": as released, expected
        try:
            net = Sam3TrackerModel.from_pretrained(model, dtype=dtype, local_files_only=local_only,
                                                   attn_implementation="sdpa")
            self.processor = Sam3TrackerProcessor.from_pretrained(model, local_files_only=local_only)
        except Exception as err:
            raise ModelLoadError(why_not_loaded(model, err)) from err
        finally:
            hf_logging.set_verbosity(verbosity)
        # the checkpoint stores the backbone once: the detector's module is it, the tracker's a copy
        net.vision_encoder.backbone = detector.vision_encoder.backbone
        self.net = net.to(device).eval()  # type: ignore[arg-type]
        self.device = device
        log.info("loaded SAM 3's object head on %s (%s) in %.1f s", device, dtype_name(dtype),
                 time.perf_counter() - started)

    def embeddings(self, vision: Any) -> list[Any]:
        """The tracker's image embeddings of one window from the detector's vision output (its
        backbone's `last_hidden_state`): the tracker's neck, then what `get_image_embeddings` does."""
        net = self.net
        hidden = vision.last_hidden_state
        batch, tokens = hidden.shape[:2]
        side = int(round(tokens ** 0.5))
        fpn, _ = net.vision_encoder.neck(hidden.view(batch, side, side, -1).permute(0, 3, 1, 2))
        maps = list(fpn)
        maps[0] = net.mask_decoder.conv_s0(maps[0])
        maps[1] = net.mask_decoder.conv_s1(maps[1])
        maps = [m.flatten(2).permute(2, 0, 1) for m in maps]
        maps[-1] = maps[-1] + net.no_memory_embedding
        return [m.permute(1, 2, 0).view(batch, -1, *size) for m, size in zip(maps, net.backbone_feature_sizes)]

    def segment(self, embeddings: list[Any], size: tuple[int, int], prompt: ObjectPrompt) -> Detection | None:
        """The object `prompt` points at in a window of `size` (height, width) whose embeddings are
        `embeddings`: the best of three masks for one click alone (as SAM does), else one mask. Its
        score is the mask decoder's IoU estimate; None where the mask is empty."""
        import torch

        points = np.asarray(prompt.points, float).reshape(-1, 2)
        given: dict[str, Any] = {"original_sizes": [[int(size[0]), int(size[1])]], "return_tensors": "pt"}
        if len(points):
            given["input_points"] = [[points.tolist()]]
            given["input_labels"] = [[[int(v) for v in np.asarray(prompt.positive, bool)]]]
        if prompt.box is not None:
            given["input_boxes"] = [[list(map(float, prompt.box))]]
        inputs = self.processor(images=None, **given)
        several = len(points) != 1 or prompt.box is not None
        with torch.inference_mode():
            out = self.net(image_embeddings=embeddings, multimask_output=not several,
                           **{k: v.to(self.device) for k, v in inputs.items() if k != "original_sizes"})
        masks = self.processor.post_process_masks(out.pred_masks.float().cpu(), inputs["original_sizes"])[0][0]
        scores = out.iou_scores[0, 0].float().cpu()
        best = int(scores.argmax())
        mask = masks[best].numpy().astype(bool)
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            return None
        crop = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        return Detection(prompt.label, float(scores[best]), crop, (int(rows[0]), int(cols[0])))
