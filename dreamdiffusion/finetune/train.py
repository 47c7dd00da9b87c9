"""Stage B training: the EEG conditioner (and part of the UNet) learns to drive Stable Diffusion.

Loss = noise-prediction MSE (honouring the scheduler's `prediction_type`)
     + clip_weight * (1 - cos(CLIP head(EEG), frozen CLIP image embedding of the paired image))
     + caption_weight * MSE(condition, the class caption's text states)   (optional; beyond the paper)
Only the validation split selects the kept model; the test split is never read here.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DDPMScheduler
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..config import ConfigError, param, to_dict
from ..io import DataError, atomic_path
from ..mae.encoder import load_encoder
from .model import ConditionerConfig, EEGConditioner, TimeConditioning, unet_time_dim
from .trainable import count_parameters, set_unet_trainable


@dataclass(frozen=True)
class FinetuneConfig:
    """The `finetune` params section."""

    encoder_init: str = param("pretrained", choices=["pretrained", "random"])
    train_encoder: bool = param(True)
    train_unet: str = param("cross_attention", choices=["none", "cross_attention", "full"])
    mapper: str = param("paper", choices=["paper", "flat"])
    time_conditioning: bool = param(True)
    null_condition: str = param("learned", choices=["learned", "zero"])
    cond_dropout: float = param(0.1, min=0.0, max=1.0)
    cond_noise: float = param(0.0, min=0.0, help="std of Gaussian noise added to the condition in training")
    clip_weight: float = param(1.0, min=0.0)
    caption_weight: float = param(0.0, min=0.0, help="pull the condition towards the class caption's text states")
    epochs: int = param(10, min=1)
    batch_size: int = param(32, min=1)
    lr: float = param(5.3e-5, min=0.0)
    unet_lr: float = param(0.0, min=0.0, help="learning rate of the UNet part (0 = lr)")
    weight_decay: float = param(0.0, min=0.0)
    clip_grad: float = param(0.5, min=0.0)
    mixed_precision: str = param("fp32", choices=["fp32", "bf16", "fp16"])
    gradient_checkpointing: bool = param(False)
    ema_decay: float = param(0.0, min=0.0, max=1.0, help="0 = no EMA")
    val_every: int = param(1, min=1)
    val_trials: int = param(40, min=1, help="val trials generated for the quick n-way accuracy")
    val_steps: int = param(10, min=1)
    val_guidance: float = param(3.0, min=1.0)
    nway: int = param(50, min=2)
    nway_trials: int = param(50, min=1)
    select_by: str = param("val_nway_top1", choices=["val_nway_top1", "val_loss"])
    checkpoint_every: int = param(1, min=1)
    log_every: int = param(5, min=1)

    def __post_init__(self):
        if not self.train_encoder and self.encoder_init == "random" and self.train_unet == "none":
            raise ConfigError("nothing would learn the EEG: train_encoder false, encoder_init random, train_unet none")


@dataclass
class PairedTensors:
    """One split's training tensors, images encoded once."""

    eeg: torch.Tensor  # (N, 128, 512)
    latent_mean: torch.Tensor  # (N, c, h, w) VAE posterior mean (unscaled)
    latent_std: torch.Tensor  # (N, c, h, w)
    clip_target: torch.Tensor  # (N, E) unit-norm CLIP image embeddings
    label: torch.Tensor  # (N,)
    images: torch.Tensor  # (N, 3, H, W) in [0, 1], the ground truth


@torch.no_grad()
def encode_images(images_u8: np.ndarray, foundation, batch: int = 64):
    """uint8 (N, H, W, 3) -> VAE posterior (mean, std), CLIP image embeddings, float images."""
    size = foundation.image_size
    pixels = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, H, W)
    if pixels.shape[-1] != size:
        pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True).clamp(0, 1)
    means, stds, embeds = [], [], []
    device = next(foundation.vae.parameters()).device
    for start in range(0, len(pixels), batch):
        chunk = pixels[start : start + batch].to(device)
        posterior = foundation.vae.encode(chunk * 2 - 1).latent_dist
        means.append(posterior.mean.cpu())
        stds.append(posterior.std.cpu())
        embeds.append(F.normalize(foundation.clip.encode_image(foundation.clip_transform(chunk)).float(), dim=-1).cpu())
    return torch.cat(means), torch.cat(stds), torch.cat(embeds), pixels


def paired_tensors(paired, image_set, rows: np.ndarray, foundation) -> PairedTensors:
    """The tensors of the trials `rows` of eeg.h5; each distinct image encoded once."""
    image_rows, inverse = np.unique(paired.image_index[rows], return_inverse=True)
    mean, std, clip, pixels = encode_images(image_set.images[image_rows], foundation)
    index = torch.from_numpy(inverse)
    return PairedTensors(torch.from_numpy(paired.eeg[rows]), mean[index], std[index], clip[index],
                         torch.from_numpy(paired.label[rows]), pixels[index])


