"""Image tensors shared by the foundation models: uint8 -> float, augmentation, resize + normalise, and
the one-cycle AdamW recipe the demo models train with."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_float_images(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def augment(x: torch.Tensor) -> torch.Tensor:
    """Random shifts of up to 1/8 of the image (reflect padding) and horizontal flips."""
    pad = max(1, x.shape[-1] // 8)
    padded = F.pad(x, (pad,) * 4, mode="reflect")
    i, j = np.random.randint(0, 2 * pad + 1, size=2)
    x = padded[..., i : i + x.shape[-2], j : j + x.shape[-1]]
    return torch.where(torch.rand(x.shape[0], 1, 1, 1) < 0.5, x.flip(-1), x)


def resize_normalize(size: int, mean, std, mode: str = "bilinear", clamp: bool = False):
    """A transform: images (B, 3, H, W) float in [0, 1] -> resized to `size` (`mode`, antialiased),
    optionally clamped back to [0, 1], normalised per channel by `mean` and `std`."""
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

    def transform(images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode=mode, antialias=True, align_corners=False)
        if clamp:
            images = images.clamp(0, 1)
        return (images - mean.to(images)) / std.to(images)

    return transform


def one_cycle(params, lr: float, steps: int, weight_decay: float, pct_start: float = 0.3):
    """AdamW and a one-cycle learning-rate schedule over `steps` steps (the demo models' recipe)."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=pct_start)


def descend(loss: torch.Tensor, optimizer, schedule, clip_params=None, max_norm: float = 1.0) -> None:
    """One step: clear the gradients, backpropagate `loss`, clip `clip_params` if given, step, advance the schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_params is not None:
        torch.nn.utils.clip_grad_norm_(clip_params, max_norm)
    optimizer.step()
    schedule.step()
