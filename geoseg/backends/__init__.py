"""Segmentation backends: each module holds one model behind the `Segmenter` contract."""
