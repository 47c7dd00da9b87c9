"""Stage B training: the EEG conditioner (and part of the UNet) learns to drive Stable Diffusion.

The config, model assembly, checkpoints and the epoch loop (the loss and one epoch are in
engine.py, the data in data.py). Only the validation split selects the kept model; the test
split is never read here.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from torch.utils.data import DataLoader

from dreamdiffusion.core.compute import ComputeConfig, accelerator_kwargs, apply_threads, prepare_module
from dreamdiffusion.core.config import to_dict
from dreamdiffusion.core.fileio import DataError
from dreamdiffusion.core.training import Checkpoints, EpochShuffle, History, run_epochs
from dreamdiffusion.finetune.config import FinetuneConfig
from dreamdiffusion.finetune.dataset import FinetuneData
from dreamdiffusion.finetune.engine import Models, finetune_one_epoch, val_losses, val_nway
from dreamdiffusion.finetune.model import ConditionerConfig, EEGConditioner, unet_time_dim
from dreamdiffusion.finetune.trainable import set_unet_trainable
from dreamdiffusion.pretrain.encoder import load_encoder

CODE = [Path(__file__).parent / name for name in ("model.py", "engine.py", "train.py", "trainable.py", "sample.py")]


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


def build_models(config: FinetuneConfig, foundation, encoder_dir: Path, seed: int) -> Models:
    """Conditioner (initialised from `seed` alone: whatever ran before, e.g. a cache miss that built
    CLIP, does not change it) + partly trainable UNet + frozen VAE on the foundation's loaded models."""
    from diffusers import DDPMScheduler

    torch.manual_seed(seed)
    set_unet_trainable(foundation.unet, config.train_unet)
    conditioner = build_conditioner(config, foundation, encoder_dir, foundation.unet)
    return Models(conditioner, foundation.unet, foundation.vae.requires_grad_(False),
                  DDPMScheduler.from_config(foundation.scheduler.config), foundation.caption_embeds)


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


def resume_name(config: FinetuneConfig, seed: int, inputs_id: str, processes: int = 1) -> str:
    """The resume folder's name: a hash of what shapes training (params, seed, inputs, code, processes)."""
    from dreamdiffusion.core import rng, training

    return training.run_key(config, seed=seed, inputs=inputs_id, processes=processes,
                            code=training.code_digest(*CODE, Path(training.__file__), Path(rng.__file__)))


# ----------------------------------------------------------------------------- the loop

@dataclass
class FinetuneResult:
    """The models with the best-on-val weights loaded, and the per-epoch history."""

    models: Models
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    resumed_from: int = 0
    seconds: float = 0.0
    checkpoints: Checkpoints | None = None
    is_main_process: bool = True

    @property
    def val_nway(self) -> int:
        """The n of the val n-way accuracy as computed (0 before any validation)."""
        return next((h["val_nway"] for h in reversed(self.history) if "val_nway" in h), 0)


