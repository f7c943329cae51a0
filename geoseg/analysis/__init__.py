"""Working with results: evaluate, stats, plot, dataset export and the
interactive `Segmentation` session. The top library layer: it may use every
layer below, and none of them imports it."""
