"""EEG masked autoencoder (DreamDiffusion s.3.1; official code sc_mbm/mae_for_eeg.py): 1-D patch tokens over all channels, MAE-style.

A token is `patch` consecutive time steps across all `channels` (Conv1d, kernel = stride =
patch), so `samples / patch` tokens per window. Fixed 1-D sin-cos positions, a cls token,
pre-norm transformer blocks on torch's fused `scaled_dot_product_attention`, a lighter
decoder, and MSE on the masked tokens only.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dreamdiffusion.core.config import MAX_LAYERS, MAX_WIDTH, ConfigError, param

# DreamDiffusion s.3.1 and its official code; mlp_ratio is not part of it: 1.0 in the official code, ~4 in the paper.
PRESETS = {
    "paper": dict(width=1024, depth=24, heads=16, patch=4, decoder_width=512,
                  decoder_depth=8, decoder_heads=16, mask_ratio=0.75),
}


@dataclasses.dataclass(frozen=True)
class MAEConfig:
    """Shape of the EEG masked autoencoder; the encoder checkpoint carries it."""

    channels: int = param(128, min=1, max=1024, help="EEG channels (all enter every token)")
    samples: int = param(512, min=1, max=16_384, help="time steps per window")
    patch: int = param(4, min=1, max=16_384, help="time steps per token (paper: 4)")
    width: int = param(64, min=1, max=MAX_WIDTH, help="encoder width D (paper: 1024)")
    depth: int = param(2, min=1, max=MAX_LAYERS, help="encoder blocks (paper: 24)")
    heads: int = param(4, min=1, max=MAX_LAYERS, help="encoder attention heads (paper: 16)")
    mlp_ratio: float = param(1.0, min=0.01, max=64.0, help="MLP hidden / width: official code 1.0, paper ~4")
    decoder_width: int = param(32, min=1, max=MAX_WIDTH, help="decoder width (paper: 512)")
    decoder_depth: int = param(2, min=1, max=MAX_LAYERS, help="decoder blocks (paper: 8)")
    decoder_heads: int = param(4, min=1, max=MAX_LAYERS, help="decoder attention heads (paper: 16)")
    mask_ratio: float = param(0.75, min=0.0, max=0.99, help="fraction of tokens masked (paper: 0.75)")
    norm_target: bool = param(False, help="normalise each target patch to zero mean, unit variance")

    def __post_init__(self):
        if self.samples % self.patch:
            raise ConfigError(f"samples ({self.samples}) must be a multiple of patch ({self.patch})")
        for width, heads, name in ((self.width, self.heads, ""), (self.decoder_width, self.decoder_heads, "decoder_")):
            if width % heads:
                raise ConfigError(f"{name}width ({width}) must be a multiple of {name}heads ({heads})")
        if self.num_keep < 1:
            raise ConfigError(f"mask_ratio {self.mask_ratio} leaves no visible token of {self.num_tokens}")

    @property
    def num_tokens(self) -> int:
        return self.samples // self.patch

    @property
    def num_keep(self) -> int:
        """Visible tokens per window under masking: floor(T * (1 - mask_ratio))."""
        return num_visible(self.num_tokens, self.mask_ratio)

    def with_preset(self, preset: str) -> "MAEConfig":
        """This config with the named preset's fields applied ('custom' changes nothing)."""
        if preset == "custom":
            return self
        if preset not in PRESETS:
            raise ConfigError(f"preset {preset!r} is not one of {['custom', *PRESETS]}")
        return dataclasses.replace(self, **PRESETS[preset])


def num_visible(num_tokens: int, mask_ratio: float) -> int:
    """floor(T * (1 - mask_ratio)), robust to float round-off (0.1 * 10 is 1, not 0.999...)."""
    return int(num_tokens * (1 - mask_ratio) + 1e-9)


