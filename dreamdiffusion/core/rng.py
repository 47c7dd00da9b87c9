"""Randomness keyed by sample, not by process: every random draw of a training sample (MAE mask,
diffusion noise and timestep, condition dropout) comes from a generator seeded by (seed, epoch,
sample index) alone. So a run on N processes with batch B draws exactly what one process with
batch N * B draws, and a resumed run draws what the uninterrupted one did.
"""
from __future__ import annotations

from typing import Sequence

import torch

_MIX = (1_000_003, 1_000_033)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's draws in one epoch (epoch -1: evaluation, the same every epoch)."""
    return ((seed * _MIX[0] + epoch + 1) * _MIX[1] + int(index)) % (2**63 - 1)


def sample_generators(seed: int, epoch: int, indices: Sequence[int] | torch.Tensor) -> list[torch.Generator]:
    """One CPU generator per sample (CPU, so every device and process draws the same numbers)."""
    values = indices.tolist() if torch.is_tensor(indices) else list(indices)
    return [torch.Generator().manual_seed(sample_seed(seed, epoch, i)) for i in values]


def draw(kind: str, generators: list[torch.Generator], shape: tuple[int, ...], device) -> torch.Tensor:
    """(B, *shape) uniform ('rand') or normal ('randn') numbers, row b from generator b."""
    fn = torch.rand if kind == "rand" else torch.randn
    return torch.stack([fn(shape, generator=g) for g in generators]).to(device)


def draw_ints(generators: list[torch.Generator], high: int, device) -> torch.Tensor:
    """(B,) integers in [0, high), one per generator."""
    return torch.cat([torch.randint(0, high, (1,), generator=g) for g in generators]).to(device)
