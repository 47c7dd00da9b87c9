"""Evaluation metrics (MinD-Vis, Chen et al. CVPR 2023; DreamDiffusion s.4): n-way top-k, 2-way identification, CLIP similarity,
SSIM, pixel correlation, FID/IS/KID, and the permutation control. Pure functions: arrays/paths in,
numbers out; the `evaluate` stage does the file layout and logging."""
from .controls import derangement, derangement_by_group
from .fidelity import fidelity_metrics, png_files
from .identification import clip_similarity, pixcorr, ssim, two_way_identification
from .nway import effective_n_way, expected_nway_topk, nway_topk, summarize_over_samples, true_classes_from

__all__ = ["clip_similarity", "derangement", "derangement_by_group", "effective_n_way", "expected_nway_topk",
           "fidelity_metrics", "nway_topk", "pixcorr", "png_files", "ssim", "summarize_over_samples",
           "true_classes_from", "two_way_identification"]