def sincos_positions(num_tokens: int, width: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 1-D sin-cos position embeddings (MAE, computed in numpy); row 0 is zeros for the cls token."""
    half = width // 2
    omega = 1.0 / 10000 ** (np.arange(half, dtype=np.float64) / max(half, 1))
    angles = np.arange(num_tokens, dtype=np.float64)[:, None] * omega[None]  # (T, D/2)
    table = np.zeros((num_tokens + int(cls_token), width))
    table[int(cls_token):, :half], table[int(cls_token):, half : 2 * half] = np.sin(angles), np.cos(angles)
    return torch.from_numpy(table).float()[None]  # (1, T(+1), D)


def patchify(eeg: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, L) -> (B, L / patch, C * patch); a token's values are ordered (channel, time)."""
    batch, channels, length = eeg.shape
    tokens = eeg.reshape(batch, channels, length // patch, patch).permute(0, 2, 1, 3)
    return tokens.reshape(batch, length // patch, channels * patch)


def unpatchify(tokens: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, T, C * patch) -> (B, C, T * patch), the inverse of `patchify`."""
    batch, num_tokens, values = tokens.shape
    patch = values // channels
    eeg = tokens.reshape(batch, num_tokens, channels, patch).permute(0, 2, 1, 3)
    return eeg.reshape(batch, channels, num_tokens * patch)


def random_masking(tokens: torch.Tensor, num_keep: int, noise: torch.Tensor | None = None):
    """Keep the `num_keep` tokens of lowest `noise` (B, T) (uniform if not given) per sample;
    mask (B, T) is 1 where a token was dropped."""
    batch, num_tokens, width = tokens.shape
    if noise is None:
        noise = torch.rand(batch, num_tokens, device=tokens.device)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    ids_keep = ids_shuffle[:, :num_keep]
    kept = tokens.gather(1, ids_keep[..., None].expand(-1, -1, width))  # (B, K, D)
    mask = torch.ones(batch, num_tokens, device=tokens.device)
    mask[:, :num_keep] = 0
    return kept, mask.gather(1, ids_restore), ids_restore


class Attention(nn.Module):
    """Multi-head self-attention: torch's fused scaled_dot_product_attention, or (`fused = False`)
    the plain softmax(QK^T / sqrt(d)) V of the official code (timm's Attention)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads, self.fused = heads, True
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, num_tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, num_tokens, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, D/H)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            weights = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1)  # (B, H, T, T)
            out = weights @ v
        return self.proj(out.transpose(1, 2).reshape(batch, num_tokens, width))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = max(1, int(width * mlp_ratio))
        self.norm1, self.attn = nn.LayerNorm(width), Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, checkpointing: bool) -> torch.Tensor:
    """Apply `blocks` in turn; with `checkpointing` (in training) activations are recomputed in backward."""
    from torch.utils.checkpoint import checkpoint

    for block in blocks:
        x = checkpoint(block, x, use_reentrant=False) if checkpointing and torch.is_grad_enabled() else block(x)
    return x


def init_weights(module: nn.Module) -> None:
    """MAE init: xavier-uniform linears with zero bias, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class EEGEncoder(nn.Module):
    """EEG window (B, C, L) -> tokens (B, T, D); what `finetune` conditions on."""

    def __init__(self, config: MAEConfig):
        super().__init__()
        self.config, self.gradient_checkpointing = config, False
        self.patch_embed = nn.Conv1d(config.channels, config.width, config.patch, stride=config.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.register_buffer("pos_embed", sincos_positions(config.num_tokens, config.width), persistent=False)
        self.blocks = nn.ModuleList(Block(config.width, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width)
        self.apply(init_weights)
        weight = self.patch_embed.weight.data
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)

    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens

    @property
    def width(self) -> int:
        return self.config.width

    def embed(self, eeg: torch.Tensor) -> torch.Tensor:
        """(B, C, L) -> position-embedded patch tokens (B, T, D)."""
        if eeg.shape[1:] != (self.config.channels, self.config.samples):
            raise ValueError(f"EEG of shape {tuple(eeg.shape)}: expected (B, {self.config.channels}, {self.config.samples})")
        return self.patch_embed(eeg).transpose(1, 2) + self.pos_embed[:, 1:]

    def transform(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prepend the cls token, run the blocks and the final norm: (B, K, D) -> (B, 1+K, D)."""
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        x = run_blocks(self.blocks, torch.cat([cls, tokens], dim=1), self.gradient_checkpointing)
        return self.norm(x)

    def forward_masked(self, eeg: torch.Tensor, num_keep: int, noise: torch.Tensor | None = None):
        """Encode a random subset of tokens: latent (B, 1+K, D), mask (B, T), ids_restore (B, T)."""
        kept, mask, ids_restore = random_masking(self.embed(eeg), num_keep, noise)
        return self.transform(kept), mask, ids_restore

    def forward(self, eeg: torch.Tensor, keep_cls: bool = False) -> torch.Tensor:
        """All tokens, unmasked: (B, T, D), or (B, 1+T, D) with the cls token first."""
        x = self.transform(self.embed(eeg))
        return x if keep_cls else x[:, 1:]


class MAEDecoder(nn.Module):
    """Latent (B, 1+K, D) + mask tokens -> predicted patches (B, T, C * patch)."""

    def __init__(self, config: MAEConfig):
        super().__init__()
        self.gradient_checkpointing = False
        self.embed = nn.Linear(config.width, config.decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_width))
        self.register_buffer("pos_embed", sincos_positions(config.num_tokens, config.decoder_width), persistent=False)
        self.blocks = nn.ModuleList(
            Block(config.decoder_width, config.decoder_heads, config.mlp_ratio) for _ in range(config.decoder_depth)
        )
        self.norm = nn.LayerNorm(config.decoder_width)
        self.pred = nn.Linear(config.decoder_width, config.channels * config.patch)
        self.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.embed(latent)  # (B, 1+K, Dd)
        batch, num_tokens = ids_restore.shape
        masked = self.mask_token.expand(batch, num_tokens + 1 - x.shape[1], -1)
        tokens = torch.cat([x[:, 1:], masked], dim=1)  # (B, T, Dd), visible first
        tokens = tokens.gather(1, ids_restore[..., None].expand(-1, -1, x.shape[2]))  # original order
        x = run_blocks(self.blocks, torch.cat([x[:, :1], tokens], dim=1) + self.pos_embed, self.gradient_checkpointing)
        return self.pred(self.norm(x))[:, 1:]  # (B, T, C * patch)


