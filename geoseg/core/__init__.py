"""Pure computation: tiling, detections, the segmenter contract, seam merge,
refinement, staging and vectorising. No file or network I/O beyond the
staging database; imports nothing from the layers above (io, run, analysis)."""
