"""The `generate` params section: samples per test trial, sampler, controls, figures."""
from __future__ import annotations

import dataclasses

from dreamdiffusion.core.config import MAX_BATCH, MAX_SAMPLING_STEPS, PRECISIONS, param


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """The `generate` params section."""

    sampling: str = param("params", choices=["params", "checkpoint"],
                          help="checkpoint: scheduler, steps, samples and guidance of an imported official "
                               "checkpoint (its official.json) instead of the values below")
    samples_per_eeg: int = param(2, min=1, max=100, help="images per test trial (paper: 5)")
    scheduler: str = param("ddim", choices=["ddim", "pndm", "dpmsolver++"], help="pndm = the paper's PLMS")
    steps: int = param(6, min=1, max=MAX_SAMPLING_STEPS, help="sampling steps (paper: 250 PLMS)")
    guidance: float = param(3.0, min=1.0, help="classifier-free guidance scale (1 = none, as the paper)")
    batch_size: int = param(64, min=1, max=MAX_BATCH, help="images per sampling batch (UNet)")
    decode_batch_size: int = param(16, min=1, max=MAX_BATCH,
                                   help="latents per VAE decode call (the memory peak at 512 px)")
    mixed_precision: str = param("fp32", choices=PRECISIONS,
                                 help="autocast dtype while sampling: fp32 (the reported default, same numbers on "
                                      "every CPU) | auto (bf16 where the hardware runs it natively) | bf16 | fp16 (GPU)")
    control_samples: int = param(1, min=0, max=100, help="images per trial from ANOTHER trial's EEG (0 = no control)")
    control_pairing: str = param("image", choices=["image", "class"],
                                 help="the partner trial shows another image (null: chance) or another class")
    grid_trials: int = param(4, min=1, max=100, help="trials per class in the per-class grids")
    figure_classes: int = param(10, min=0, max=1000,
                                help="overview rows: the first test trial of each of the first N classes (0 = every class)")
    figure_tile_px: int = param(96, min=64, max=512, help="px of each image in the overview and the per-class grids "
                                                          "(nearest-neighbour upscaling)")
