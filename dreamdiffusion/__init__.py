"""DreamDiffusion, reproducibly: EEG -> images (arXiv 2306.16934)."""
