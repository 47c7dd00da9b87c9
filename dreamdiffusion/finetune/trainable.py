"""Which UNet parameters train, chosen by module type (never by name substring).

The original code matched the substring `norm2` over the whole model and so also unfroze
CLIP's LayerNorms; it also left `requires_grad=True` on the frozen UNet, spending gradient
memory on all of it. Here frozen parameters get `requires_grad=False` before any optimizer
exists, and the cross-attention set is found through diffusers' `BasicTransformerBlock`.
"""
from __future__ import annotations

import torch
from diffusers.models.attention import BasicTransformerBlock

UNET_MODES = ("none", "cross_attention", "full")


def cross_attention_modules(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The cross-attention (`attn2`) of every transformer block and the norm in front of it."""
    modules = []
    for block in unet.modules():
        if isinstance(block, BasicTransformerBlock) and block.attn2 is not None:
            modules.append(block.attn2)
            if block.norm2 is not None:
                modules.append(block.norm2)
    return modules


def set_unet_trainable(unet: torch.nn.Module, mode: str) -> list[torch.nn.Parameter]:
    """Freeze the UNet except what `mode` trains; return the trainable parameters."""
    if mode not in UNET_MODES:
        raise ValueError(f"train_unet {mode!r} is not one of {list(UNET_MODES)}")
    unet.requires_grad_(mode == "full")
    if mode == "cross_attention":
        modules = cross_attention_modules(unet)
        if not modules:
            raise ValueError("train_unet 'cross_attention': the UNet has no cross-attention blocks")
        for module in modules:
            module.requires_grad_(True)
    return [p for p in unet.parameters() if p.requires_grad]


def parameter_counts(module: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
