"""Every stage's library `run`, called in order on a tiny world for a couple of steps (no DVC, no
MLflow): what each one wrote, and that each reads only what the one before it wrote."""
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from PIL import Image
from pipeline import TINY
from test_figures import upscaled
from test_pipeline_full import TINY_ALL

from dreamdiffusion.core.compute import ComputeConfig
from dreamdiffusion.core.config import parse_config
from dreamdiffusion.core.plots import GAP, MIN_FIGURE_PX
from dreamdiffusion.download import run as download
from dreamdiffusion.evaluate import run as evaluate
from dreamdiffusion.evaluate.config import EvaluateConfig
from dreamdiffusion.finetune import run as finetune
from dreamdiffusion.finetune.config import FinetuneConfig
from dreamdiffusion.foundation import run as build
from dreamdiffusion.foundation.config import FoundationConfig
from dreamdiffusion.generate.config import GenerateConfig
from dreamdiffusion.generate.index import read_index
from dreamdiffusion.generate.run import GeneratePaths
from dreamdiffusion.generate.run import run as generate
from dreamdiffusion.preprocess import run as preprocess
from dreamdiffusion.preprocess.processed import load_images, load_paired_eeg
from dreamdiffusion.pretrain import run as pretrain
from dreamdiffusion.pretrain.config import PretrainConfig
from dreamdiffusion.tools.presets import merge

PARAMS = merge(yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text()), TINY_ALL)
COMPUTE = ComputeConfig(device="cpu", threads=1)


def section(cls, name):
    return parse_config(cls, PARAMS[name], name)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Run every stage's `run` into one folder; return the folder and each run's result."""
    root = tmp_path_factory.mktemp("runs")
    processed = preprocess.ProcessedPaths(images=root / "images.h5", eeg=root / "eeg.h5", corpus=root / "corpus.h5")
    results = {"download": download.run(section(download.DownloadConfig, "download"),
                                        download.DownloadPaths(raw=root / "raw"), 0, base=root)}
    results["preprocess"] = preprocess.run(section(preprocess.PreprocessConfig, "preprocess"), preprocess.PreprocessPaths(
        raw=root / "raw", processed=processed, report=root / "preprocess.json", figure=root / "preprocess.png"))
    results["foundation"] = build.run(section(FoundationConfig, "foundation"), build.FoundationPaths(
        images=processed.images, models=root / "foundation", metrics=root / "foundation.json",
        recon_figure=root / "recon.png", captions_figure=root / "captions.png"), 0, COMPUTE)
    results["pretrain"] = pretrain.run(section(PretrainConfig, "pretrain"), pretrain.PretrainPaths(
        corpus=processed.corpus, paired=processed.eeg, encoder=root / "encoder", checkpoints=root / "ckpt/pretrain",
        metrics=root / "pretrain.json", losses=root / "pretrain.csv", loss_figure=root / "pretrain_loss.png",
        figure=root / "pretrain.png"), 0, COMPUTE)
    results["finetune"] = finetune.run(section(FinetuneConfig, "finetune"), finetune.FinetunePaths(
        foundation=root / "foundation", encoder=root / "encoder", eeg=processed.eeg, images=processed.images,
        model=root / "finetuned", checkpoints=root / "ckpt/finetune", features=root / "features",
        metrics=root / "finetune.json", history=root / "finetune.csv", grid=root / "grid.png",
        loss_figure=root / "finetune_loss.png"), 0, COMPUTE)
    results["generate"] = generate(section(GenerateConfig, "generate"), GeneratePaths(
        foundation=root / "foundation", finetune=root / "finetuned", eeg=processed.eeg, images=processed.images,
        out=root / "generated", overview=root / "overview.png"), 0, COMPUTE)
    results["evaluate"] = evaluate.run(section(EvaluateConfig, "evaluate"), evaluate.EvaluatePaths(
        foundation=root / "foundation", finetune=root / "finetuned", eeg=processed.eeg, images=processed.images,
        generated=root / "generated", metrics=root / "eval.json", per_class=root / "per_class.csv",
        confusion=root / "confusion.png"), 0, COMPUTE)
    return root, results


def test_every_run_logs_only_files_it_wrote(world):
    root, results = world
    for name, result in results.items():
        assert result.metrics, name
        for path, _ in result.artifacts:
            assert Path(path).is_file() and Path(path).stat().st_size > 0, (name, path)


def test_download_and_preprocess_wrote_the_raw_layout_and_the_processed_files(world):
    root, results = world
    assert (root / "raw/manifest.json").is_file() and results["download"].metrics["files"] >= 2
    with h5py.File(root / "eeg.h5") as h5:
        assert h5["eeg"].shape[1:] == (128, 512) and h5["eeg"].chunks == (1, 128, 512)
    with h5py.File(root / "images.h5") as h5:
        assert h5["images"].shape[1:] == (TINY["preprocess"]["image_size"],) * 2 + (3,)
    report = json.loads((root / "preprocess.json").read_text())
    assert report["trials_kept"] == results["preprocess"].metrics["trials_kept"] > 0


def test_foundation_and_pretrain_wrote_their_models(world):
    root, results = world
    assert json.loads((root / "foundation/manifest.json").read_text())["source"] == "demo"
    assert 0 <= results["foundation"].metrics["caption_to_image_acc"] <= 1
    assert (root / "encoder/encoder.safetensors").is_file()
    assert not (root / "ckpt/pretrain").exists() or not any((root / "ckpt/pretrain").iterdir())
    assert math.isfinite(json.loads((root / "pretrain.json").read_text())["train_mse"])


def test_finetune_wrote_the_model_history_and_kept_the_features(world):
    root, results = world
    metrics = json.loads((root / "finetune.json").read_text())
    assert metrics == results["finetune"].metrics and 1 <= metrics["best_epoch"] <= metrics["epochs"]
    assert (root / "finetuned/conditioner/model.safetensors").is_file()
    assert len((root / "finetune.csv").read_text().splitlines()) == metrics["epochs"] + 1
    assert len(list((root / "features").glob("*.h5"))) == 1


def test_generate_and_evaluate_wrote_images_index_and_metrics(world):
    root, results = world
    rows = (root / "generated/index.csv").read_text().splitlines()[1:]
    assert len(rows) == results["generate"].metrics["images"] + results["generate"].metrics["control_images"]
    size = TINY["preprocess"]["image_size"]
    assert Image.open(root / "generated" / rows[0].split(",")[-1]).size == (size, size)
    metrics = json.loads((root / "eval.json").read_text())
    assert metrics["test_trials"] == results["generate"].metrics["test_trials"]
    assert all(math.isfinite(metrics[k]) for k in ("nway_top1", "clip_2way", "fid", "eeg_top1"))


def grid_tiles(path, rows: int, columns: int, tile_px: int):
    """The figure's pixels and tile (r, c) of a labelled grid of `rows` x `columns` tiles, placed as
    plots.labelled_grid places them: GAP px apart and from the bottom and right edges."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    height, width = pixels.shape[:2]

    def tile(r: int, c: int) -> np.ndarray:
        top, left = height - (rows - r) * (tile_px + GAP), width - (columns - c) * (tile_px + GAP)
        return pixels[top : top + tile_px, left : left + tile_px]

    return pixels, tile


