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
