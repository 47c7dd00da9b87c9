"""Figures written as PNGs: plots with matplotlib (headless), labelled image grids with Pillow."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dreamdiffusion.core.fileio import atomic_path  # noqa: E402


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)


def message_figure(text: str, path: str | Path) -> Path:
    """A figure that is only a message: for a declared plot that has nothing to show in this run."""
    fig, axis = plt.subplots(figsize=(6, 1.5))
    axis.axis("off")
    axis.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return save_figure(fig, path)


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


GAP = 4  # px around and between the tiles of a labelled grid
MIN_FIGURE_PX = 512  # the narrowest labelled grid: the label column widens to reach it
SELECTED_COLOR = "#ff00ff"  # the selected-epoch line of the loss curves: no curve uses it
LABEL_CHARS = 32  # longer row-label lines (captions of real classes) are cut to this many characters


@dataclass(frozen=True)
class GridRow:
    """One row of a labelled grid: its label (one string per line) and one uint8 image (H, W, 3) per column."""

    label: list[str]
    tiles: list[np.ndarray]


def label_line(text: str) -> str:
    """`text` on one line (whitespace collapsed), cut to LABEL_CHARS characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 3] + "..."


def class_label(label: int, class_names: list[str], captions: list[str]) -> list[str]:
    """A class's row-label lines: its name and, where images.h5 holds one, its caption."""
    return [class_names[label], *captions[label : label + 1]]


def fitting_font(texts: list[str], width: int, size: int):
    """Pillow's bundled font (no file or network needed) at the largest size <= `size` where every text fits `width` px."""
    from PIL import ImageFont

    font = ImageFont.load_default(size=size)
    while size > 8 and max((font.getlength(t) for t in texts), default=0) > width:
        size -= 1
        font = ImageFont.load_default(size=size)
    return font


def labelled_grid(rows: list[GridRow], columns: list[str], tile_px: int, path: str | Path, corner: str = "") -> Path:
    """Rows of images under column headings, each row's label on its left, as one PNG: every image is
    upscaled (nearest neighbour) to `tile_px` x `tile_px`, tiles sit GAP px apart, and the label
    column widens so the figure is at least MIN_FIGURE_PX wide. `corner` is written above the labels."""
    from PIL import Image, ImageDraw

    font = fitting_font(columns, tile_px - 2, max(11, tile_px // 7))
    line_px = round(font.size * 1.25)
    labels = ["\n".join(label_line(line) for line in row.label) for row in rows]
    texts = [line for label in labels for line in label.splitlines()] + [label_line(corner)]
    grid_px = len(columns) * (tile_px + GAP) + GAP
    label_px = max(int(max(font.getlength(t) for t in texts)) + 2 * GAP, MIN_FIGURE_PX - grid_px)
    header_px = line_px + 2 * GAP
    canvas = Image.new("RGB", (label_px + grid_px, header_px + len(rows) * (tile_px + GAP)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((GAP, GAP), label_line(corner), fill="black", font=font)
    left = label_px + GAP
    for c, heading in enumerate(columns):
        draw.text((left + c * (tile_px + GAP) + tile_px // 2, GAP), heading, fill="black", font=font, anchor="ma")
    for r, (row, label) in enumerate(zip(rows, labels)):
        top = header_px + r * (tile_px + GAP)
        draw.multiline_text((GAP, top), label, fill="black", font=font, spacing=line_px - font.size)
        for c, tile in enumerate(row.tiles):
            image = Image.fromarray(np.asarray(tile, dtype=np.uint8)).resize((tile_px, tile_px), Image.Resampling.NEAREST)
            canvas.paste(image, (left + c * (tile_px + GAP), top))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)


def epoch_curves(history: list[dict], curves: dict[str, str], y_label: str, selected: int, selected_label: str,
                 path: str | Path, right: tuple[str, str] | None = None,
                 shaded: tuple[int, str] | None = None) -> Path:
    """Per-epoch values against the epoch: `curves` maps a history key to its legend label (missing
    values skipped, so a sparse val curve shows its points); the `selected` epoch is a dashed line;
    `right` = (key, axis label) is drawn on a second y axis; `shaded` = (last epoch, label) shades
    epochs 1..last."""
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    handles = []
    for key, label in curves.items():
        points = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
        if points:
            handles += ax.plot(*zip(*points), marker="o" if len(points) < len(history) else None, ms=4, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(y_label)
    ax.grid(alpha=0.3)
    if right is not None:
        points = [(h["epoch"], h[right[0]]) for h in history if h.get(right[0]) is not None]
        twin = ax.twinx()
        handles += twin.plot(*zip(*points), ":", color="tab:purple", marker="s", ms=4, label=right[1]) if points else []
        twin.set_ylabel(right[1])
        twin.set_ylim(0, 1.05)
    if shaded is not None and shaded[0] > 0:
        handles.append(ax.axvspan(0.5, shaded[0] + 0.5, color="0.85", alpha=0.5, label=shaded[1]))
    handles.append(ax.axvline(selected, color=SELECTED_COLOR, ls="--", lw=1.5, label=selected_label))
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


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
