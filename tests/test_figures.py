"""The figures a person reads: labelled grids (ground truth | samples | control, one row per class or
trial, images upscaled to `tile_px`) and the loss curves with the selected epoch marked."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageColor

from dreamdiffusion.generate.config import GenerateConfig
from dreamdiffusion.generate.run import plan
from dreamdiffusion.generate.figures import write_grids
from dreamdiffusion.core.plots import GAP, MIN_FIGURE_PX, SELECTED_COLOR, GridRow, epoch_curves, labelled_grid

SOURCE_PX = 32  # the demo's image size


def runs(line: np.ndarray, length: int) -> list[int]:
    """Start positions of the runs of exactly `length` non-white pixels along a line of RGB pixels."""
    ink = np.r_[0, (line != 255).any(-1).astype(int), 0]
    edges = np.flatnonzero(np.diff(ink))
    return [int(s) for s, e in zip(edges[::2], edges[1::2]) if e - s == length]


def tiles(path, tile_px: int) -> tuple[np.ndarray, list[int], list[int]]:
    """The figure's pixels and the tops and lefts of its tiles, found from the pixels alone (the test
    tiles hold no white pixel, and the last row and column of tiles sit GAP px from the edges)."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    lefts = runs(pixels[pixels.shape[0] - GAP - tile_px // 2], tile_px)
    tops = runs(pixels[:, lefts[0] + tile_px // 2], tile_px)
    return pixels, tops, lefts


def upscaled(image: np.ndarray, tile_px: int) -> np.ndarray:
    """Nearest-neighbour upscaling by a whole factor, written independently of Pillow."""
    factor = tile_px // image.shape[0]
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def no_white(rng, n: int, size: int = SOURCE_PX) -> np.ndarray:
    """Random uint8 images (n, size, size, 3) that never hold a white pixel."""
    return rng.integers(0, 200, size=(n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("tile_px", [64, 96, 160])
def test_labelled_grid_has_one_upscaled_tile_per_row_and_column(tmp_path, tile_px):
    images = no_white(np.random.default_rng(0), 12)
    rows = [GridRow([f"n0990{r}", "a red circle", f"trial {r}"], list(images[3 * r : 3 * r + 3])) for r in range(4)]
    pixels, tops, lefts = tiles(labelled_grid(rows, ["ground truth", "sample", "control"], tile_px,
                                              tmp_path / "grid.png", corner="class, trial"), tile_px)
    assert len(tops) == 4 and len(lefts) == 3
    assert np.diff(tops).tolist() == [tile_px + GAP] * 3 and np.diff(lefts).tolist() == [tile_px + GAP] * 2
    assert pixels.shape[:2] == (tops[-1] + tile_px + GAP, lefts[-1] + tile_px + GAP)
    assert pixels.shape[1] >= MIN_FIGURE_PX
    for r in range(4):
        for c in range(3):
            tile = pixels[tops[r] : tops[r] + tile_px, lefts[c] : lefts[c] + tile_px]
            assert np.array_equal(tile, upscaled(images[3 * r + c], tile_px)), (r, c)
        assert (pixels[tops[r] : tops[r] + tile_px, : lefts[0] - GAP] < 128).any(), f"row {r} has no label"
    header = pixels[: tops[0] - GAP]
    heading_ink = np.flatnonzero((header[:, lefts[0] :] < 128).any(-1).any(0)) + lefts[0]
    assert len(heading_ink) and all(any(x <= i < x + tile_px for x in lefts) for i in heading_ink), \
        "a column heading runs out of its column"


def test_long_labels_are_cut_and_widen_only_the_label_column(tmp_path):
    images = no_white(np.random.default_rng(1), 4)
    columns = ["ground truth", "sample 1", "sample 2", "control"]
    widths, lefts = {}, {}
    for n in (1, 60, 500):
        pixels, tops, lefts[n] = tiles(labelled_grid([GridRow(["a" * n], list(images))], columns, 96,
                                                     tmp_path / f"{n}.png"), 96)
        widths[n] = pixels.shape[1]
        assert (len(tops), len(lefts[n])) == (1, 4)
    assert widths[1] == MIN_FIGURE_PX < widths[60] == widths[500]
    assert lefts[60][0] - lefts[1][0] == widths[60] - widths[1]


def generated_world(tmp_path, config: GenerateConfig, classes: int = 3, trials_per_class: int = 3):
    """A test set, its plan and a generated folder whose every image is one solid colour per record."""
    rng = np.random.default_rng(2)
    n = classes * trials_per_class
    rows = {"trial": np.arange(100, 100 + n), "image_index": np.arange(n), "label": np.repeat(np.arange(classes), trials_per_class),
            "subject": np.zeros(n, dtype=int)}
    records = plan(rows, config, seed=0, partner=np.roll(np.arange(n), trials_per_class))
    out = tmp_path / "generated"
    for kind in ("eeg", "control"):
        (out / kind).mkdir(parents=True)
    for i, record in enumerate(records):
        record["color"] = (i + 1, 17, 99)
        Image.new("RGB", (SOURCE_PX, SOURCE_PX), record["color"]).save(out / record["file"])
    return records, no_white(rng, n), out


def test_overview_and_class_grids_show_truth_samples_and_control(tmp_path):
    config = GenerateConfig(samples_per_eeg=2, control_samples=1, grid_trials=2, figure_classes=2, figure_tile_px=96)
    records, stimuli, out = generated_world(tmp_path, config)
    names, captions = ["n0001", "n0002", "n0003"], ["a red circle", "a red square", "a red star"]
    write_grids(records, stimuli, out, tmp_path / "overview.png", config, names, captions)

    pixels, tops, lefts = tiles(tmp_path / "overview.png", 96)
    assert (len(tops), len(lefts)) == (2, 1 + 2 + 1)  # figure_classes rows; truth | 2 samples | 1 control
    for r, label in enumerate((0, 1)):
        first = [rec for rec in records if rec["label"] == label and rec["trial"] == 100 + 3 * label]
        tile = lambda c: pixels[tops[r] : tops[r] + 96, lefts[c] : lefts[c] + 96]  # noqa: E731
        assert np.array_equal(tile(0), upscaled(stimuli[first[0]["image"]], 96))
        expected = [rec["color"] for rec in first if rec["kind"] == "eeg"] + [rec["color"] for rec in first if rec["kind"] == "control"]
        assert [tuple(tile(c)[0, 0]) for c in (1, 2, 3)] == expected
        assert all((tile(c) == tile(c)[0, 0]).all() for c in (1, 2, 3))

    for label, name in enumerate(names):
        pixels, tops, lefts = tiles(out / "grids" / f"{name}.png", 96)
        assert (len(tops), len(lefts)) == (2, 4) and pixels.shape[1] >= MIN_FIGURE_PX  # grid_trials rows


def test_every_class_in_the_overview_and_no_control_column_without_controls(tmp_path):
    config = GenerateConfig(samples_per_eeg=3, control_samples=0, figure_classes=0, figure_tile_px=64)
    records, stimuli, out = generated_world(tmp_path, config, classes=5, trials_per_class=2)
    records = [r for r in records if r["kind"] == "eeg"]
    write_grids(records, stimuli, out, tmp_path / "overview.png", config, [f"c{i}" for i in range(5)], [])
    pixels, tops, lefts = tiles(tmp_path / "overview.png", 64)
    assert (len(tops), len(lefts)) == (5, 1 + 3) and pixels.shape[1] >= MIN_FIGURE_PX


class ValTrials(list):
    """Stands in for finetune's val trials: items (trial, EEG, ...) and their `label` and `trial` arrays."""


def test_finetune_val_grid_rows_per_class_with_the_next_rows_eeg_as_control(tmp_path, monkeypatch):
    """The control of row k is generated from row k+1's EEG with row k's seed: with a generator that
    draws a colour from the EEG alone, it equals row k+1's sample."""
    from dreamdiffusion.finetune import run as finetune_run
    from dreamdiffusion.finetune.config import FinetuneConfig

    def from_eeg(conditioner, unet, vae, scheduler, eeg, seeds, steps, guidance):
        level = eeg[:, 0, 0].view(-1, 1, 1, 1) / 16
        return level.expand(-1, 3, SOURCE_PX, SOURCE_PX).clone()

    monkeypatch.setattr(finetune_run, "images_from_eeg", from_eeg)
    monkeypatch.setattr(finetune_run, "make_scheduler", lambda name, config: None)
    labels = np.array([0, 0, 1, 2, 2, 3])  # val trials: first of each class at positions 0, 2, 3, 5
    val = ValTrials((50 + i, torch.full((128, 512), float(i + 1)), None, None, None, int(label))
                    for i, label in enumerate(labels))
    val.label, val.trial = labels, np.arange(50, 56)
    data = SimpleNamespace(val=val)
    stimuli = no_white(np.random.default_rng(3), 6)
    image_set = SimpleNamespace(images=stimuli, captions=["a", "b", "c", "d"])
    paired = SimpleNamespace(image_index=np.arange(6), class_names=["n0", "n1", "n2", "n3"],
                             subset=lambda split: np.arange(6))
    result = SimpleNamespace(models=SimpleNamespace(conditioner=None, unet=None, vae=None,
                                                    noise_scheduler=SimpleNamespace(config={})), best_epoch=7)
    config = FinetuneConfig(figure_classes=3, figure_tile_px=96, val_batch_size=2)
    finetune_run.val_grid(result, data, image_set, paired, 0, config, tmp_path / "val.png")

    pixels, tops, lefts = tiles(tmp_path / "val.png", 96)
    assert (len(tops), len(lefts)) == (3, 3) and pixels.shape[1] >= MIN_FIGURE_PX
    level = lambda position: round((position + 1) / 16 * 255)  # noqa: E731  (the stub's colour of a val trial)
    for r, position in enumerate([0, 2, 3]):
        tile = lambda c: pixels[tops[r] : tops[r] + 96, lefts[c] : lefts[c] + 96]  # noqa: E731
        assert np.array_equal(tile(0), upscaled(stimuli[position], 96))
        assert tile(1)[0, 0, 0] == level(position)
        assert tile(2)[0, 0, 0] == level([2, 3, 0][r])  # the next row's EEG (cyclic)


def marked_columns(path) -> np.ndarray:
    """The x positions where the figure has a vertical run of the selected-epoch line's colour."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    marked = np.abs(pixels - np.array(ImageColor.getrgb(SELECTED_COLOR))).sum(-1) < 30
    return np.flatnonzero(marked.sum(0) > 20)


def test_loss_curves_mark_the_selected_epoch(tmp_path):
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e if e % 5 == 0 else None} for e in range(1, 21)]
    early = epoch_curves(history, {"train_loss": "train", "val_loss": "val"}, "MSE", 4, "kept: epoch 4",
                         tmp_path / "early.png")
    late = epoch_curves(history, {"train_loss": "train", "val_loss": "val"}, "MSE", 17, "kept: epoch 17",
                        tmp_path / "late.png")
    assert Image.open(early).size[0] >= 512
    assert len(marked_columns(early)) and len(marked_columns(late))
    assert marked_columns(late).min() > marked_columns(early).max()  # the line moves with the epoch
