"""The demo text-to-image model: a miniature `UNet2DConditionModel` on VAE latents.

It cross-attends to the miniature CLIP's per-token text states of a class caption (the
empty caption's states with probability `caption_dropout`, so classifier-free guidance works)
and is trained with SD's eps-prediction objective and noise schedule.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from dreamdiffusion.core.progress import progress
from dreamdiffusion.foundation.config import UNetConfig
from dreamdiffusion.foundation.images import descend, one_cycle
from dreamdiffusion.foundation.shapes import SD15_SCHEDULE


def sd_scheduler() -> DDIMScheduler:
    """The sampler saved with the demo pipeline (DDIM on SD's schedule)."""
    return DDIMScheduler(**SD15_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def build_unet(cfg: UNetConfig, latent_size: int, latent_channels: int, cross_attention_dim: int) -> UNet2DConditionModel:
    """Plain ResNet blocks at full latent resolution, cross-attention at every lower level."""
    n = len(cfg.block_out_channels)
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cross_attention_dim, attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
    )


def train_unet(latent_mean: torch.Tensor, latent_std: torch.Tensor, labels: torch.Tensor, scaling_factor: float,
               caption_embeds: torch.Tensor, null_embeds: torch.Tensor, cfg: UNetConfig,
               device: str = "cpu") -> UNet2DConditionModel:
    """Train on cached posterior moments (N, C, h, w); `caption_embeds` (classes, T, D), `null_embeds` (1, T, D)."""
    _, channels, size, _ = latent_mean.shape
    unet = build_unet(cfg, size, channels, caption_embeds.shape[-1]).to(device).train()
    noise_scheduler = DDPMScheduler(**SD15_SCHEDULE)
    optimizer, schedule = one_cycle(unet.parameters(), cfg.lr, cfg.steps, weight_decay=1e-2, pct_start=0.05)
    conditions = torch.cat([caption_embeds, null_embeds]).to(device)  # (classes + 1, T, D)
    for _ in progress(range(cfg.steps), desc="unet", mininterval=2):
        idx = torch.randint(0, len(latent_mean), (cfg.batch_size,))
        latents = (latent_mean[idx] + latent_std[idx] * torch.randn_like(latent_std[idx])).to(device) * scaling_factor
        which = torch.where(torch.rand(len(idx)) < cfg.caption_dropout, len(caption_embeds), labels[idx])
        noise = torch.randn_like(latents)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(idx),), device=device)
        pred = unet(noise_scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=conditions[which.to(device)]).sample
        descend(F.mse_loss(pred, noise), optimizer, schedule, clip_params=unet.parameters())
    return unet.eval()


def make_pipeline(unet: UNet2DConditionModel, vae: AutoencoderKL, scheduler) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline without text encoder/tokenizer: it generates from `prompt_embeds`."""
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_pipeline(pipe: StableDiffusionPipeline, out_dir) -> None:
    """`save_pretrained` (safetensors) without the notices about the absent text encoder/tokenizer."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        pipe.save_pretrained(out_dir, safe_serialization=True)
    finally:
        diffusers_logging.set_verbosity(level)


@torch.no_grad()
def images_from_captions(pipe: StableDiffusionPipeline, prompt_embeds: torch.Tensor, null_embeds: torch.Tensor,
             guidance_scale: float, steps: int, seed: int, batch_size: int = 100) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1] from `prompt_embeds` (N, T, D); guidance against `null_embeds` (1, T, D)."""
    generator = torch.Generator("cpu").manual_seed(seed)
    out = []
    for i in range(0, len(prompt_embeds), batch_size):
        embeds = prompt_embeds[i : i + batch_size].to(pipe.device, pipe.unet.dtype)
        latents = torch.randn((len(embeds), pipe.unet.config.in_channels, pipe.unet.config.sample_size,
                               pipe.unet.config.sample_size), generator=generator).to(pipe.device, pipe.unet.dtype)
        images = pipe(prompt_embeds=embeds, negative_prompt_embeds=null_embeds.to(embeds).expand_as(embeds),
                      guidance_scale=guidance_scale, num_inference_steps=steps, latents=latents, output_type="pt").images
        out.append(images.float().cpu())
    return torch.cat(out)
