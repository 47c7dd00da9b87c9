"""Stage `preprocess`: raw EEG and images -> the processed HDF5 files (paired EEG, images, corpus)."""