def build_conditioner(config: FinetuneConfig, foundation, encoder_dir: Path, unet) -> EEGConditioner:
    """The conditioning module, its encoder pretrained (from `encoder_dir`) or random."""
    encoder, encoder_config = load_encoder(encoder_dir)
    cfg = ConditionerConfig(
        encoder=to_dict(encoder_config), cond_tokens=foundation.cond_seq_len, cond_width=foundation.cond_width,
        clip_dim=foundation.clip_embed_dim, time_dim=unet_time_dim(unet) if config.time_conditioning else 0,
        mapper=config.mapper, null_condition=config.null_condition)
    conditioner = EEGConditioner(cfg)
    if config.encoder_init == "pretrained":
        conditioner.encoder.load_state_dict(encoder.state_dict())
    conditioner.encoder.requires_grad_(config.train_encoder)
    return conditioner


def diffusion_target(scheduler, latents, noise, timesteps):
    """What the UNet should predict, per the scheduler's `prediction_type`."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ValueError(f"unsupported prediction_type {kind!r}")


@dataclass
class Models:
    """What trains together: the conditioner and the UNet (partly frozen), plus frozen helpers."""

    conditioner: EEGConditioner
    unet: torch.nn.Module
    vae: torch.nn.Module
    noise_scheduler: DDPMScheduler
    caption_embeds: torch.Tensor  # (classes, S, W)

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for m in (self.conditioner, self.unet) for p in m.parameters() if p.requires_grad]


def losses(models: Models, batch, config: FinetuneConfig, time_cond: TimeConditioning) -> dict:
    """Diffusion, CLIP and caption losses of one batch, and their weighted total."""
    eeg, mean, std, clip_target, label = batch
    latents = (mean + std * torch.randn_like(std)) * models.vae.config.scaling_factor
    condition, time_vector, clip_pred = models.conditioner(eeg)
    caption_loss = torch.zeros((), device=eeg.device)
    if config.caption_weight:
        caption_loss = F.mse_loss(condition, models.caption_embeds.to(condition)[label])
    if config.cond_noise:
        condition = condition + config.cond_noise * torch.randn_like(condition)
    condition, time_vector = models.conditioner.drop(condition, time_vector, config.cond_dropout)
    noise = torch.randn_like(latents)
    steps = models.noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps, (len(latents),), device=latents.device)
    noisy = models.noise_scheduler.add_noise(latents, noise, timesteps)
    with time_cond(time_vector):
        pred = models.unet(noisy, timesteps, encoder_hidden_states=condition).sample
    diffusion = F.mse_loss(pred.float(), diffusion_target(models.noise_scheduler, latents, noise, timesteps).float())
    clip = 1 - F.cosine_similarity(clip_pred.float(), clip_target.float(), dim=-1).mean()
    total = diffusion + config.clip_weight * clip + config.caption_weight * caption_loss
    return {"loss": total, "diffusion_loss": diffusion, "clip_loss": clip, "caption_loss": caption_loss}


# ----------------------------------------------------------------------------- one epoch

def train_one_epoch(models: Models, loader, optimizer, accelerator, config: FinetuneConfig, step: int,
                    log: Callable[[dict, int], None] | None, desc: str, ema=None) -> tuple[dict, int]:
    """One pass over the train loader; returns (mean losses, next global step)."""
    models.conditioner.train()
    models.unet.train()
    time_cond = TimeConditioning(accelerator.unwrap_model(models.unet))
    sums, count = {}, 0
    for batch in tqdm(loader, desc=desc, leave=False, mininterval=2, disable=not accelerator.is_main_process):
        with accelerator.autocast():
            out = losses(models, batch, config, time_cond)
        accelerator.backward(out["loss"])
        if config.clip_grad:
            accelerator.clip_grad_norm_(models.trainable(), config.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(models.trainable())
        values = {k: float(v.detach()) for k, v in out.items()}
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + value
        count += 1
        if log is not None and step % config.log_every == 0:
            log({f"step_{k}": v for k, v in values.items()}, step)
        step += 1
    return {k: v / max(count, 1) for k, v in sums.items()}, step


# ----------------------------------------------------------------------------- validation

@torch.no_grad()
def val_losses(models: Models, data: PairedTensors, config: FinetuneConfig, seed: int, batch: int = 64) -> dict:
    """Losses on the val split with fixed noise (no dropout), and the mean CLIP cosine."""
    models.conditioner.eval()
    models.unet.eval()
    time_cond = TimeConditioning(models.unet)
    no_dropout = dataclasses.replace(config, cond_dropout=0.0, cond_noise=0.0)
    device = next(models.unet.parameters()).device
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    sums, cosines = {}, []
    for start in range(0, len(data.eeg), batch):
        part = slice(start, start + batch)
        tensors = [t[part].to(device) for t in (data.eeg, data.latent_mean, data.latent_std, data.clip_target, data.label)]
        out = losses(models, tensors, no_dropout, time_cond)
        for key, value in out.items():
            sums[key] = sums.get(key, 0.0) + float(value) * len(tensors[0])
        _, _, clip_pred = models.conditioner(tensors[0])
        cosines.append(F.cosine_similarity(clip_pred.float(), tensors[3].float(), dim=-1).cpu())
    torch.set_rng_state(state)
    out = {f"val_{k}": v / len(data.eeg) for k, v in sums.items()}
    out["val_clip_cosine"] = float(torch.cat(cosines).mean())
    return out


@torch.no_grad()
def val_nway(models: Models, data: PairedTensors, foundation, scheduler, config: FinetuneConfig, seed: int) -> float:
    """Quick n-way top-1 of images generated from the first `val_trials` val trials (judge)."""
    from ..evaluation import nway_topk, true_classes_from
    from ..foundation.judge import predict
    from .sample import generate

    rows = np.linspace(0, len(data.eeg) - 1, min(config.val_trials, len(data.eeg))).round().astype(int)
    images = torch.cat([generate(models.conditioner, models.unet, models.vae, scheduler, data.eeg[rows[i : i + 32]],
                                 [seed + int(r) for r in rows[i : i + 32]], config.val_steps, config.val_guidance)
                        for i in range(0, len(rows), 32)])
    gen_probs = predict(foundation.judge, foundation.judge_transform, images).softmax(-1).cpu().numpy()
    gt_probs = predict(foundation.judge, foundation.judge_transform, data.images[rows]).softmax(-1).cpu().numpy()
    n_way = min(config.nway, gen_probs.shape[1])
    hits = nway_topk(gen_probs, true_classes_from(gt_probs), n_way, 1, config.nway_trials, seed)
    return float(np.mean(hits))


# ----------------------------------------------------------------------------- checkpoints

def trainable_state(models: Models) -> dict[str, torch.Tensor]:
    """CPU copies of every trainable tensor (and the null condition), keyed by module path."""
    state = {}
    for prefix, module in (("conditioner.", models.conditioner), ("unet.", models.unet)):
        for name, p in module.named_parameters():
            if p.requires_grad or name == "null":
                state[prefix + name] = p.detach().cpu().clone().contiguous()
    return state


def load_trainable_state(models: Models, state: dict[str, torch.Tensor]) -> None:
    """Copy a `trainable_state` back into the models in place."""
    params = {f"conditioner.{n}": p for n, p in models.conditioner.named_parameters()}
    params.update({f"unet.{n}": p for n, p in models.unet.named_parameters()})
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device))


def run_key(config: FinetuneConfig, seed: int, inputs_id: str) -> str:
    """Hash of what shapes training (params, seed, inputs, code): the resume dir's name."""
    code = hashlib.sha256(b"".join((Path(__file__).parent / n).read_bytes()
                                   for n in ("model.py", "train.py", "trainable.py", "sample.py"))).hexdigest()
    payload = {"config": {k: v for k, v in to_dict(config).items() if k not in ("checkpoint_every", "log_every")},
               "seed": seed, "inputs": inputs_id, "code": code}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def save_checkpoint(resume_dir: Path, models: Models, optimizer, history: list[dict], best: dict) -> None:
    """Trainable weights, optimizer, history and the best-so-far weights, atomically."""
    with atomic_path(resume_dir / "last") as tmp:
        tmp.mkdir()
        save_file(trainable_state(models), str(tmp / "trainable.safetensors"))
        save_file(best["state"], str(tmp / "best.safetensors"))
        torch.save({"optimizer": optimizer.state_dict()}, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"history": history, "best_epoch": best["epoch"],
                                                    "best_score": best["score"]}))


