"""The `evaluate` params section: metrics, n-way draws, fidelity settings."""
from __future__ import annotations

import dataclasses

from dreamdiffusion.core.config import MAX_BATCH, MAX_DRAWS, param


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """The `evaluate` params section."""

    nway: int = param(50, min=2, max=MAX_DRAWS, help="n of the n-way protocol (capped at the judge's classes)")
    nway_draws: int = param(50, min=1, max=MAX_DRAWS,
                            help="random distractor draws per image (DreamDiffusion 50, MinD-Vis 1000)")
    fidelity: bool = param(True, help="compute FID / IS / KID")
    kid_subset_size: int = param(100, min=2, max=MAX_DRAWS)
    batch_size: int = param(128, min=1, max=MAX_BATCH, help="images per judge / CLIP / SSIM batch")
    retrieval: bool = param(True, help="zero-shot retrieval: the EEG's CLIP-space embedding ranked against the "
                            "CLIP embeddings of every test image (evaluate/retrieval.py)")
    retrieval_ways: list[int] = param([2, 4, 10], min=2, max=MAX_DRAWS, help="k of the k-way retrieval variants "
                                      "(those above the gallery size are left out)")
    retrieval_draws: int = param(50, min=1, max=MAX_DRAWS, help="random distractor draws of each k-way variant")
    retrieval_shuffles: int = param(20, min=1, max=MAX_DRAWS, help="draws of the shuffled-EEG control")
    fidelity_batch_size: int = param(64, min=1, max=MAX_BATCH,
                                     help="images per feature-extractor batch in FID / IS / KID")
