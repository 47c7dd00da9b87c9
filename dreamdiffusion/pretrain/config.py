"""The `pretrain` params section: the MAE model, its corpus and schedule."""
from __future__ import annotations

from dataclasses import dataclass

from dreamdiffusion.core.compute import PRECISIONS
from dreamdiffusion.core.config import MAX_BATCH, MAX_EPOCHS, MAX_STEPS, param
from dreamdiffusion.pretrain.model import MAEConfig


@dataclass(frozen=True)
class PretrainConfig:
    """The `pretrain` params section."""

    preset: str = param("custom", choices=["custom", "paper"],
                        help="custom: `model` as written; paper: the paper's s.3.1 shape (mlp_ratio stays as set)")
    model: MAEConfig = param(MAEConfig(), help="shape of the masked autoencoder")
    epochs: int = param(8, min=1, max=MAX_EPOCHS)
    batch_size: int = param(32, min=1, max=MAX_BATCH, help="windows per step per process (paper: 100)")
    lr: float = param(2e-3, min=0.0, help="peak learning rate (paper: 2.5e-4)")
    min_lr: float = param(0.0, min=0.0, help="learning rate at the end of the cosine")
    weight_decay: float = param(0.05, min=0.0, help="AdamW decay, not applied to biases and norms")
    warmup_epochs: float = param(1.0, min=0.0, max=float(MAX_EPOCHS),
                                 help="linear warmup, per iteration (paper: 40 of 500)")
    clip_grad: float = param(0.8, min=0.0, help="max gradient norm; 0 = no clipping")
    mixed_precision: str = param("fp32", choices=PRECISIONS, help="autocast dtype; fp16 needs a GPU; auto: bf16 where native")
    val_fraction: float = param(0.1, min=0.0, max=0.9, help="share of corpus recordings held out for val")
    max_windows: int = param(0, min=0, max=1_000_000_000, help="use at most this many training windows (0 = all)")
    checkpoint_every: int = param(2, min=1, max=MAX_EPOCHS, help="epochs between resume checkpoints", run_key=False)
    keep_checkpoints: bool = param(False, help="keep the resume checkpoints after a successful run", run_key=False)
    log_every: int = param(1, min=1, max=MAX_STEPS,
                           help="log step loss / lr to MLflow every this many steps", run_key=False)
    probe_c: float = param(1.0, min=1e-6, help="inverse L2 strength of the linear probe", run_key=False)
    probe_random_inits: int = param(3, min=1, max=100,
                                    help="random-init encoders the probe baseline averages over", run_key=False)
    probe_batch_size: int = param(128, min=1, max=MAX_BATCH,
                                  help="windows per encoder forward pass in the probe", run_key=False)
    figure_channels: int = param(4, min=1, max=1024, help="channels drawn in the reconstruction figure", run_key=False)

    def resolved_model(self) -> MAEConfig:
        """The model config with the preset applied."""
        return self.model.with_preset(self.preset)
