"""Recording frame streams to disk, losslessly (OME-Zarr v0.5)."""
