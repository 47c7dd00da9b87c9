"""Every stage's library `run`, called in order on a tiny world for a couple of steps (no DVC, no
MLflow): what each one wrote, and that each reads only what the one before it wrote."""
import json
import math
from pathlib import Path

import h5py
import pytest
import yaml
from PIL import Image

from dreamdiffusion.compute import ComputeConfig
from dreamdiffusion.config import parse_config
from dreamdiffusion.data import download, preprocess
from dreamdiffusion.evaluation import run as evaluate
from dreamdiffusion.evaluation.report import EvaluateConfig
from dreamdiffusion.finetune import run as finetune
from dreamdiffusion.finetune.train import FinetuneConfig
from dreamdiffusion.foundation import build
from dreamdiffusion.foundation.config import FoundationConfig
from dreamdiffusion.generation import GenerateConfig, GeneratePaths
from dreamdiffusion.generation import run as generate
from dreamdiffusion.mae import run as pretrain
from dreamdiffusion.mae.train import PretrainConfig
from dreamdiffusion.presets import merge
from pipeline import TINY
from test_pipeline_full import TINY_ALL

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
        metrics=root / "pretrain.json", losses=root / "pretrain.csv", figure=root / "pretrain.png"), 0, COMPUTE)
    results["finetune"] = finetune.run(section(FinetuneConfig, "finetune"), finetune.FinetunePaths(
        foundation=root / "foundation", encoder=root / "encoder", eeg=processed.eeg, images=processed.images,
        model=root / "finetuned", checkpoints=root / "ckpt/finetune", features=root / "features",
        metrics=root / "finetune.json", history=root / "finetune.csv", grid=root / "grid.png"), 0, COMPUTE)
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
