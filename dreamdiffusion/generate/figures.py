"""The generate stage's figures: per class, ground truth | samples from the EEG | wrong-EEG control,
labelled and upscaled (DreamDiffusion's and MinD-Vis's layout)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dreamdiffusion.core.fileio import path_inside
from dreamdiffusion.core.plots import GridRow, class_label, labelled_grid
from dreamdiffusion.generate.config import GenerateConfig


def figure_columns(samples: int, controls: int) -> list[str]:
    """Column headings of the image grids: the stimulus, the samples from its EEG, the controls."""
    number = lambda name, n: [name] if n == 1 else [f"{name} {i + 1}" for i in range(n)]  # noqa: E731
    return ["ground truth", *number("sample", samples), *number("control", controls)]


def grid_row(recs: list[dict], stimulus_images: np.ndarray, out_dir: Path, label: list[str]) -> GridRow:
    """One trial's row: its stimulus, then its samples, then its control samples (each in `sample` order)."""
    ordered = sorted(recs, key=lambda r: (r["kind"] != "eeg", r["sample"]))
    return GridRow(label, [np.asarray(stimulus_images[recs[0]["image"]]),
                           *(np.asarray(Image.open(out_dir / r["file"]).convert("RGB")) for r in ordered)])


def write_grids(records: list[dict], stimulus_images: np.ndarray, out_dir: Path, overview: Path,
                config: GenerateConfig, class_names: list[str], captions: list[str]) -> None:
    """Per class, `grid_trials` rows of [ground truth | its samples | its controls] as `out_dir/grids/<class>.png`;
    the first row of each of the first `figure_classes` classes as `overview` (layout: plots.labelled_grid)."""
    by_class: dict[int, dict[int, list]] = {}
    for r in records:
        by_class.setdefault(r["label"], {}).setdefault(r["trial"], []).append(r)
    one = next(iter(next(iter(by_class.values())).values()))
    columns = figure_columns(*(sum(r["kind"] == kind for r in one) for kind in ("eeg", "control")))
    firsts = []
    for label, trials in sorted(by_class.items()):
        rows = [grid_row(recs, stimulus_images, out_dir, [*class_label(label, class_names, captions), f"trial {trial}"])
                for trial, recs in list(trials.items())[: config.grid_trials]]
        labelled_grid(rows, columns, config.figure_tile_px,
                      path_inside(out_dir / "grids", class_names[label], what="a class name", suffix=".png"),
                      corner="class, trial")
        firsts.append(rows[0])
    labelled_grid(firsts[: config.figure_classes or None], columns, config.figure_tile_px, overview,
                  corner="class, trial")
