"""Stage `pretrain`: masked signal modeling of the EEG encoder on data/processed/corpus.h5.

Writes models/pretrain/ (encoder safetensors + config json, `load_encoder` reads it), the
metrics (masked MSE, throughput, linear probe vs a random-init encoder), the per-epoch loss
table and a reconstruction figure. Resume checkpoints live in checkpoints/pretrain/<run key>/
(git-ignored, not a DVC output): rerunning after a crash with the same params continues there.
Multi-GPU: `compute.processes: N` (the stage relaunches itself under `accelerate launch`);
only the main process writes outputs.
"""
import csv
from functools import partial
from pathlib import Path

from dreamdiffusion.cli import run_stage
from dreamdiffusion.compute import ComputeConfig
from dreamdiffusion.config import to_dict
from dreamdiffusion.data.processed import load_corpus, load_paired_eeg
from dreamdiffusion.io import DataError, atomic_path, finite_metrics, sha256_file, write_json
from dreamdiffusion.mae import save_encoder
from dreamdiffusion.mae.model import count_parameters
from dreamdiffusion.mae.plots import reconstruction_figure
from dreamdiffusion.mae.train import PretrainConfig, split_by_recording, split_counts, train
from dreamdiffusion.probe import probe_with_random_init
from dreamdiffusion.tracking import TrackingConfig, project_root

PARAMS = {"seed": int, "tracking": TrackingConfig, "compute": ComputeConfig, "pretrain": PretrainConfig}
CORPUS, PAIRED = Path("data/processed/corpus.h5"), Path("data/processed/eeg.h5")
MODEL_DIR, CHECKPOINTS = Path("models/pretrain"), Path("checkpoints/pretrain")
METRICS, LOSSES, FIGURE = Path("metrics/pretrain.json"), Path("metrics/pretrain_loss.csv"), Path("metrics/pretrain_recon.png")


def read(loader, path: Path):
    """Read a processed file, turning a missing/malformed file into a DataError naming it."""
    try:
        return loader(path)
    except (OSError, KeyError) as err:
        raise DataError(f"{path}: cannot read ({err}); run the `preprocess` stage first") from None


def write_losses(history: list[dict], path: Path) -> None:
    """Per-epoch train/val masked MSE as csv (the DVC plot)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "train_loss", "val_loss", "lr"])
        for h in history:
            writer.writerow([h["epoch"], h["train_loss"], "" if h["val_loss"] is None else h["val_loss"], h["lr"]])


def probes(model, config: PretrainConfig, seed: int) -> dict:
    """Linear probes (cls token: `probe_*`; mean of the tokens: `probe_mean_*`) of the trained
    encoder and, averaged over `probe_random_inits` of them, of random-init encoders of its config."""
    paired = read(partial(load_paired_eeg, splits=("train", "val")), PAIRED)  # test rows are never read
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


def main(params: dict, run) -> dict:
    config: PretrainConfig = params["pretrain"]
    seed = params["seed"]
    corpus = read(load_corpus, CORPUS)
    log = lambda metrics, step: run.log_metrics(metrics, step=step)  # noqa: E731
    result = train(config, corpus, seed, project_root() / CHECKPOINTS, sha256_file(CORPUS), log, params["compute"])
    if not result.is_main_process:
        return {}
    model, last = result.model, result.history[-1]
    save_encoder(MODEL_DIR, model.encoder, extra={"pretrain": to_dict(config), "seed": seed})
    write_losses(result.history, LOSSES)
    _, val_idx = split_by_recording(corpus.recording, config.val_fraction, seed)
    example = corpus.eeg[val_idx[0] if len(val_idx) else 0]
    reconstruction_figure(model, example, FIGURE, config.figure_channels, seed)
    metrics = {"train_mse": last["train_loss"], "val_mse": last["val_loss"], "params": count_parameters(model),
               "encoder_params": count_parameters(model.encoder), "samples_per_s": result.samples_per_s,
               "epochs": len(result.history), "resumed_from_epoch": result.resumed_from,
               **split_counts(corpus, config, seed), **probes(model, config, seed)}
    write_json(METRICS, finite_metrics(metrics))
    for path in (METRICS, LOSSES, FIGURE):
        run.log_artifact(path)
    if not config.keep_checkpoints:  # finished and written: the resume state is no longer needed
        result.checkpoints.remove()
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


if __name__ == "__main__":
    run_stage("pretrain", PARAMS, main, distributed=True)
