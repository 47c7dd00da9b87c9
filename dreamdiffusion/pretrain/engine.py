"""One epoch of masked-autoencoder training, and the masked-reconstruction evaluation."""
from __future__ import annotations

import math
import time
from typing import Callable

import torch

from dreamdiffusion.core.progress import progress
from dreamdiffusion.core.rng import draw, sample_generators


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float = 0.0) -> float:
    """Per-iteration linear warmup to `base_lr`, then half-cycle cosine down to `min_lr`."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def mask_noise(model, seed: int, epoch: int, index: torch.Tensor, device) -> torch.Tensor:
    """The masking noise (B, T) of each window, keyed by (seed, epoch, window index) only."""
    tokens = model.config.num_tokens if hasattr(model, "config") else model.module.config.num_tokens
    return draw("rand", sample_generators(seed, epoch, index), (tokens,), device)


def train_one_epoch(model, loader, optimizer, accelerator, schedule: Callable[[int], float], step: int,
                    clip_grad: float, seed: int, epoch: int, log_step: Callable[[int, dict], None] | None = None,
                    desc: str = "train") -> dict:
    """Train over `loader` once; returns the epoch's mean masked MSE, samples seen and seconds."""
    model.train()
    loss_sum = torch.zeros((), device=accelerator.device)
    samples = torch.zeros((), device=accelerator.device)
    start = time.perf_counter()
    for eeg, index in progress(loader, desc=desc, leave=False, disable=not accelerator.is_local_main_process):
        lr = schedule(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, _, _ = model(eeg, noise=mask_noise(model, seed, epoch, index, eeg.device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"masked MSE is {loss.item()} at step {step}: lower the lr or check the corpus")
        accelerator.backward(loss)
        if clip_grad > 0:
            accelerator.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach() * len(eeg)
        samples += len(eeg)
        if log_step is not None and accelerator.is_main_process:
            log_step(step, {"train_loss": loss.item(), "lr": lr})
        step += 1
    loss_sum, samples = accelerator.reduce(loss_sum, "sum"), accelerator.reduce(samples, "sum")
    seconds = time.perf_counter() - start
    return {"loss": (loss_sum / samples.clamp(min=1)).item(), "samples": int(samples.item()),
            "seconds": seconds, "step": step}


@torch.no_grad()
def masked_mse(model, loader, accelerator, seed: int) -> float:
    """Masked MSE over `loader`, each window's mask keyed by (seed, window index): the same every epoch."""
    model.eval()
    mae = accelerator.unwrap_model(model)
    sums, counts = [], []
    for eeg, index in loader:
        with accelerator.autocast():
            _, pred, mask = mae(eeg, noise=mask_noise(mae, seed, -1, index, eeg.device))
        per_token = (pred.float() - mae.target(eeg)).pow(2).mean(dim=-1)  # (B, T)
        batch_sums, batch_counts = accelerator.gather_for_metrics(((per_token * mask).sum(1), mask.sum(1)))
        sums.append(batch_sums)
        counts.append(batch_counts)
    return (torch.cat(sums).sum() / torch.cat(counts).sum().clamp(min=1)).item()
