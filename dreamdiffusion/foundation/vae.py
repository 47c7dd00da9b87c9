"""The demo `AutoencoderKL`: trained on the images with reconstruction MSE + a small KL term."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from dreamdiffusion.core.progress import progress
from dreamdiffusion.foundation.config import VAEConfig
from dreamdiffusion.foundation.images import descend, one_cycle


def build_vae(cfg: VAEConfig, image_size: int) -> AutoencoderKL:
    """A miniature SD-style VAE: downsamples by 2 ** (len(block_out_channels) - 1)."""
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block, latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups, sample_size=image_size,
    )


def train_vae(images: torch.Tensor, cfg: VAEConfig, device: str = "cpu") -> AutoencoderKL:
    """Train on images (N, 3, H, W) in [-1, 1]; sets `scaling_factor` to 1 / std of the latents."""
    vae = build_vae(cfg, images.shape[-1])
    with torch.no_grad():  # start with a small posterior std: noisy latents slow early training a lot
        vae.quant_conv.bias[cfg.latent_channels :] = cfg.init_logvar
    vae = vae.to(device).train()
    optimizer, schedule = one_cycle(vae.parameters(), cfg.lr, cfg.steps, weight_decay=0.0, pct_start=0.1)
    for _ in progress(range(cfg.steps), desc="vae", mininterval=2):
        batch = images[torch.randint(0, len(images), (cfg.batch_size,))].to(device)
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample()).sample
        error = F.l1_loss(recon, batch) if cfg.loss == "l1" else F.mse_loss(recon, batch)
        descend(error + cfg.kl_weight * posterior.kl().mean(), optimizer, schedule)
    vae.eval()
    mean, _ = encode_moments(vae, images)
    vae.register_to_config(scaling_factor=float(1.0 / mean.std()))
    return vae


@torch.no_grad()
def encode_moments(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256):
    """Posterior mean and std (N, C, h, w) of images (N, 3, H, W) in [-1, 1], unscaled."""
    device = vae.device
    means, stds = [], []
    for i in range(0, len(images), batch_size):
        dist = vae.encode(images[i : i + batch_size].to(device)).latent_dist
        means.append(dist.mean.cpu())
        stds.append(dist.std.cpu())
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Decode the posterior means of images (N, 3, H, W) in [-1, 1]; output clamped to [-1, 1]."""
    mean, _ = encode_moments(vae, images, batch_size)
    out = [vae.decode(mean[i : i + batch_size].to(vae.device)).sample.cpu() for i in range(0, len(mean), batch_size)]
    return torch.cat(out).clamp(-1, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR (dB) between image batches in [-1, 1], per image on the [0, 1] scale."""
    mse = ((a - b) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1.0 / mse)).mean())