class MaskedAutoencoder(nn.Module):
    """Encoder + decoder; forward returns (loss, pred, mask) like facebookresearch/mae."""

    def __init__(self, config: MAEConfig):
        super().__init__()
        self.config = config
        self.encoder = EEGEncoder(config)
        self.decoder = MAEDecoder(config)

    def target(self, eeg: torch.Tensor) -> torch.Tensor:
        """Patches to reconstruct (B, T, C * patch), per-patch normalised if configured."""
        target = patchify(eeg, self.config.patch)
        if self.config.norm_target:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return target

    def masked_loss(self, eeg: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE per patch (mean over its values), averaged over masked tokens only."""
        per_token = (pred.float() - self.target(eeg)).pow(2).mean(dim=-1)  # (B, T)
        return (per_token * mask).sum() / mask.sum().clamp(min=1)

    def forward(self, eeg: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None):
        """(loss, pred (B, T, C * patch), mask (B, T)); `noise` (B, T) picks the masked tokens."""
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        num_keep = num_visible(self.config.num_tokens, ratio)
        latent, mask, ids_restore = self.encoder.forward_masked(eeg, num_keep, noise)
        pred = self.decoder(latent, ids_restore)
        return self.masked_loss(eeg, pred, mask), pred, mask


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices; none on biases, norms, cls/mask tokens (1-D or tokens)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(("cls_token", "mask_token"))
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
