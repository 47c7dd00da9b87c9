"""Shared pieces under every stage: params parsing, file I/O, HDF5 schemas, EEG signal processing,
training and tracking helpers, compute settings, the stage command line. Nothing here imports a stage."""
