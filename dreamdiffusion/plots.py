"""Figures written as PNGs (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import atomic_path  # noqa: E402


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)


def raw_vs_processed(examples, sample_rate: float, crop: tuple[int, int], path: str | Path,
                     channels: tuple[int, ...] = (0, 64, 127)) -> Path:
    """A row per trial: a few raw channels (crop window shaded) beside the processed ones."""
    fig, axes = plt.subplots(len(examples), 2, figsize=(11, 2.4 * len(examples)), squeeze=False)
    for (trial, raw, processed), (ax_raw, ax_proc) in zip(examples, axes):
        t_raw = np.arange(raw.shape[-1]) / sample_rate * 1000.0  # ms
        for ch in channels:
            ax_raw.plot(t_raw, raw[ch], lw=0.7, label=f"ch {ch}")
            ax_proc.plot(processed[ch], lw=0.7)
        ax_raw.axvspan(crop[0] / sample_rate * 1000, crop[1] / sample_rate * 1000, alpha=0.1)
        ax_raw.set_title(f"trial {trial}: raw ({raw.shape[-1]} samples, crop shaded)", fontsize=9)
        ax_proc.set_title(f"trial {trial}: processed ({processed.shape[-1]} samples)", fontsize=9)
        ax_raw.set_xlabel("ms")
        ax_proc.set_xlabel("sample")
    axes[0, 0].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return save_figure(fig, path)


def save_image_grid(images, path: str | Path, nrow: int) -> Path:
    """Float images (N, 3, H, W) in [0, 1] as one PNG grid, `nrow` images per row."""
    import torch
    from PIL import Image
    from torchvision.utils import make_grid

    grid = make_grid(torch.as_tensor(images).float().clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)
    pixels = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
    return Path(path)


def write_history_csv(history: list[dict], path: str | Path, keys: list[str]) -> Path:
    """Per-epoch records as a CSV (a DVC plot source); missing values left empty."""
    lines = [",".join(["epoch", *keys])]
    for record in history:
        lines.append(",".join([str(record["epoch"]), *("" if record.get(k) is None else f"{record[k]:.6g}" for k in keys)]))
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return Path(path)


def confusion_matrix_png(true: np.ndarray, predicted: np.ndarray, names: list[str], path: str | Path,
                         title: str) -> Path:
    """Row-normalised confusion matrix of class indices (rows: true, columns: predicted)."""
    classes = np.unique(np.concatenate([true, predicted]))
    index = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)))
    for t, p in zip(true, predicted):
        counts[index[t], index[p]] += 1
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    labels = [names[c] if c < len(names) else str(c) for c in classes]
    fig, ax = plt.subplots(figsize=(1 + 0.45 * len(classes), 0.8 + 0.45 * len(classes)))
    ax.imshow(rates, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(classes)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), labels, fontsize=7)
    ax.set_xlabel("judge's class of the generated image")
    ax.set_ylabel("judge's class of the ground truth")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