def test_overview_rows_are_classes_with_truth_samples_and_control(world):
    root, _ = world
    config, images = section(GenerateConfig, "generate"), load_images(root / "images.h5").images
    by_class: dict = {}
    for record in read_index(root / "generated/index.csv"):
        by_class.setdefault(record["label"], {}).setdefault(record["trial"], []).append(record)
    classes = sorted(by_class)[: config.figure_classes or None]
    first = {label: next(iter(by_class[label].values())) for label in classes}
    shown = [r for r in first[classes[0]] if r["kind"] == "eeg"] + [r for r in first[classes[0]] if r["kind"] == "control"]
    assert len(shown) == config.samples_per_eeg + config.control_samples
    tile_px = config.figure_tile_px
    pixels, tile = grid_tiles(root / "overview.png", len(classes), 1 + len(shown), tile_px)
    header = pixels.shape[0] - len(classes) * (tile_px + GAP)
    assert pixels.shape[1] >= MIN_FIGURE_PX and 0 < header < tile_px / 2  # only the headings above the tiles
    for r, label in enumerate(classes):
        records = sorted(first[label], key=lambda x: (x["kind"] != "eeg", x["sample"]))
        assert np.array_equal(tile(r, 0), upscaled(images[records[0]["image"]], tile_px))
        for c, record in enumerate(records, start=1):
            generated = np.asarray(Image.open(root / "generated" / record["file"]).convert("RGB"))
            assert np.array_equal(tile(r, c), upscaled(generated, tile_px)), (label, record["file"])
    class_names = load_paired_eeg(root / "eeg.h5", splits=("test",)).class_names
    for label, trials in by_class.items():  # the per-class grids: grid_trials rows of the same columns
        rows = min(config.grid_trials, len(trials))
        pixels, tile = grid_tiles(root / "generated/grids" / f"{class_names[label]}.png", rows, 1 + len(shown), tile_px)
        assert pixels.shape[0] - rows * (tile_px + GAP) == header and pixels.shape[1] >= MIN_FIGURE_PX
        for r, records in enumerate(list(trials.values())[:rows]):
            assert np.array_equal(tile(r, 0), upscaled(images[records[0]["image"]], tile_px))


def test_val_grid_rows_are_val_classes_and_the_loss_figures_exist(world):
    root, results = world
    config = section(FinetuneConfig, "finetune")
    paired, images = load_paired_eeg(root / "eeg.h5", splits=("train", "val")), load_images(root / "images.h5").images
    val = paired.subset("val")
    _, firsts = np.unique(paired.label[val], return_index=True)
    firsts = firsts[: config.figure_classes or None]
    pixels, tile = grid_tiles(root / "grid.png", len(firsts), 3, config.figure_tile_px)
    header = pixels.shape[0] - len(firsts) * (config.figure_tile_px + GAP)
    assert pixels.shape[1] >= MIN_FIGURE_PX and 0 < header < config.figure_tile_px / 2
    for r, position in enumerate(firsts):
        assert np.array_equal(tile(r, 0), upscaled(images[paired.image_index[val][position]], config.figure_tile_px))
    for name in ("pretrain", "finetune"):
        figure = root / f"{name}_loss.png"
        assert Image.open(figure).size[0] >= MIN_FIGURE_PX
        assert (figure, None) in results[name].artifacts
