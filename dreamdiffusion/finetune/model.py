"""The EEG conditioning module: encoder tokens -> the UNet's condition, a time vector, a CLIP embed.

Paper (s.3.2) / official code (bbaaii/DreamDiffusion, dc_ldm/ldm_for_eeg.py):
    tokens (B, T=128, D) -> Conv1d(T -> 64) -> Conv1d(64 -> S=77) -> Linear(D -> W=768)   condition
    condition (B, S, W) -> Conv1d(S -> S//2) -> Conv1d(S//2 -> 1) -> Linear(W -> time dim)  time path
    tokens (B, T, D) -> Conv1d(T -> 1) -> Linear(D -> CLIP dim)                           CLIP head
`mapper: flat` replaces the first path by one linear map of the flattened tokens + LayerNorm
(measured to work better for small, noisy conditions in the miniature world).
`encoder_forward: official` runs the encoder as the official fine-tuned model does (an imported
official checkpoint): its blocks see the patch tokens alone (the cls token is never prepended, in
sc_mbm/mae_for_eeg.py `eeg_encoder.forward_encoder`) and its position table, trained along with the
rest, is saved with the weights.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn as nn

from dreamdiffusion.core.config import MAX_WIDTH, param
from dreamdiffusion.pretrain.model import EEGEncoder, MAEConfig, run_blocks


@dataclasses.dataclass(frozen=True)
class ConditionerConfig:
    """Shapes of the conditioning module (saved with it)."""

    encoder: dict  # the MAEConfig of the EEG encoder, as a dict
    cond_tokens: int = param(77, min=1, max=MAX_WIDTH)  # S: the UNet's condition length
    cond_width: int = param(768, min=1, max=MAX_WIDTH)  # W: the UNet's cross_attention_dim
    clip_dim: int = param(768, min=1, max=MAX_WIDTH)  # width of the CLIP image embedding
    time_dim: int = param(0, min=0, max=MAX_WIDTH)  # width of the UNet's time embedding; 0 = no time path
    mapper: str = param("paper", choices=["paper", "flat"])
    mapper_hidden: int = param(64, min=1, max=MAX_WIDTH)  # the paper's intermediate 64 channels
    null_condition: str = param("learned", choices=["learned", "zero"])
    encoder_forward: str = param("ours", choices=["ours", "official"])  # official: an imported official checkpoint


class Conditioning(NamedTuple):
    """What the conditioner gives for a batch of EEG."""

    condition: torch.Tensor  # (B, S, W) what the UNet cross-attends to (noised / dropped in training)
    time_vector: torch.Tensor | None  # (B, time dim), added to the timestep embedding; None without a time path
    clip: torch.Tensor  # (B, E) the CLIP-space embedding (the alignment loss's prediction)
    clean: torch.Tensor  # (B, S, W) the condition before noise and dropout


class TokenMapper(nn.Module):
    """Encoder tokens (B, T, D) -> condition (B, S, W)."""

    def __init__(self, cfg: ConditionerConfig, tokens: int, width: int):
        super().__init__()
        self.mode = cfg.mapper
        if cfg.mapper == "paper":
            self.channels = nn.Sequential(
                nn.Conv1d(tokens, cfg.mapper_hidden, 1, bias=True),
                nn.Conv1d(cfg.mapper_hidden, cfg.cond_tokens, 1, bias=True),
            )
            self.width = nn.Linear(width, cfg.cond_width)
        else:
            self.flat = nn.Linear(tokens * width, cfg.cond_tokens * cfg.cond_width)
            self.norm = nn.LayerNorm(cfg.cond_width)
        self.shape = (cfg.cond_tokens, cfg.cond_width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.mode == "paper":
            return self.width(self.channels(tokens))  # (B, S, D) -> (B, S, W)
        return self.norm(self.flat(tokens.flatten(1)).view(-1, *self.shape))


class OfficialEncoder(EEGEncoder):
    """EEG (B, C, L) -> tokens (B, T, D) as the official fine-tuned encoder: no cls token in the blocks,
    the position table a saved tensor."""

    def __init__(self, config: MAEConfig):
        super().__init__(config)
        table = self.pos_embed  # (1, 1+T, D), row 0 for the (unused) cls token
        del self.pos_embed
        self.register_buffer("pos_embed", table.clone(), persistent=True)

    def transform(self, tokens: torch.Tensor) -> torch.Tensor:
        """Blocks and final norm on the tokens alone: (B, T, D) -> (B, T, D)."""
        return self.norm(run_blocks(self.blocks, tokens, self.gradient_checkpointing))

    def forward(self, eeg: torch.Tensor, keep_cls: bool = False) -> torch.Tensor:
        """(B, C, L) -> (B, T, D); there is no cls output to keep."""
        if keep_cls:
            raise ValueError("the official encoder has no cls token output")
        return self.transform(self.embed(eeg))


ENCODERS = {"ours": EEGEncoder, "official": OfficialEncoder}


class EEGConditioner(nn.Module):
    """EEG (B, 128, 512) -> condition (B, S, W), time vector (B, time_dim) or None, CLIP embed (B, E)."""

    def __init__(self, cfg: ConditionerConfig):
        super().__init__()
        self.config = cfg
        self.encoder = ENCODERS[cfg.encoder_forward](MAEConfig(**cfg.encoder))
        tokens, width = self.encoder.num_tokens, self.encoder.width
        self.mapper = TokenMapper(cfg, tokens, width)
        self.clip_head = nn.Sequential(nn.Conv1d(tokens, 1, 1), nn.Flatten(1), nn.Linear(width, cfg.clip_dim))
        self.time_path = None
        if cfg.time_dim:
            half = max(cfg.cond_tokens // 2, 1)
            self.time_path = nn.Sequential(nn.Conv1d(cfg.cond_tokens, half, 1), nn.Conv1d(half, 1, 1),
                                           nn.Flatten(1), nn.Linear(cfg.cond_width, cfg.time_dim))
        null = torch.zeros(1, cfg.cond_tokens, cfg.cond_width)
        self.null = nn.Parameter(null, requires_grad=cfg.null_condition == "learned")

    def forward(self, eeg: torch.Tensor, noise: torch.Tensor | None = None,
                keep: torch.Tensor | None = None) -> Conditioning:
        """EEG (B, 128, L) -> the UNet's condition, time vector and CLIP embedding. In training, `noise`
        (B, S, W) is added to the condition and samples with `keep` (B,) False get the null condition
        (and a zero time vector); everything happens inside forward, so DDP sees every parameter used."""
        tokens = self.encoder(eeg)  # (B, T, D)
        clean = self.mapper(tokens)  # (B, S, W)
        time_vector = self.time_path(clean) if self.time_path is not None else None
        condition = clean if noise is None else clean + noise.to(clean)
        if keep is not None:
            condition = torch.where(keep[:, None, None], condition, self.null_like(condition))
            time_vector = None if time_vector is None else time_vector * keep[:, None].to(time_vector.dtype)
        return Conditioning(condition, time_vector, self.clip_head(tokens), clean)

    def null_like(self, condition: torch.Tensor) -> torch.Tensor:
        """The null condition (for dropout and classifier-free guidance), batch-sized."""
        return self.null.expand(condition.shape[0], -1, -1).to(condition.dtype)


class TimeConditioning:
    """Adds the EEG time vector to the UNet's timestep embedding for the duration of a call."""

    def __init__(self, unet):
        self.unet, self.vector, self.handle = unet, None, None

    def _hook(self, module, inputs, output):
        return output if self.vector is None else output + self.vector.to(output.dtype)

    def __call__(self, vector):
        """Use as `with time_cond(vector): unet(...)`; a None vector changes nothing."""
        self.vector = vector
        return self

    def __enter__(self):
        if self.vector is not None:
            self.handle = self.unet.time_embedding.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.remove()
        self.handle, self.vector = None, None
        return False


def unet_time_dim(unet) -> int:
    """Width of the UNet's timestep embedding (the output of `time_embedding`)."""
    return int(unet.time_embedding.linear_2.out_features)