def make_optimizer(models: Models, config: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters only (frozen ones never reach it)."""
    groups = [{"params": [p for p in models.conditioner.parameters() if p.requires_grad], "lr": config.lr}]
    unet_params = [p for p in models.unet.parameters() if p.requires_grad]
    if unet_params:
        groups.append({"params": unet_params, "lr": config.unet_lr or config.lr})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def make_lr_schedule(optimizer: torch.optim.Optimizer, config: FinetuneConfig, steps: int):
    """The per-step learning-rate schedule (transformers' cosine with a floor), or None when constant."""
    if config.lr_schedule == "constant":
        return None
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    return get_cosine_with_min_lr_schedule_with_warmup(optimizer, num_warmup_steps=0, num_training_steps=steps,
                                                       min_lr_rate=config.min_lr_ratio)


def is_better(score: float, best: dict, select_by: str) -> bool:
    """Higher val n-way or retrieval accuracy, or lower val loss, than the best so far."""
    if best["score"] is None:
        return True
    return score < best["score"] if select_by == "val_loss" else score > best["score"]


def validate(models: Models, data: FinetuneData, foundation, config: FinetuneConfig, seed: int,
             ema, best: dict, keep: bool = True) -> tuple[dict, dict[str, torch.Tensor] | None]:
    """Val losses and quick n-way, and the trainable state they scored (the EMA's when there is an EMA)
    when it may be kept (`keep`) and beats `best` on `select_by`, else None (no copy of weights that will not
    be kept)."""
    from dreamdiffusion.finetune.sample import make_scheduler

    if ema is not None:
        ema.store(models.trainable())
        ema.copy_to(models.trainable())
    record = val_losses(models, data.val, config, seed, config.val_batch_size)
    scheduler = make_scheduler("ddim", models.noise_scheduler.config)
    record["val_nway_top1"], record["val_nway"] = val_nway(models, data, foundation, scheduler, config, seed,
                                                           config.val_batch_size)
    better = keep and is_better(record[config.select_by], best, config.select_by)
    validated = trainable_state(models) if better else None  # the scored weights (the EMA's, when there is one)
    if ema is not None:
        ema.restore(models.trainable())
    return record, validated


def make_accelerator(config: FinetuneConfig, compute: ComputeConfig) -> Accelerator:
    """The accelerator; DDP may meet a step that leaves the null condition without a gradient."""
    unused = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(**accelerator_kwargs(compute, config.mixed_precision, "finetune"), kwargs_handlers=[unused])


def prepare(models: Models, config: FinetuneConfig, data: FinetuneData, accelerator, compute: ComputeConfig, seed: int):
    """Models on the device (the trained ones wrapped for DDP), their optimizer and the train loader."""
    for module in (models.conditioner, models.unet):
        prepare_module(module, compute)
    optimizer = make_optimizer(models, config)
    if len(data.train) < config.batch_size * accelerator.num_processes:
        raise DataError(f"{len(data.train)} training trials, fewer than one batch of {config.batch_size} "
                        f"x {accelerator.num_processes} process(es)")
    loader = DataLoader(data.train, batch_size=config.batch_size, sampler=EpochShuffle(len(data.train), seed),
                        drop_last=True)
    models.conditioner, optimizer, loader = accelerator.prepare(models.conditioner, optimizer, loader)
    models.vae, models.unet = models.vae.to(accelerator.device), models.unet.to(accelerator.device)
    if any(p.requires_grad for p in models.unet.parameters()):  # gradients all-reduced across processes
        models.unet = accelerator.prepare(models.unet)
    return optimizer, loader


def make_ema(models: Models, config: FinetuneConfig, device):
    """An EMA of the trainable parameters (diffusers' EMAModel), or None when `ema_decay` is 0."""
    if not config.ema_decay:
        return None
    from diffusers.training_utils import EMAModel

    ema = EMAModel(models.trainable(), decay=config.ema_decay)
    ema.to(device)
    return ema


def epoch_runner(models: Models, unwrapped, loader, optimizer, accelerator, data: FinetuneData, foundation,
                 config: FinetuneConfig, seed: int, log, ema, history: History, lr_schedule=None):
    """`one_epoch(epoch) -> record`: train once over the loader, validate when due (main process),
    and keep the best trainable state on val in `history.best`."""

    def one_epoch(epoch: int) -> dict:
        loader.set_epoch(epoch)  # the prepared loader passes it on to the sampler
        stats, _ = finetune_one_epoch(models, loader, optimizer, accelerator, config, seed, epoch, epoch * len(loader),
                                      log, ema, lr_schedule)
        record = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in stats.items()},
                  "lr": optimizer.param_groups[0]["lr"]}  # the conditioner's, after the epoch's last step
        if accelerator.is_main_process and config.validates(epoch + 1):
            scores, validated = validate(unwrapped(), data, foundation, config, seed, ema, history.best,
                                         config.keeps(epoch + 1))
            record.update(scores)
            if validated is not None:
                history.best = {"epoch": epoch + 1, "score": record[config.select_by], "state": validated}
        if log is not None and accelerator.is_main_process:
            log({k: v for k, v in record.items() if k != "epoch"}, epoch + 1)
        return record

    return one_epoch


def finetune(config: FinetuneConfig, models: Models, data: FinetuneData, foundation, seed: int,
             resume_root: Path | None = None, inputs_id: str = "", log: Callable[[dict, int], None] | None = None,
             stop_after: int | None = None, compute: ComputeConfig | None = None) -> FinetuneResult:
    """Train, validate every `val_every` epochs (main process), keep the best on val among the epochs after
    `align_epochs` (the UNet trained with them); resumable from `resume_root`."""
    start_time, compute = time.perf_counter(), compute or ComputeConfig()
    accelerator = make_accelerator(config, compute)
    apply_threads(compute)
    set_seed(seed)
    optimizer, loader = prepare(models, config, data, accelerator, compute, seed)
    unwrapped = lambda: dataclasses.replace(  # noqa: E731
        models, conditioner=accelerator.unwrap_model(models.conditioner), unet=accelerator.unwrap_model(models.unet))
    ema, history = make_ema(models, config, accelerator.device), History()
    lr_schedule = make_lr_schedule(optimizer, config, config.epochs * len(loader))
    history.best["state"] = trainable_state(unwrapped())
    accelerator.register_for_checkpointing(history, *(extra for extra in (ema, lr_schedule) if extra is not None))
    resume = Path(resume_root) / resume_name(config, seed, inputs_id, accelerator.num_processes) if resume_root else None
    checkpoints = Checkpoints(accelerator, resume)
    one_epoch = epoch_runner(models, unwrapped, loader, optimizer, accelerator, data, foundation, config, seed, log,
                             ema, history, lr_schedule)
    resumed = run_epochs(checkpoints, history, config.epochs, one_epoch, config.checkpoint_every, seed, stop_after)
    models = unwrapped()
    load_trainable_state(models, history.best["state"])
    models.conditioner.eval()
    models.unet.eval()
    return FinetuneResult(models, history.records, history.best["epoch"], resumed, time.perf_counter() - start_time,
                          checkpoints, accelerator.is_main_process)