def load_checkpoint(resume_dir: Path, models: Models, optimizer) -> tuple[list[dict], dict] | None:
    """Restore the last checkpoint in place; None when there is none."""
    from ..io import safe_torch_load

    path = resume_dir / "last"
    if not (path / "state.json").is_file():
        return None
    load_trainable_state(models, load_file(str(path / "trainable.safetensors")))
    optimizer.load_state_dict(safe_torch_load(path / "optimizer.pt")["optimizer"])
    meta = json.loads((path / "state.json").read_text())
    best = {"epoch": meta["best_epoch"], "score": meta["best_score"],
            "state": load_file(str(path / "best.safetensors"))}
    return meta["history"], best


# ----------------------------------------------------------------------------- the loop

@dataclass
class FinetuneResult:
    """The models with the best-on-val weights loaded, and the per-epoch history."""

    models: Models
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    resumed_from: int = 0
    seconds: float = 0.0


def make_optimizer(models: Models, config: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters only (frozen ones never reach it)."""
    groups = [{"params": [p for p in models.conditioner.parameters() if p.requires_grad], "lr": config.lr}]
    unet_params = [p for p in models.unet.parameters() if p.requires_grad]
    if unet_params:
        groups.append({"params": unet_params, "lr": config.unet_lr or config.lr})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def is_better(score: float, best: dict, select_by: str) -> bool:
    """Higher n-way accuracy, or lower val loss, than the best so far."""
    if best["score"] is None:
        return True
    return score > best["score"] if select_by == "val_nway_top1" else score < best["score"]


def finetune(config: FinetuneConfig, models: Models, train_data: PairedTensors, val_data: PairedTensors,
             foundation, seed: int, resume_root: Path | None = None, inputs_id: str = "",
             log: Callable[[dict, int], None] | None = None, stop_after: int | None = None) -> FinetuneResult:
    """Train, validate every `val_every` epochs, keep the best on val; resumable from `resume_root`."""
    from torch.utils.data import DataLoader, TensorDataset

    from ..mae.train import EpochShuffle
    from .sample import make_scheduler

    start_time = time.perf_counter()
    accelerator = Accelerator(mixed_precision="no" if config.mixed_precision == "fp32" else config.mixed_precision)
    if config.gradient_checkpointing:
        models.unet.enable_gradient_checkpointing()
    set_seed(seed)
    optimizer = make_optimizer(models, config)
    resume_dir = Path(resume_root) / run_key(config, seed, inputs_id) if resume_root else None
    restored = load_checkpoint(resume_dir, models, optimizer) if resume_dir else None
    history, best = restored or ([], {"epoch": 0, "score": None, "state": trainable_state(models)})
    resumed_from = len(history)
    tensors = TensorDataset(train_data.eeg, train_data.latent_mean, train_data.latent_std,
                            train_data.clip_target, train_data.label)
    if len(tensors) < config.batch_size:
        raise DataError(f"{len(tensors)} training trials, fewer than one batch of {config.batch_size}")
    sampler = EpochShuffle(len(tensors), seed)
    loader = DataLoader(tensors, batch_size=config.batch_size, sampler=sampler, drop_last=True)
    models.conditioner, optimizer, loader = accelerator.prepare(models.conditioner, optimizer, loader)
    models.vae = models.vae.to(accelerator.device)
    models.unet = models.unet.to(accelerator.device)
    if any(p.requires_grad for p in models.unet.parameters()):  # gradients all-reduced across processes
        models.unet = accelerator.prepare(models.unet)
    unwrapped = lambda: dataclasses.replace(  # noqa: E731
        models, conditioner=accelerator.unwrap_model(models.conditioner), unet=accelerator.unwrap_model(models.unet))
    ema = None
    if config.ema_decay:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(models.trainable(), decay=config.ema_decay)
    sampler_for_val = make_scheduler("ddim", models.noise_scheduler.config)
    step = resumed_from * len(loader)
    end = config.epochs if stop_after is None else min(config.epochs, stop_after)
    for epoch in range(resumed_from, end):
        set_seed(seed * 1_000_003 + epoch)
        loader.set_epoch(epoch)  # the prepared loader passes it on to the sampler
        train_stats, step = train_one_epoch(models, loader, optimizer, accelerator, config, step, log,
                                            f"finetune epoch {epoch + 1}/{config.epochs}", ema)
        record = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in train_stats.items()}}
        if (epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs:
            if ema is not None:
                ema.store(models.trainable())
                ema.copy_to(models.trainable())
            record.update(val_losses(unwrapped(), val_data, config, seed))
            record["val_nway_top1"] = val_nway(unwrapped(), val_data, foundation, sampler_for_val, config, seed)
            score = record[config.select_by] if config.select_by == "val_nway_top1" else record["val_loss"]
            if is_better(score, best, config.select_by):
                best = {"epoch": epoch + 1, "score": score, "state": trainable_state(unwrapped())}
            if ema is not None:
                ema.restore(models.trainable())
        history.append(record)
        if log is not None:
            log({k: v for k, v in record.items() if k != "epoch"}, epoch + 1)
        if resume_dir is not None and ((epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs):
            if accelerator.is_main_process:
                save_checkpoint(resume_dir, unwrapped(), optimizer, history, best)
            accelerator.wait_for_everyone()
    models = unwrapped()
    load_trainable_state(models, best["state"])
    models.conditioner.eval()
    models.unet.eval()
    return FinetuneResult(models, history, best["epoch"], resumed_from, time.perf_counter() - start_time)
