"""One epoch of fine-tuning, and the validation measures (losses, quick n-way of generated images).

Loss = noise-prediction MSE (honouring the scheduler's `prediction_type`)
     + clip_weight * (1 - cos(CLIP head(EEG), frozen CLIP image embedding of the paired image))
     + caption_weight * MSE(condition, the class caption's text states)   (optional; beyond the paper)
In the first `align_epochs` epochs (optional; beyond the paper) only the last two terms train the
conditioner: no UNet pass, so they cost a fraction of a joint epoch.
Every random draw of a trial (latent sample, condition noise, dropout, diffusion noise, timestep)
comes from a generator keyed by (seed, epoch, trial): see `rng.py`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dreamdiffusion.core.progress import progress
from dreamdiffusion.core.retrieval import gallery_top1
from dreamdiffusion.core.rng import draw, draw_ints, sample_generators
from dreamdiffusion.finetune.model import TimeConditioning


@dataclasses.dataclass
class Models:
    """What trains together: the conditioner and the UNet (partly frozen), plus frozen helpers."""

    conditioner: torch.nn.Module
    unet: torch.nn.Module
    vae: torch.nn.Module
    noise_scheduler: object
    caption_embeds: torch.Tensor  # (classes, S, W)

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for m in (self.conditioner, self.unet) for p in m.parameters() if p.requires_grad]


def diffusion_target(scheduler, latents, noise, timesteps):
    """What the UNet should predict, per the scheduler's `prediction_type`."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ValueError(f"unsupported prediction_type {kind!r}")


def losses(models: Models, batch, config, time_cond: TimeConditioning, seed: int, epoch: int) -> dict:
    """Diffusion, CLIP and caption losses of one batch, and their weighted total."""
    trial, eeg, mean, std, clip_target, label = batch
    generators, device = sample_generators(seed, epoch, trial), eeg.device
    latents = (mean + std * draw("randn", generators, mean.shape[1:], device)) * models.vae.config.scaling_factor
    shape = (models.caption_embeds.shape[1], models.caption_embeds.shape[2])  # (S, W)
    cond_noise = config.cond_noise * draw("randn", generators, shape, device) if config.cond_noise else None
    keep = draw("rand", generators, (), device) >= config.cond_dropout  # (B,)
    condition, time_vector, clip_pred, clean = models.conditioner(eeg, cond_noise, keep)
    caption_loss = torch.zeros((), device=device)
    if config.caption_weight:
        caption_loss = F.mse_loss(clean, models.caption_embeds.to(clean)[label])
    clip = 1 - F.cosine_similarity(clip_pred.float(), clip_target.float(), dim=-1).mean()
    alignment = config.clip_weight * clip + config.caption_weight * caption_loss
    if 0 <= epoch < config.align_epochs:  # alignment-only epochs: no UNet pass
        diffusion = torch.zeros((), device=device)
        return {"loss": alignment, "diffusion_loss": diffusion, "clip_loss": clip, "caption_loss": caption_loss}
    noise = draw("randn", generators, latents.shape[1:], device)
    timesteps = draw_ints(generators, models.noise_scheduler.config.num_train_timesteps, device)
    noisy = models.noise_scheduler.add_noise(latents, noise, timesteps)
    with time_cond(time_vector):
        pred = models.unet(noisy, timesteps, encoder_hidden_states=condition).sample
    diffusion = F.mse_loss(pred.float(), diffusion_target(models.noise_scheduler, latents, noise, timesteps).float())
    return {"loss": diffusion + alignment, "diffusion_loss": diffusion, "clip_loss": clip, "caption_loss": caption_loss}


