"""The `pretrain` stage: train the masked autoencoder, save the encoder, probe it, draw the figures."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from dreamdiffusion.core.config import to_dict
from dreamdiffusion.core.fileio import finite_metrics, sha256_file, write_json
from dreamdiffusion.core.plots import epoch_curves, write_history_csv
from dreamdiffusion.core.results import StageResult
from dreamdiffusion.preprocess.processed import load_corpus, load_paired_eeg, read_processed
from dreamdiffusion.pretrain.config import PretrainConfig
from dreamdiffusion.pretrain.encoder import save_encoder
from dreamdiffusion.pretrain.model import count_parameters
from dreamdiffusion.pretrain.plots import reconstruction_figure
from dreamdiffusion.pretrain.probe import probe_with_random_init
from dreamdiffusion.pretrain.train import split_by_recording, split_counts, train


@dataclass(frozen=True)
class PretrainPaths:
    """What the `pretrain` stage reads and writes."""

    corpus: Path  # corpus.h5: the unlabeled windows
    paired: Path  # eeg.h5: its train/val trials feed the linear probe (test rows are never read)
    encoder: Path  # the encoder folder (safetensors + config)
    checkpoints: Path  # resume checkpoints (not a stage output: a killed run resumes from here)
    metrics: Path  # json
    losses: Path  # csv: per-epoch train/val masked MSE (a DVC plot)
    loss_figure: Path  # png: the same curves, axes labelled, the saved (last) epoch marked
    figure: Path  # png: a val window, its masked input and the reconstruction


def probes(model, paired_path: Path, config: PretrainConfig, seed: int) -> dict:
    """Linear probes (cls token: `probe_*`; mean of the tokens: `probe_mean_*`) of the trained
    encoder and, averaged over `probe_random_inits` of them, of random-init encoders of its config."""
    paired = read_processed(load_paired_eeg, paired_path, splits=("train", "val"))  # test rows are never read
    val_labels, train_labels = paired.label[paired.subset("val")], paired.label[paired.subset("train")]
    if len(val_labels) and not np.isin(val_labels, train_labels).any():
        return {"probe_skipped": "val classes are disjoint from train classes (a zero-shot split, e.g. "
                                 "THINGS-EEG2's held-out concepts): a class probe cannot score them"}
    trained, random_init = probe_with_random_init(model.encoder, paired, seed, config.probe_c, config.probe_random_inits,
                                                  batch_size=config.probe_batch_size)
    metrics = {}
    for pooling, prefix in (("cls", "probe"), ("mean", "probe_mean")):
        for k in ("top1", "top5"):
            metrics[f"{prefix}_{k}"] = trained[pooling][k]
            metrics[f"{prefix}_{k}_random_init"] = random_init[pooling][k]
        metrics[f"{prefix}_top1_random_init_std"] = random_init[pooling]["top1_std"]
    first = trained["cls"]
    return {**metrics, "chance": first["chance"], "probe_train_trials": first["train_trials"],
            "probe_val_trials": first["val_trials"], "probe_random_inits": config.probe_random_inits}


def run(config: PretrainConfig, paths: PretrainPaths, seed: int, compute,
        log: Callable[[dict, int], None] | None = None) -> StageResult | None:
    """The `pretrain` stage (None on a non-main process of a multi-process run: it writes nothing)."""
    corpus = read_processed(load_corpus, paths.corpus)
    result = train(config, corpus, seed, paths.checkpoints, sha256_file(paths.corpus), log, compute)
    if not result.is_main_process:
        return None
    model, last = result.model, result.history[-1]
    save_encoder(paths.encoder, model.encoder, extra={"pretrain": to_dict(config), "seed": seed})
    write_history_csv(result.history, paths.losses, ["train_loss", "val_loss", "lr"])
    epoch_curves(result.history, {"train_loss": "train windows", "val_loss": "val recordings (held out)"},
                 "masked-patch MSE (squared corpus units)", last["epoch"], f"saved encoder: last epoch ({last['epoch']})",
                 paths.loss_figure)
    _, val_idx = split_by_recording(corpus.recording, config.val_fraction, seed)
    reconstruction_figure(model, corpus.eeg[val_idx[0] if len(val_idx) else 0], paths.figure, config.figure_channels, seed)
    metrics = {"train_mse": last["train_loss"], "val_mse": last["val_loss"], "params": count_parameters(model),
               "encoder_params": count_parameters(model.encoder), "samples_per_s": result.samples_per_s,
               "epochs": len(result.history), "resumed_from_epoch": result.resumed_from,
               **split_counts(corpus, config, seed), **probes(model, paths.paired, config, seed)}
    write_json(paths.metrics, finite_metrics(metrics))
    if not config.keep_checkpoints:  # finished and written: the resume state is no longer needed
        result.checkpoints.remove()
    return StageResult(metrics, [(paths.metrics, None), (paths.losses, None), (paths.loss_figure, None),
                                 (paths.figure, None)])
