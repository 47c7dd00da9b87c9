"""Figures of the masked autoencoder: original, masked input and reconstruction of a window."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dreamdiffusion.core.plots import plt, save_figure
from dreamdiffusion.pretrain.model import MaskedAutoencoder, patchify, unpatchify


@torch.no_grad()
def reconstruct(model: MaskedAutoencoder, eeg: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One window (C, L) -> (reconstruction (C, L) in signal units, masked-sample flags (L,))."""
    model.eval()
    x = torch.from_numpy(np.asarray(eeg)[None]).float()
    noise = torch.rand(1, model.config.num_tokens, generator=torch.Generator().manual_seed(seed))
    device = next(model.parameters()).device
    _, pred, mask = model(x.to(device), noise=noise.to(device))  # (1, T, C * patch), (1, T)
    pred, mask = pred.float().cpu(), mask.cpu()
    if model.config.norm_target:  # undo the per-patch normalisation with the true patch stats
        target = patchify(x, model.config.patch)
        pred = pred * (target.var(-1, keepdim=True) + 1e-6).sqrt() + target.mean(-1, keepdim=True)
    recon = unpatchify(pred, model.config.channels)[0].numpy()
    return recon, mask[0].repeat_interleave(model.config.patch).numpy().astype(bool)


def reconstruction_figure(model: MaskedAutoencoder, eeg: np.ndarray, path: str | Path,
                          channels: int = 4, seed: int = 0) -> Path:
    """Rows: `channels` channels spread over the montage; columns: original, masked input, reconstruction."""
    recon, masked = reconstruct(model, eeg, seed)
    picks = np.linspace(0, eeg.shape[0] - 1, min(channels, eeg.shape[0])).round().astype(int)
    fig, axes = plt.subplots(len(picks), 3, figsize=(13, 1.7 * len(picks)), sharex=True, squeeze=False)
    t = np.arange(eeg.shape[1])
    for row, ch in zip(axes, picks):
        visible = np.where(masked, np.nan, eeg[ch])
        row[0].plot(t, eeg[ch], lw=0.7, color="k")
        row[1].plot(t, visible, lw=0.7, color="k")
        row[2].plot(t, eeg[ch], lw=0.7, color="0.7", label="original")
        row[2].plot(t, np.where(masked, recon[ch], np.nan), lw=0.8, color="tab:red", label="reconstruction")
        for ax in row:
            ax.fill_between(t, 0, 1, where=masked, transform=ax.get_xaxis_transform(), color="tab:red", alpha=0.07)
        row[0].set_ylabel(f"ch {ch}", fontsize=8)
    for ax, title in zip(axes[0], ("original", f"masked input ({masked.mean():.0%} masked)", "reconstruction of masked parts")):
        ax.set_title(title, fontsize=9)
    axes[0, 2].legend(fontsize=7, loc="upper right")
    for ax in axes[-1]:
        ax.set_xlabel("sample")
    fig.tight_layout()
    return save_figure(fig, path)