def finetune_one_epoch(models: Models, loader, optimizer, accelerator, config, seed: int, epoch: int, step: int,
                    log: Callable[[dict, int], None] | None = None, ema=None, lr_schedule=None) -> tuple[dict, int]:
    """One pass over the train loader (stepping `lr_schedule` per step when given); returns (mean losses,
    next global step)."""
    models.conditioner.train()
    models.unet.train()
    time_cond = TimeConditioning(accelerator.unwrap_model(models.unet))
    sums, count, trainable = {}, 0, models.trainable()  # listed once: the UNet has hundreds of tensors
    desc = f"finetune epoch {epoch + 1}/{config.epochs}"
    for batch in progress(loader, desc=desc, leave=False, disable=not accelerator.is_main_process):
        with accelerator.autocast():
            out = losses(models, batch, config, time_cond, seed, epoch)
        accelerator.backward(out["loss"])
        if config.clip_grad:
            accelerator.clip_grad_norm_(trainable, config.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if lr_schedule is not None:
            lr_schedule.step()
        if ema is not None:
            ema.step(trainable)
        values = {k: float(accelerator.reduce(v.detach(), "mean")) for k, v in out.items()}
        sums = {k: sums.get(k, 0.0) + v for k, v in values.items()}
        count += 1
        if log is not None and accelerator.is_main_process and step % config.log_every == 0:
            log({f"step_{k}": v for k, v in values.items()}, step)
        step += 1
    return {k: v / max(count, 1) for k, v in sums.items()}, step


@torch.no_grad()
def val_losses(models: Models, val_set, config, seed: int, batch_size: int) -> dict:
    """Losses on the val split without dropout or condition noise, each trial's draws fixed
    (epoch -1), the mean CLIP cosine, and the top-1 retrieval of each trial's image among the val images
    from its CLIP-space embedding (val_retrieval_top1: zero-shot on held-out concepts)."""
    models.conditioner.eval()
    models.unet.eval()
    time_cond = TimeConditioning(models.unet)
    no_dropout = dataclasses.replace(config, cond_dropout=0.0, cond_noise=0.0)
    device = next(models.unet.parameters()).device
    sums, cosines, predicted, targets = {}, [], [], []
    for batch in DataLoader(val_set, batch_size=batch_size):
        batch = [t.to(device) for t in batch]
        out = losses(models, batch, no_dropout, time_cond, seed, -1)
        sums = {k: sums.get(k, 0.0) + float(v) * len(batch[0]) for k, v in out.items()}
        clip_pred = models.conditioner(batch[1]).clip
        cosines.append(F.cosine_similarity(clip_pred.float(), batch[4].float(), dim=-1).cpu())
        predicted.append(clip_pred.float().cpu())
        targets.append(batch[4].float().cpu())  # (B, E): the same vector for every trial of one image
    out = {f"val_{k}": v / len(val_set) for k, v in sums.items()}
    out["val_clip_cosine"] = float(torch.cat(cosines).mean())
    out["val_retrieval_top1"] = gallery_top1(torch.cat(predicted), torch.cat(targets))
    return out


@torch.no_grad()
def val_nway(models: Models, data, foundation, scheduler, config, seed: int, batch_size: int) -> tuple[float, int]:
    """(n-way top-1, n) of images generated from the probe val trials, judged against their ground truth."""
    from dreamdiffusion.core.nway import effective_n_way, nway_topk
    from dreamdiffusion.finetune.sample import images_from_eeg
    from dreamdiffusion.foundation.judge import predict

    probs = []
    for start in range(0, len(data.probe_rows), batch_size):
        rows = data.probe_rows[start : start + batch_size]
        eeg = torch.stack([data.val[int(r)][1] for r in rows])
        images = images_from_eeg(models.conditioner, models.unet, models.vae, scheduler, eeg,
                          [seed + int(r) for r in rows], config.val_steps, config.val_guidance)
        probs.append(predict(foundation.judge, foundation.judge_transform, images, batch_size).softmax(-1).numpy())
    probs = np.concatenate(probs)
    hits = nway_topk(probs, data.probe_true, config.nway, 1, config.nway_draws, seed)
    return float(np.mean(hits)), effective_n_way(config.nway, probs.shape[1])
