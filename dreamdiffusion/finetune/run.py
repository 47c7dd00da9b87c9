"""The `finetune` stage: encode the images once, train on the foundation, keep the best on val, write it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dreamdiffusion.core.fileio import sha256_file, write_json
from dreamdiffusion.core.plots import GridRow, class_label, epoch_curves, labelled_grid, write_history_csv
from dreamdiffusion.core.results import StageResult
from dreamdiffusion.finetune.config import FinetuneConfig
from dreamdiffusion.finetune.dataset import cached_features, features_key, finetune_data, write_features
from dreamdiffusion.finetune.load import save_finetuned
from dreamdiffusion.finetune.sample import images_from_eeg, make_scheduler
from dreamdiffusion.finetune.train import FinetuneResult, build_models, finetune
from dreamdiffusion.finetune.trainable import parameter_counts
from dreamdiffusion.foundation.load import load_foundation
from dreamdiffusion.preprocess.processed import load_images, load_paired_eeg, read_processed

LOSS_KEYS = ["train_loss", "train_diffusion_loss", "train_clip_loss", "val_loss", "val_diffusion_loss",
             "val_clip_loss", "val_clip_cosine", "val_retrieval_top1", "val_nway_top1"]


@dataclass(frozen=True)
class FinetunePaths:
    """What the `finetune` stage reads and writes."""

    foundation: Path  # the foundation folder
    encoder: Path  # the pretrained encoder folder
    eeg: Path  # eeg.h5 (its train and val rows only are read)
    images: Path  # images.h5
    model: Path  # the fine-tuned model folder
    checkpoints: Path  # resume checkpoints (not a stage output)
    features: Path  # the image-feature cache (not a stage output; kept across runs)
    metrics: Path  # json
    history: Path  # csv: per-epoch losses (a DVC plot)
    grid: Path  # png: per class, a val trial's ground truth, its sample and a control (val_grid)
    loss_figure: Path  # png: the per-epoch losses, the kept epoch marked


def image_features(paths: FinetunePaths, paired, image_set, config: FinetuneConfig, device: str) -> Path:
    """The features file of the train/val images (encoded by the main process first, then shared)."""
    from accelerate import PartialState

    rows = np.unique(paired.image_index)
    key = features_key(paths.foundation, sha256_file(paths.images), rows)
    encode = lambda tmp: write_features(load_foundation(paths.foundation, device, parts=("vae", "clip")),  # noqa: E731
                                        image_set.images, rows, config.encode_batch_size, tmp)
    with PartialState(cpu=device == "cpu").main_process_first():
        return cached_features(paths.features, key, encode)


def val_grid(result: FinetuneResult, data, image_set, paired, seed: int, config: FinetuneConfig, path: Path) -> None:
    """The kept model on val, one row per class (the first `figure_classes`): the class's first val trial's
    ground truth, an image from its EEG and, as the control, one from the next row's EEG (another class),
    both from the same seed, so only the EEG differs (layout: plots.labelled_grid)."""
    models = result.models
    labels, firsts = np.unique(data.val.label, return_index=True)
    rows = firsts[: config.figure_classes or None]
    partners = np.roll(rows, -1) if len(rows) > 1 else rows[:0]
    eeg = torch.stack([data.val[int(r)][1] for r in [*rows, *partners]])
    seeds = [seed + int(r) for r in [*rows, *rows[: len(partners)]]]
    sampler, step = make_scheduler("ddim", models.noise_scheduler.config), config.val_batch_size
    generated = torch.cat([images_from_eeg(models.conditioner, models.unet, models.vae, sampler, eeg[i : i + step],
                                           seeds[i : i + step], config.val_steps, config.val_guidance).cpu()
                           for i in range(0, len(eeg), step)])
    pixels = (generated * 255).round().byte().permute(0, 2, 3, 1).numpy()
    samples, controls = pixels[: len(rows)], pixels[len(rows) :]
    truth = image_set.images[paired.image_index[paired.subset("val")][rows]]
    grid = [GridRow([*class_label(label, paired.class_names, image_set.captions), f"trial {data.val.trial[r]}"],
                    [truth[k], samples[k], *controls[k : k + 1]])
            for k, (label, r) in enumerate(zip(labels, rows))]
    columns = ["ground truth", "sample", "control"][: 2 + bool(len(partners))]
    labelled_grid(grid, columns, config.figure_tile_px, path, corner=f"epoch {result.best_epoch} (kept)")


def loss_figure(result: FinetuneResult, config: FinetuneConfig, path: Path) -> None:
    """The losses and val n-way accuracy per epoch, the kept epoch marked, the alignment-only epochs shaded."""
    history = [{**h, "train_diffusion_loss": None} if h["epoch"] <= config.align_epochs else h for h in result.history]
    epoch_curves(history, {"train_loss": "train: total", "val_loss": "val: total",
                           "train_diffusion_loss": "train: diffusion (noise MSE)",
                           "val_diffusion_loss": "val: diffusion (noise MSE)"},
                 "loss (unitless): noise MSE\n+ weighted (1 - cos) terms", result.best_epoch,
                 f"kept: epoch {result.best_epoch} (best {config.select_by})", path,
                 right=("val_nway_top1", f"val {result.val_nway}-way top-1 (fraction correct)"),
                 shaded=(config.align_epochs, "alignment only (no diffusion loss)"))


def summary(result: FinetuneResult, data) -> dict:
    """The metrics of a run: the kept (best on val) epoch's val measures, the last epoch's train loss, sizes."""
    best = next(h for h in result.history if h["epoch"] == result.best_epoch)
    last = result.history[-1]
    trainable, total = (sum(parameter_counts(m)[i] for m in (result.models.conditioner, result.models.unet))
                        for i in (0, 1))
    return {
        "best_epoch": result.best_epoch, "epochs": len(result.history),
        "train_loss": last["train_loss"], "val_loss": best["val_loss"],
        "val_diffusion_loss": best["val_diffusion_loss"], "val_clip_loss": best["val_clip_loss"],
        "val_clip_cosine": best["val_clip_cosine"], "val_nway_top1": best["val_nway_top1"],
        "val_retrieval_top1": best.get("val_retrieval_top1"),
        "final_val_loss": last.get("val_loss"), "final_val_nway_top1": last.get("val_nway_top1"),
        "val_nway": result.val_nway, "val_trials": len(data.probe_rows),
        "trainable_params": int(trainable), "total_params": int(total),
        "train_trials": len(data.train), "val_trials_total": len(data.val),
        "resumed_from_epoch": result.resumed_from, "seconds": round(result.seconds, 1),
    }


def import_official(config: FinetuneConfig, paths: FinetunePaths) -> StageResult:
    """`source: official`: the authors' checkpoint (sha256 checked first) imported as the fine-tuned model;
    nothing is trained or selected here, so the history is empty and the figures say so."""
    import time

    from dreamdiffusion.core.fileio import DataError
    from dreamdiffusion.core.plots import message_figure
    from dreamdiffusion.finetune.official.convert import import_checkpoint, read_ldm_config

    start, checkpoint = time.perf_counter(), Path(config.official_checkpoint)
    if not checkpoint.is_file():
        raise DataError(f"finetune.official_checkpoint: {checkpoint} is not a file")
    if (found := sha256_file(checkpoint)) != config.official_sha256:
        raise DataError(f"finetune.official_checkpoint: {checkpoint} has sha256 {found}, "
                        f"finetune.official_sha256 says {config.official_sha256}")
    report = import_checkpoint(checkpoint, paths.model, read_ldm_config(config.official_ldm_config),
                               kind="generation", sha256=found)
    metrics = {"source": "official", "checkpoint_sha256": found, "seconds": round(time.perf_counter() - start, 1),
               **{f"mapped_keys_{part}": counts["mapped_keys"] for part, counts in report["parts"].items()},
               "dropped_keys": sum(entry["keys"] for entry in report["dropped"].values())}
    write_json(paths.metrics, metrics)
    write_history_csv([], paths.history, LOSS_KEYS)
    note = f"imported official checkpoint {checkpoint.name}:\nno training epochs here (import_report.json)"
    for figure in (paths.loss_figure, paths.grid):
        message_figure(note, figure)
    return StageResult(metrics, [(paths.metrics, None), (paths.model / "import_report.json", None)])


def run(config: FinetuneConfig, paths: FinetunePaths, seed: int, compute,
        log: Callable[[dict, int], None] | None = None) -> StageResult | None:
    """The `finetune` stage (None on a non-main process of a multi-process run: it writes nothing)."""
    from dreamdiffusion.core.compute import resolve_device

    if config.source == "official":
        return import_official(config, paths)
    device = str(resolve_device(compute))
    paired = read_processed(load_paired_eeg, paths.eeg, splits=("train", "val"))  # the test split is never read
    image_set = read_processed(load_images, paths.images)
    features = image_features(paths, paired, image_set, config, device)
    foundation = load_foundation(paths.foundation, device, parts=("stable_diffusion", "judge"))
    models = build_models(config, foundation, paths.encoder, seed)
    data = finetune_data(paired, features, image_set, foundation, config, compute.preload_mib, seed)
    inputs = "-".join(sha256_file(p)[:16] for p in (paths.eeg, paths.images, paths.encoder / "encoder.safetensors",
                                                    paths.foundation / "manifest.json"))
    result = finetune(config, models, data, foundation, seed, paths.checkpoints, inputs, log, compute=compute)
    if not result.is_main_process:
        return None
    save_finetuned(paths.model, result.models.conditioner, result.models.unet,
                   {"train_unet": config.train_unet, "best_epoch": result.best_epoch, "seed": seed})
    val_grid(result, data, image_set, paired, seed, config, paths.grid)
    write_history_csv(result.history, paths.history, LOSS_KEYS)
    loss_figure(result, config, paths.loss_figure)
    metrics = summary(result, data)
    write_json(paths.metrics, metrics)
    if not config.keep_checkpoints:  # finished and written: the resume state is no longer needed
        result.checkpoints.remove()
    return StageResult(metrics, [(paths.metrics, None), (paths.grid, None), (paths.history, None),
                                 (paths.loss_figure, None)])
