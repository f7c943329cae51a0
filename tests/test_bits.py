"""Masks held as bits by the row merge: any window unpacks to numpy's own slice."""

import numpy as np
import pytest

from geoseg.core.bits import Bits


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (300, 257), (64, 1008)])
def test_every_window_of_bits_is_the_masks_own(shape):
    rng = np.random.default_rng(sum(shape))
    mask = rng.random(shape) < 0.3
    bits = Bits.of(mask)
    assert bits.shape == shape and bits.nbytes == shape[0] * -(-shape[1] // 8)
    for _ in range(200):
        r0, r1 = sorted(rng.integers(0, shape[0] + 1, 2))
        c0, c1 = sorted(rng.integers(0, shape[1] + 1, 2))
        got = bits[r0:r1, c0:c1]
        assert got.dtype == bool and np.array_equal(got, mask[r0:r1, c0:c1])
    assert np.array_equal(bits[2:], mask[2:]) and np.array_equal(bits[:, -5:], mask[:, -5:])
    assert np.array_equal(np.asarray(bits), mask)
    flat = np.packbits(mask, axis=None)  # as the staging store keeps a mask (compressed when large)
    assert np.array_equal(Bits.from_flat(flat, *shape)[:, :], mask)
    with pytest.raises(IndexError):
        bits[::2]
