"""SAM 3's masks cut to their boxes on the device, in as few copies as the device allows."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# Upsample at most this many mask pixels at once (float32: 1 GB on CUDA; 64 MB elsewhere, where
# a larger chunk saves no time and adds to the run's peak memory: 16 masks of a 1008 px tile).
UPSAMPLE_PIXELS = {"cuda": 2**28, "other": 2**24}
# Crop pixels cut out per gather on CUDA at most (its indices: ~20 bytes a pixel).
GATHER_PIXELS = 2**26


def crops(
    masks: torch.Tensor, *, gather: bool = True
) -> tuple[list[tuple[int, int] | None], list[np.ndarray | None]]:
    """The origin (row, col) of each boolean mask's box and the mask cropped to it; None
    for an empty one. Boxes come back in one copy, then every crop in one copy: with
    `gather` (CUDA) cut out by one gather, a few kernels whatever the number of masks;
    else (CPU, where a slice launches nothing) one slice per mask."""
    import torch

    if len(masks) == 0:
        return [], []
    k, height, width = masks.shape
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    first_row = rows.to(torch.uint8).argmax(dim=1)
    last_row = height - rows.flip(1).to(torch.uint8).argmax(dim=1)
    first_col = cols.to(torch.uint8).argmax(dim=1)
    last_col = width - cols.flip(1).to(torch.uint8).argmax(dim=1)
    found = rows.any(dim=1)
    boxes = torch.stack([first_row, last_row, first_col, last_col, found], dim=1).cpu().numpy()
    h = np.where(boxes[:, 4] > 0, boxes[:, 1] - boxes[:, 0], 0)
    w = np.where(boxes[:, 4] > 0, boxes[:, 3] - boxes[:, 2], 0)
    areas = h * w
    if not areas.any():
        return [None] * k, [None] * k
    starts = np.concatenate([[0], np.cumsum(areas)[:-1]])
    if gather:
        flat = _gather_crops(masks, boxes[:, 0], boxes[:, 2], w, areas)
    else:
        parts = [masks[i, b[0] : b[1], b[2] : b[3]].reshape(-1) for i, b in enumerate(boxes) if areas[i]]
        flat = torch.cat(parts).cpu().numpy()
    origins: list[tuple[int, int] | None] = []
    crops: list[np.ndarray | None] = []
    for i in range(k):
        if areas[i] == 0:
            origins.append(None)
            crops.append(None)
            continue
        origins.append((int(boxes[i, 0]), int(boxes[i, 2])))
        crops.append(flat[starts[i] : starts[i] + areas[i]].reshape(int(h[i]), int(w[i])))
    return origins, crops


def _gather_crops(masks: torch.Tensor, row0: np.ndarray, col0: np.ndarray, w: np.ndarray,
                  areas: np.ndarray) -> np.ndarray:
    """Every mask's box, row by row, concatenated, cut out by gathers of at most
    `GATHER_PIXELS` pixels (more only for one mask alone): pixel p of the result is
    found from its mask, then its row and column in that box."""
    import torch

    k, height, width = masks.shape
    dev, flat = masks.device, masks.reshape(-1)
    # Flat index of each box's top-left pixel; int32 is enough, a chunk of masks holds
    # fewer than 2**31 pixels.
    base = torch.from_numpy((np.arange(k) * height * width + row0 * width + col0).astype(np.int32)).to(dev)
    w_t = torch.from_numpy(w.astype(np.int32)).to(dev)
    parts, lo = [], 0
    while lo < k:
        hi = lo + max(1, int(np.searchsorted(np.cumsum(areas[lo:]), GATHER_PIXELS, side="right")))
        total = int(areas[lo:hi].sum())
        if total:
            which = torch.repeat_interleave(torch.arange(lo, hi, dtype=torch.int32, device=dev),
                                            torch.from_numpy(areas[lo:hi]).to(dev), output_size=total)
            starts = np.concatenate([[0], np.cumsum(areas[lo:hi])[:-1]]).astype(np.int32)
            local = torch.arange(total, dtype=torch.int32, device=dev)
            local -= torch.from_numpy(starts).to(dev)[which - lo]
            crop_w = w_t[which]
            r = local // crop_w
            local -= r * crop_w  # now the column
            parts.append(flat[base[which] + r * width + local].cpu().numpy())
        lo = hi
    return np.concatenate(parts)


# -- device, dtype, loading ------------------------------------------------------------
