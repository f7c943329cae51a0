"""The segmenter contract: a third-party backend's own settings reach the resume check and the provenance."""

import numpy as np
import pytest

import geoseg
from geoseg.core.segmenter import Backend
from geoseg.errors import RunError, UsageError
from geoseg.io.export import read_provenance
from geoseg.run.engine import LocalEngine
from geoseg.testing import ColorSegmenter, make_scene

PROMPTS = ["red", "green", "blue"]
TILING = dict(tile_size=256, overlap=32)


class Ripe:
    """A backend as another package would write it: its own name, option and config."""

    name = "ripe"
    batch_size = 2

    def __init__(self, min_ripeness: float = 0.6, fail_after: int | None = None) -> None:
        self.min_ripeness = min_ripeness
        self.fail_after = fail_after
        self.seen = 0
        self._colors = ColorSegmenter(score_threshold=min_ripeness)

    def config(self) -> dict:
        return {"min_ripeness": self.min_ripeness}

    def segment(self, tiles, prompts):
        if self.fail_after is not None and self.seen >= self.fail_after:
            raise RuntimeError("the accelerator went away")
        self.seen += len(tiles)
        return self._colors.segment(tiles, prompts)


class Bare:
    def segment(self, tiles, prompts):
        return [[] for _ in tiles]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("contract") / "scene.tif", size=900, seed=4, n_objects=60)


def test_resume_refuses_a_changed_third_party_threshold(scene, tmp_path):
    out = tmp_path / "ripe.gpkg"
    failed = r"the ripe segmenter failed on tile\(s\) 8, 9: RuntimeError: the accelerator went away"
    with pytest.raises(RunError, match=failed):
        geoseg.segment(scene, PROMPTS, segmenter=Ripe(0.6, fail_after=8), output=out, **TILING)
    assert (tmp_path / "ripe.gpkg.geoseg-work").is_dir() and not out.exists()

    with pytest.raises(UsageError, match="made with min_ripeness=0.6, this run has min_ripeness=0.7"):
        geoseg.segment(scene, PROMPTS, segmenter=Ripe(0.7), output=out, **TILING)

    resumed = Ripe(0.6)
    gdf = geoseg.segment(scene, PROMPTS, segmenter=resumed, output=out, **TILING)
    assert 0 < resumed.seen < 16  # only the tiles the failed run had not staged
    fresh = geoseg.segment(scene, PROMPTS, segmenter=Ripe(0.6), **TILING)
    assert len(gdf) == len(fresh) > 10 and gdf.geometry.equals(fresh.geometry)
    provenance = read_provenance(out)
    assert provenance["backend"] == "ripe" and provenance["min_ripeness"] == 0.6


def test_a_bare_segmenter_gets_the_defaults():
    backend = Backend(Bare())
    assert (backend.name, backend.batch_size, backend.max_objects, backend.config()) == ("Bare", 4, None, {})
    assert not backend.reuses_features
    backend.check_prompts(["anything"])  # nothing to check
    backend.begin(3, ["anything"])
    engine = LocalEngine(Bare())
    assert (engine.backend, engine.options) == ("Bare", {})


def test_config_must_be_json():
    class Odd(Bare):
        def config(self):
            return {"weights": np.zeros(3)}

    with pytest.raises(UsageError, match="config\\(\\) must return a dict of JSON values"):
        Backend(Odd()).config()
    with pytest.raises(UsageError, match="no segment"):
        Backend(object())


def test_sam3_declares_its_settings_and_capacity(tmp_path):
    from geoseg.backends.sam3 import Sam3Segmenter
    from geoseg.testing import build_tiny_sam3

    seg = Sam3Segmenter(model=str(build_tiny_sam3(tmp_path / "tiny")), device="cpu", score_threshold=0.3)
    backend = Backend(seg)
    config = backend.config()
    assert config.pop("revision").startswith("folder:")  # which weights: see test_sam3's resume test
    assert config == {"model": str(tmp_path / "tiny"), "dtype": "fp32", "score_threshold": 0.3,
                      "mask_threshold": 0.5, "max_detections": None, "nms_iou": None}
    assert backend.max_objects == seg.model.config.detr_decoder_config.num_queries
    assert backend.reuses_features
