"""A boolean mask held as bits: what the row merge keeps of a piece while
its rows of tiles are open (a random model's or a forest's masks cover
whole tiles: eight times less memory than numpy's one byte a pixel)."""

from __future__ import annotations

from typing import Any

import numpy as np


class Bits:
    """A 2-D boolean mask, each row packed into bytes. Slicing (`bits[r0:r1, c0:c1]`,
    steps of 1) unpacks only the rows and bytes asked for, into a boolean array;
    `np.asarray(bits)` unpacks the whole."""

    __slots__ = ("packed", "shape")

    def __init__(self, packed: np.ndarray, shape: tuple[int, int]) -> None:
        self.packed, self.shape = packed, shape

    @classmethod
    def of(cls, mask: np.ndarray) -> Bits:
        mask = np.asarray(mask, dtype=bool)
        return cls(np.packbits(mask, axis=1), (int(mask.shape[0]), int(mask.shape[1])))

    @classmethod
    def from_flat(cls, flat: np.ndarray, height: int, width: int) -> Bits:
        """From the bits of a whole mask packed in one run (`np.packbits(mask, axis=None)`)."""
        return cls.of(np.unpackbits(flat, count=height * width).reshape(height, width).view(bool))

    @property
    def nbytes(self) -> int:
        return int(self.packed.nbytes)

    def __getitem__(self, key: Any) -> np.ndarray:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        r0, r1, rs = rows.indices(self.shape[0])
        c0, c1, cs = cols.indices(self.shape[1])
        if rs != 1 or cs != 1:
            raise IndexError("Bits are sliced with steps of 1")
        c1 = max(c1, c0)
        b0 = c0 // 8
        out = np.unpackbits(self.packed[r0:r1, b0:(c1 + 7) // 8], axis=1)
        return out[:, c0 - 8 * b0:c1 - 8 * b0].view(bool)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:, :]
        return whole if dtype is None else whole.astype(dtype)


LARGE = 1 << 16  #: pixels from which the row merge holds a mask as bits (a small one is unpacked more than it weighs)
