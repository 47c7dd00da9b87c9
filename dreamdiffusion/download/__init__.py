"""Stage `download`: the raw-data layout (EEG-ImageNet's files, or the synthetic world in the same format)."""
