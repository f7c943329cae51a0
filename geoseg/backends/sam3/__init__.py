"""Meta's SAM 3 (Promptable Concept Segmentation) through Hugging Face transformers:
`loading` (a hub id or a folder), `detector` (the segmenter), `exemplars` (box tokens),
`postprocess` (masks cut to their boxes). torch and transformers are imported only when a
`Sam3Segmenter` is built."""

from geoseg.backends.sam3.detector import Sam3Segmenter
from geoseg.backends.sam3.loading import DTYPES, HUB_ID, LICENCE, revision

__all__ = ["DTYPES", "HUB_ID", "LICENCE", "Sam3Segmenter", "revision"]
