"""Sampling images from EEG with classifier-free guidance through the null condition.

Each image has its own seed: its initial latent noise comes from a generator seeded with it,
so any (trial, sample) can be regenerated alone, in any batch.
"""
from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

from dreamdiffusion.finetune.model import EEGConditioner, TimeConditioning

SCHEDULERS = {"ddim": DDIMScheduler, "pndm": PNDMScheduler, "dpmsolver++": DPMSolverMultistepScheduler}


def make_scheduler(name: str, base_config: dict):
    """A diffusers sampler of kind `name` on the noise schedule of `base_config`."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler {name!r} is not one of {list(SCHEDULERS)}")
    extra = {"algorithm_type": "dpmsolver++"} if name == "dpmsolver++" else {}
    if name == "pndm":
        extra["skip_prk_steps"] = True  # PLMS, as the paper's sampler
    return SCHEDULERS[name].from_config(base_config, **extra)


def initial_latents(seeds: list[int], shape: tuple[int, ...], device) -> torch.Tensor:
    """(B, C, h, w) standard-normal latents, one generator per seed (CPU, so any device agrees)."""
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(device)


def decode(vae, latents: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Latents -> images (B, 3, H, W) in [0, 1], `batch_size` latents per VAE call (None: all at once)."""
    step = batch_size or len(latents)
    images = torch.cat([vae.decode(latents[i : i + step] / vae.config.scaling_factor).sample
                        for i in range(0, len(latents), step)])
    return (images / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def images_from_eeg(conditioner: EEGConditioner, unet, vae, scheduler, eeg: torch.Tensor, seeds: list[int],
             steps: int = 25, guidance: float = 3.0, decode_batch: int | None = None) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] from EEG (B, 128, 512), one seed per image (on the UNet's device)."""
    device = next(unet.parameters()).device
    condition, time_vector, _, _ = conditioner(eeg.to(device))
    null = conditioner.null_like(condition)
    size = unet.config.sample_size
    latents = initial_latents(seeds, (unet.config.in_channels, size, size), device)
    latents = latents * scheduler.init_noise_sigma
    scheduler.set_timesteps(steps, device=device)
    time_cond = TimeConditioning(unet)
    guided = guidance != 1.0
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(torch.cat([latents, latents]) if guided else latents, t)
        cond = torch.cat([null, condition]) if guided else condition
        vector = None
        if time_vector is not None:
            vector = torch.cat([torch.zeros_like(time_vector), time_vector]) if guided else time_vector
        with time_cond(vector):
            pred = unet(model_in, t, encoder_hidden_states=cond).sample
        if guided:
            uncond, cond_pred = pred.chunk(2)
            pred = uncond + guidance * (cond_pred - uncond)
        latents = scheduler.step(pred, t, latents).prev_sample
    return decode(vae, latents, decode_batch)
