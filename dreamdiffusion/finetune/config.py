"""The `finetune` params section: what is trained, the losses, the schedule, selection on val."""
from __future__ import annotations

import re
from dataclasses import dataclass

from dreamdiffusion.core.compute import PRECISIONS
from dreamdiffusion.core.config import (
    MAX_BATCH,
    MAX_DRAWS,
    MAX_EPOCHS,
    MAX_SAMPLING_STEPS,
    MAX_STEPS,
    ConfigError,
    param,
)


@dataclass(frozen=True)
class FinetuneConfig:
    """The `finetune` params section."""

    source: str = param("trained", choices=["trained", "official"],
                        help="official: import the authors' released checkpoint instead of training")
    official_checkpoint: str | None = param(None, help="checkpoint_best.pth of the official release (source: official)")
    official_sha256: str | None = param(None, help="its sha256: checked before the file is read")
    official_ldm_config: str | None = param(None, help="the official LDM yaml (config15.yaml); null: SD 1.5's")
    encoder_init: str = param("pretrained", choices=["pretrained", "random"])
    train_encoder: bool = param(True)
    train_unet: str = param("cross_attention", choices=["none", "cross_attention", "full"])
    mapper: str = param("paper", choices=["paper", "flat"])
    time_conditioning: bool = param(True)
    null_condition: str = param("learned", choices=["learned", "zero"])
    cond_dropout: float = param(0.1, min=0.0, max=1.0)
    cond_noise: float = param(0.1, min=0.0, help="std of Gaussian noise added to the condition in training")
    clip_weight: float = param(1.0, min=0.0)
    caption_weight: float = param(3.0, min=0.0, help="pull the condition towards the class caption's text states")
    train_fraction: float = param(1.0, min=0.0, max=1.0,
                                  help="label budget: the share of each class's TRAIN trials fine-tuned on, a subset "
                                  "fixed by the seed (finetune/budget.py); val and test are never subsampled")
    epochs: int = param(25, min=1, max=MAX_EPOCHS)
    align_epochs: int = param(24, min=0, max=MAX_EPOCHS,
                              help="the first epochs train the conditioner on the CLIP (and caption) "
                              "losses alone, without the UNet (cheap); the rest add the diffusion loss")
    batch_size: int = param(32, min=1, max=MAX_BATCH)
    lr: float = param(3e-3, min=0.0)
    unet_lr: float = param(3e-4, min=0.0, help="learning rate of the UNet part (0 = lr)")
    lr_schedule: str = param("constant", choices=["constant", "cosine"],
                             help="cosine: half-cycle cosine over all steps from lr (and unet_lr) down to "
                             "min_lr_ratio of it")
    min_lr_ratio: float = param(0.0, min=0.0, max=1.0, help="cosine: the last step's share of the peak lr")
    weight_decay: float = param(0.0, min=0.0)
    clip_grad: float = param(0.5, min=0.0)
    mixed_precision: str = param("fp32", choices=PRECISIONS, help="autocast dtype; fp16 needs a GPU; auto: bf16 where native")
    ema_decay: float = param(0.995, min=0.0, max=1.0, help="EMA of the trained weights (validated and kept); 0 = none")
    encode_batch_size: int = param(64, min=1, max=MAX_BATCH,
                                   help="images per VAE/CLIP batch when encoding the images once", run_key=False)
    val_batch_size: int = param(32, min=1, max=MAX_BATCH,
                                help="trials per batch in validation (losses, generation, judge)", run_key=False)
    val_every: int = param(25, min=1, max=MAX_EPOCHS)
    val_trials: int = param(60, min=1, max=MAX_DRAWS, help="val trials generated for the quick n-way accuracy")
    val_steps: int = param(6, min=1, max=MAX_SAMPLING_STEPS)
    val_guidance: float = param(3.0, min=1.0)
    nway: int = param(50, min=2, max=MAX_DRAWS)
    nway_draws: int = param(50, min=1, max=MAX_DRAWS, help="random distractor draws per val image in the quick n-way")
    select_by: str = param("val_nway_top1", choices=["val_nway_top1", "val_retrieval_top1", "val_loss"],
                           help="val_retrieval_top1: the val trials' CLIP-space retrieval of their image among "
                                "the val images (zero-shot splits, THINGS-EEG2)")
    checkpoint_every: int = param(2, min=1, max=MAX_EPOCHS, run_key=False)
    keep_checkpoints: bool = param(False, help="keep the resume checkpoint after a successful run", run_key=False)
    log_every: int = param(5, min=1, max=MAX_STEPS, run_key=False)
    figure_classes: int = param(10, min=0, max=1000, run_key=False,
                                help="val grid rows: the first val trial of each of the first N classes (0 = every class)")
    figure_tile_px: int = param(96, min=64, max=512, run_key=False,
                                help="px of each image in the val grid (nearest-neighbour upscaling)")

    def validates(self, epoch: int) -> bool:
        """Whether the end of `epoch` (1-based) is validated: every `val_every` epochs, and the last."""
        return epoch % self.val_every == 0 or epoch == self.epochs

    def keeps(self, epoch: int) -> bool:
        """Whether a validated `epoch` may be kept: only one the UNet trained with (after the alignment-only ones)."""
        return epoch > self.align_epochs

    def __post_init__(self):
        if self.source == "official" and not (self.official_checkpoint and self.official_sha256):
            raise ConfigError("finetune.source official needs finetune.official_checkpoint (a path) and "
                              "finetune.official_sha256 (its sha256, 64 hex digits)")
        if self.official_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.official_sha256):
            raise ConfigError(f"finetune.official_sha256: expected 64 lowercase hex digits, got {self.official_sha256!r}")
        if not self.train_encoder and self.encoder_init == "random" and self.train_unet == "none":
            raise ConfigError("nothing would learn the EEG: train_encoder false, encoder_init random, train_unet none")
        if self.align_epochs and not (self.clip_weight or self.caption_weight):
            raise ConfigError(f"finetune.align_epochs {self.align_epochs} with clip_weight and caption_weight both 0: "
                              "those epochs would train nothing; set align_epochs: 0")
        if self.train_fraction <= 0:
            raise ConfigError(f"finetune.train_fraction: expected a fraction in (0, 1], got {self.train_fraction}")
        if self.align_epochs >= self.epochs:
            raise ConfigError(f"finetune.align_epochs {self.align_epochs} must be below finetune.epochs {self.epochs}: "
                              "the last epochs need the diffusion loss")
