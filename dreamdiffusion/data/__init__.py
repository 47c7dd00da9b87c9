"""Data: the raw-data layout, downloads, the synthetic world, preprocessing and the processed HDF5 files."""
