"""Stage `finetune`: condition Stable Diffusion on the pretrained EEG encoder, selected on val."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers import DDPMScheduler  # noqa: E402

from dreamdiffusion.cli import run_stage  # noqa: E402
from dreamdiffusion.data.processed import load_images, load_paired_eeg  # noqa: E402
from dreamdiffusion.finetune.load import save_finetuned  # noqa: E402
from dreamdiffusion.finetune.sample import generate, make_scheduler  # noqa: E402
from dreamdiffusion.finetune.train import (FinetuneConfig, Models, build_conditioner, finetune,  # noqa: E402
                                           paired_tensors)
from dreamdiffusion.finetune.trainable import count_parameters, set_unet_trainable  # noqa: E402
from dreamdiffusion.foundation.load import load_foundation  # noqa: E402
from dreamdiffusion.io import sha256_file, write_json  # noqa: E402
from dreamdiffusion.plots import save_image_grid, write_history_csv  # noqa: E402
from dreamdiffusion.tracking import TrackingConfig  # noqa: E402

PARAMS = {"seed": int, "tracking": TrackingConfig, "finetune": FinetuneConfig}
FOUNDATION, ENCODER = Path("models/foundation"), Path("models/pretrain")
EEG, IMAGES = Path("data/processed/eeg.h5"), Path("data/processed/images.h5")
OUT, RESUME = Path("models/finetune"), Path("checkpoints/finetune")
METRICS, HISTORY, GRID = Path("metrics/finetune.json"), Path("metrics/finetune_loss.csv"), Path("metrics/finetune_val_grid.png")
LOSS_KEYS = ["train_loss", "train_diffusion_loss", "train_clip_loss", "val_loss", "val_diffusion_loss",
             "val_clip_loss", "val_clip_cosine", "val_nway_top1"]


def main(params: dict, run) -> dict:
    config: FinetuneConfig = params["finetune"]
    torch.manual_seed(params["seed"])
    foundation = load_foundation(FOUNDATION)
    paired = load_paired_eeg(EEG, splits=("train", "val"))  # the test split is never read
    image_set = load_images(IMAGES)
    train_data = paired_tensors(paired, image_set, paired.subset("train"), foundation)
    val_data = paired_tensors(paired, image_set, paired.subset("val"), foundation)
    unet = foundation.unet
    set_unet_trainable(unet, config.train_unet)
    conditioner = build_conditioner(config, foundation, ENCODER, unet)
    models = Models(conditioner, unet, foundation.vae.requires_grad_(False),
                    DDPMScheduler.from_config(foundation.scheduler.config), foundation.caption_embeds)
    foundation.clip.requires_grad_(False)
    inputs = "-".join(sha256_file(p)[:16] for p in (EEG, IMAGES, ENCODER / "encoder.safetensors",
                                                    FOUNDATION / "manifest.json"))
    result = finetune(config, models, train_data, val_data, foundation, params["seed"], RESUME, inputs,
                      log=lambda m, step: run.log_metrics(m, step=step))
    trainable = sum(count_parameters(m)[0] for m in (result.models.conditioner, result.models.unet))
    total = sum(count_parameters(m)[1] for m in (result.models.conditioner, result.models.unet))
    save_finetuned(OUT, result.models.conditioner, result.models.unet,
                   {"train_unet": config.train_unet, "best_epoch": result.best_epoch, "seed": params["seed"]})
    rows = torch.linspace(0, len(val_data.eeg) - 1, 8).round().long()
    generated = generate(result.models.conditioner, result.models.unet, result.models.vae,
                         make_scheduler("ddim", models.noise_scheduler.config), val_data.eeg[rows],
                         [params["seed"] + int(r) for r in rows], config.val_steps, config.val_guidance)
    save_image_grid(torch.cat([val_data.images[rows], generated]), GRID, nrow=8)
    write_history_csv(result.history, HISTORY, LOSS_KEYS)
    best = next(h for h in result.history if h["epoch"] == result.best_epoch)
    last = result.history[-1]
    metrics = {
        "best_epoch": result.best_epoch, "epochs": len(result.history),
        "train_loss": last["train_loss"], "val_loss": best["val_loss"],
        "val_diffusion_loss": best["val_diffusion_loss"], "val_clip_loss": best["val_clip_loss"],
        "val_clip_cosine": best["val_clip_cosine"], "val_nway_top1": best["val_nway_top1"],
        "final_val_loss": last.get("val_loss"), "final_val_nway_top1": last.get("val_nway_top1"),
        "val_nway": min(config.nway, len(foundation.captions)), "val_trials": min(config.val_trials, len(val_data.eeg)),
        "trainable_params": int(trainable), "total_params": int(total),
        "train_trials": len(train_data.eeg), "val_trials_total": len(val_data.eeg),
        "resumed_from_epoch": result.resumed_from, "seconds": round(result.seconds, 1),
    }
    write_json(METRICS, metrics)
    for path in (METRICS, GRID, HISTORY):
        run.log_artifact(path)
    return metrics


if __name__ == "__main__":
    run_stage("finetune", PARAMS, main)
