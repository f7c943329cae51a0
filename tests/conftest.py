import numpy as np
import pytest

from geoseg.core.merge import Instance, merge
from geoseg.core.tiling import plan_tiles
from geoseg.core.vectorize import mask_of
from geoseg.testing import ColorSegmenter, pieces_in_memory

PROMPTS = ["red", "green", "blue"]


def run_merge(rgb, tile_size, overlap, segmenter=None, prompts=PROMPTS):
    """Tile an in-memory image, segment each tile, merge: the instances."""
    plan = plan_tiles(rgb.shape[0], rgb.shape[1], tile_size, overlap)
    pieces = pieces_in_memory(rgb, plan, segmenter or ColorSegmenter(), prompts)
    return merge(pieces, plan), plan


def untiled(rgb, prompts=PROMPTS):
    """What one tile covering the whole image sees: the truth to match."""
    size = max(rgb.shape[:2])
    return run_merge(rgb, size, 0, prompts=prompts)[0]


def paint(instances: list[Instance], shape) -> np.ndarray:
    """An id image (0 = none); fails if two instances claim one pixel."""
    out = np.zeros(shape, np.int32)
    for k, inst in enumerate(instances, 1):
        mask = mask_of(inst)
        sub = out[inst.row:inst.row + mask.shape[0], inst.col:inst.col + mask.shape[1]]
        assert not (sub[mask] != 0).any(), "two instances claim one pixel"
        sub[mask] = k
    return out


def match_ious(truth: list[Instance], result: list[Instance], shape) -> list[float]:
    """For each truth instance, the IoU of the one result instance covering it."""
    t, r = paint(truth, shape), paint(result, shape)
    ious = []
    for k in range(1, len(truth) + 1):
        hit = r[t == k]
        best = np.bincount(hit[hit > 0]).argmax() if (hit > 0).any() else 0
        inter = np.count_nonzero((t == k) & (r == best)) if best else 0
        union = np.count_nonzero((t == k) | ((r == best) if best else False))
        ious.append(inter / union)
    return ious


def run(*args):
    """Run the geoseg CLI in-process; the click Result."""
    from click.testing import CliRunner

    from geoseg.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, code=2):
    """Assert the run failed with exactly one `geoseg: error:` line; return it."""
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geoseg: error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def scene_path(tmp_path):
    from geoseg.testing import make_scene

    return make_scene(tmp_path / "scene.tif", size=1200, seed=3)
