"""Exemplar boxes for SAM 3: encoded by its geometry encoder against their own tile's
vision features, and joined to a prompt's text tokens on any tile, as `Sam3Model.forward`
joins `input_boxes` to the text."""

from __future__ import annotations

from typing import Any

import numpy as np

from geoseg.core.exemplars import EncodedExemplars

VISUAL = "visual"  # SAM 3's text for a concept given by exemplars alone (as Sam3Processor puts it)


def encode_boxes(model: Any, vision: Any, boxes: np.ndarray, positive: np.ndarray, height: int, width: int,
                 dtype: Any) -> tuple[Any, Any]:
    """The geometry encoder's tokens (1 x (K + 1) x D) and mask for boxes (K x 4: x0, y0, x1, y1 in
    the pixels of a tile of `height` x `width`) on that tile's `vision` features."""
    import torch

    device = vision.fpn_hidden_states[0].device
    xyxy = torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4), device=device)
    xyxy = xyxy / torch.tensor([width, height, width, height], dtype=torch.float32, device=device)
    x0, y0, x1, y1 = xyxy.unbind(-1)  # to (cx, cy, w, h), as the processor does
    cxcywh = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)[None]
    labels = torch.as_tensor(np.asarray(positive, bool), device=device).long()[None]
    out = model.geometry_encoder(
        box_embeddings=cxcywh.to(dtype), box_mask=torch.ones_like(labels, dtype=torch.bool),
        box_labels=labels, img_feats=vision.fpn_hidden_states[:-1],
        img_pos_embeds=vision.fpn_position_encoding[:-1],
    )
    return out.last_hidden_state, out.attention_mask


def join(text: tuple[Any, Any], exemplars: EncodedExemplars) -> tuple[Any, Any]:
    """A prompt's tokens and mask: its text's, then each of its exemplar token sets."""
    import torch

    features, mask = text
    parts = [(features, mask), *((f, m.to(mask.dtype)) for f, m in exemplars.tokens)]
    return torch.cat([f for f, _ in parts], dim=1), torch.cat([m for _, m in parts], dim=1)


def padded(prompts: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Prompt tokens (1 x L x D) and masks (1 x L) padded to one length with masked-out zeros."""
    import torch.nn.functional as F

    longest = max(f.shape[1] for f, _ in prompts)
    return [(f, m) if f.shape[1] == longest else
            (F.pad(f, (0, 0, 0, longest - f.shape[1])), F.pad(m, (0, longest - m.shape[1])))
            for f, m in prompts]
