"""The pretraining loop: accelerate (CPU / GPU / multi-GPU), AdamW, warmup + cosine, resumable.

Resume: every `checkpoint_every` epochs the model, optimizer (and fp16 scaler) state and the
loss history are written atomically to `<resume_dir>/epoch-NNNN/`. A restarted run loads the
newest one and continues; since all randomness (shuffle, masks) is re-seeded from
(seed, epoch) at each epoch start, the continued run follows the uninterrupted trajectory.
Callers key `resume_dir` by `run_key(...)`, so changed params never resume an old run.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, Sampler

from ..compute import ComputeConfig, accelerator_kwargs, apply_threads, prepare_module
from ..config import param, to_dict
from ..data.processed import Corpus
from ..io import DataError, atomic_path, safe_torch_load
from .engine import evaluate, lr_at, train_one_epoch
from .model import MAEConfig, MaskedAutoencoder, param_groups

# Fields that do not change what is trained: they stay out of the resume key.
NOT_IN_RUN_KEY = ("checkpoint_every", "keep_checkpoints", "log_every", "probe_c", "probe_random_inits", "probe_batch_size", "figure_channels")


@dataclass(frozen=True)
class PretrainConfig:
    """The `pretrain` params section."""

    preset: str = param("custom", choices=["custom", "paper"],
                        help="custom: `model` as written; paper: the paper's s.3.1 shape (mlp_ratio stays as set)")
    model: MAEConfig = param(MAEConfig(), help="shape of the masked autoencoder")
    epochs: int = param(20, min=1)
    batch_size: int = param(64, min=1, help="windows per step per process (paper: 100)")
    lr: float = param(1e-3, min=0.0, help="peak learning rate (paper: 2.5e-4)")
    min_lr: float = param(0.0, min=0.0, help="learning rate at the end of the cosine")
    weight_decay: float = param(0.05, min=0.0, help="AdamW decay, not applied to biases and norms")
    warmup_epochs: float = param(2.0, min=0.0, help="linear warmup, per iteration (paper: 40 of 500)")
    clip_grad: float = param(0.8, min=0.0, help="max gradient norm; 0 = no clipping")
    mixed_precision: str = param("fp32", choices=["fp32", "bf16", "fp16"], help="autocast dtype; fp16 needs a GPU")
    val_fraction: float = param(0.1, min=0.0, max=0.9, help="share of corpus recordings held out for val")
    max_windows: int = param(0, min=0, help="use at most this many training windows (0 = all)")
    checkpoint_every: int = param(5, min=1, help="epochs between resume checkpoints")
    keep_checkpoints: bool = param(False, help="keep the resume checkpoints after a successful run")
    log_every: int = param(1, min=1, help="log step loss / lr to MLflow every this many steps")
    probe_c: float = param(1.0, min=1e-6, help="inverse L2 strength of the linear probe")
    probe_random_inits: int = param(3, min=1, help="random-init encoders the probe baseline averages over")
    probe_batch_size: int = param(128, min=1, help="windows per encoder forward pass in the probe")
    figure_channels: int = param(4, min=1, help="channels drawn in the reconstruction figure")

    def resolved_model(self) -> MAEConfig:
        """The model config with the preset applied."""
        return self.model.with_preset(self.preset)


@dataclass
class PretrainResult:
    """What `train` returns: the trained model (unwrapped, on the training device) and per-epoch history."""

    model: MaskedAutoencoder
    history: list[dict] = field(default_factory=list)
    resumed_from: int = 0  # epochs already done by an earlier (interrupted) run
    resume_dir: Path | None = None
    is_main_process: bool = True

    @property
    def samples_per_s(self) -> float:
        seconds = sum(h["seconds"] for h in self.history)
        return sum(h["samples"] for h in self.history) / seconds if seconds else 0.0


def check_corpus(corpus: Corpus, model: MAEConfig, source: str = "corpus") -> None:
    """Raise DataError naming `source` unless the windows are non-empty, finite and shaped right."""
    eeg = corpus.eeg
    if eeg.ndim != 3 or len(eeg) == 0:
        raise DataError(f"{source}: key 'eeg' has shape {eeg.shape}; expected a non-empty (M, channels, samples) array")
    if tuple(eeg.shape[1:]) != (model.channels, model.samples):
        raise DataError(
            f"{source}: key 'eeg' has windows of shape {tuple(eeg.shape[1:])}, expected ({model.channels}, {model.samples}) "
            f"(channels x samples of pretrain.model; `preprocess` maps channels and resamples)")
    if len(corpus.recording) != len(eeg):
        raise DataError(f"{source}: key 'recording' has {len(corpus.recording)} rows for {len(eeg)} windows")
    if len(eeg) and (corpus.recording.min() < 0 or corpus.recording.max() >= len(corpus.recordings)):
        raise DataError(f"{source}: key 'recording' indexes outside 'recordings' (0..{len(corpus.recordings) - 1})")
    bad = np.concatenate([~np.isfinite(eeg[i : i + 1024]).all(axis=(1, 2)) for i in range(0, len(eeg), 1024)])
    if bad.any():  # checked 1024 windows at a time: the corpus need not fit in memory
        raise DataError(f"{source}: key 'eeg' has {int(bad.sum())} window(s) with NaN/Inf, first at row {int(np.argmax(bad))}")


def split_by_recording(recording: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Window indices (train, val): whole recordings are held out, chosen by a seeded shuffle."""
    recordings = np.unique(recording)
    if val_fraction == 0:
        return np.arange(len(recording)), np.arange(0)
    if len(recordings) < 2:
        raise DataError(f"corpus has {len(recordings)} recording(s); a val split by recording needs at least 2 "
                        "(or set pretrain.val_fraction: 0)")
    order = np.random.default_rng(seed).permutation(recordings)
    val = order[: max(1, round(val_fraction * len(recordings)))]
    is_val = np.isin(recording, val)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def code_fingerprint() -> str:
    """sha256 of this package's training code: a code change must not resume an old run."""
    digest = hashlib.sha256()
    for name in ("model.py", "engine.py", "train.py"):
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()


def run_key(config: PretrainConfig, seed: int, data_sha256: str, num_processes: int = 1) -> str:
    """Short hash of everything that shapes the training trajectory (the resume dir name)."""
    fields = {k: v for k, v in to_dict(config).items() if k not in NOT_IN_RUN_KEY}
    fields["model"] = to_dict(config.resolved_model())
    payload = {"config": fields, "seed": seed, "data": data_sha256, "processes": num_processes,
               "code": code_fingerprint()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class EpochShuffle(Sampler):
    """A permutation of range(n) that depends only on (seed, epoch): resumable and identical on all ranks."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


def latest_checkpoint(resume_dir: Path | None) -> Path | None:
    """The newest complete `epoch-NNNN` checkpoint in `resume_dir`, if any."""
    if resume_dir is None or not resume_dir.is_dir():
        return None
    done = sorted(p for p in resume_dir.glob("epoch-*") if (p / "state.json").is_file())
    return done[-1] if done else None


def save_checkpoint(resume_dir: Path, model, optimizer, accelerator, history: list[dict]) -> Path:
    """Write model/optimizer/scaler state and history to `<resume_dir>/epoch-NNNN` (atomically); drop older ones."""
    path = resume_dir / f"epoch-{len(history):04d}"
    state = {k: v.detach().cpu().contiguous() for k, v in accelerator.unwrap_model(model).state_dict().items()}
    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_file(state, str(tmp / "model.safetensors"))
        extra = {"optimizer": optimizer.state_dict()}
        if accelerator.scaler is not None:
            extra["scaler"] = accelerator.scaler.state_dict()
        torch.save(extra, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"epoch": len(history), "history": history}, indent=1))
    for old in resume_dir.glob("epoch-*"):
        if old != path:
            shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(path: Path, model, optimizer) -> tuple[list[dict], dict | None]:
    """Restore model and optimizer in place (before `prepare`); returns (history, fp16 scaler state)."""
    model.load_state_dict(load_file(str(path / "model.safetensors"), device=str(next(model.parameters()).device)))
    extra = safe_torch_load(path / "optimizer.pt")
    optimizer.load_state_dict(extra["optimizer"])
    return json.loads((path / "state.json").read_text())["history"], extra.get("scaler")


class CorpusWindows(Dataset):
    """Window i of `rows` -> (EEG (C, L) float32, its row in the corpus); read from disk per item
    when the corpus is an on-disk array, so memory does not grow with the corpus."""

    def __init__(self, eeg, rows: np.ndarray):
        self.eeg, self.rows = eeg, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = int(self.rows[i])
        return torch.from_numpy(np.ascontiguousarray(self.eeg[row], dtype=np.float32)), row


def make_loaders(corpus: Corpus, train_idx: np.ndarray, val_idx: np.ndarray, batch_size: int, seed: int):
    """Training loader (seeded per-epoch shuffle, full batches) and val loader (in order)."""
    train_set = CorpusWindows(corpus.eeg, train_idx)
    if len(train_set) < batch_size:
        raise DataError(f"corpus: {len(train_set)} training windows, fewer than one batch of {batch_size}")
    train_loader = DataLoader(train_set, batch_size=batch_size, sampler=EpochShuffle(len(train_set), seed),
                              drop_last=True)
    val_loader = DataLoader(CorpusWindows(corpus.eeg, val_idx), batch_size=batch_size)
    return train_loader, val_loader


def train(config: PretrainConfig, corpus: Corpus, seed: int, resume_root: Path | None = None,
          data_id: str = "", log: Callable[[dict, int], None] | None = None,
          compute: ComputeConfig | None = None) -> PretrainResult:
    """Pretrain the masked autoencoder on `corpus`, checkpointing to / resuming from
    `<resume_root>/<run_key>` (no checkpoints when `resume_root` is None), on the device and
    with the speed knobs of `compute`.

    `data_id` identifies the corpus (e.g. its sha256) in the run key. `log(metrics, step)`
    receives step loss/lr and epoch losses (main process only).
    """
    compute = compute or ComputeConfig()
    accelerator = Accelerator(**accelerator_kwargs(compute, config.mixed_precision, "pretrain"))
    apply_threads(compute)
    resume_dir = None
    if resume_root is not None:
        resume_dir = Path(resume_root) / run_key(config, seed, data_id, accelerator.num_processes)
    model_config = config.resolved_model()
    check_corpus(corpus, model_config)
    train_idx, val_idx = split_by_recording(corpus.recording, config.val_fraction, seed)
    if config.max_windows and len(train_idx) > config.max_windows:
        train_idx = np.sort(np.random.default_rng(seed).choice(train_idx, config.max_windows, replace=False))
    train_loader, val_loader = make_loaders(corpus, train_idx, val_idx, config.batch_size, seed)
    set_seed(seed)
    model = prepare_module(MaskedAutoencoder(model_config), compute).to(accelerator.device)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.95))
    checkpoint = latest_checkpoint(resume_dir)
    history, scaler_state = load_checkpoint(checkpoint, model, optimizer) if checkpoint else ([], None)
    resumed_from = len(history)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    if scaler_state is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(scaler_state)
    steps_per_epoch = len(train_loader)
    total_steps, warmup_steps = config.epochs * steps_per_epoch, round(config.warmup_epochs * steps_per_epoch)
    schedule = lambda step: lr_at(step, total_steps, warmup_steps, config.lr, config.min_lr)  # noqa: E731
    log_step = None
    if log is not None:
        log_step = lambda step, m: log(m, step) if step % config.log_every == 0 else None  # noqa: E731
    for epoch in range(resumed_from, config.epochs):
        set_seed(seed * 1_000_003 + epoch, device_specific=True)
        train_loader.set_epoch(epoch)
        stats = train_one_epoch(model, train_loader, optimizer, accelerator, schedule, epoch * steps_per_epoch,
                                config.clip_grad, seed, epoch, log_step, desc=f"pretrain epoch {epoch + 1}/{config.epochs}")
        val_loss = evaluate(model, val_loader, accelerator, seed) if len(val_idx) else None
        history.append({"epoch": epoch + 1, "train_loss": stats["loss"], "val_loss": val_loss,
                        "lr": schedule(stats["step"] - 1), "samples": stats["samples"], "seconds": stats["seconds"]})
        if log is not None and accelerator.is_main_process:
            log({"epoch_train_loss": stats["loss"], "val_loss": val_loss}, epoch + 1)
        if resume_dir is not None and ((epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs):
            if accelerator.is_main_process:
                save_checkpoint(resume_dir, model, optimizer, accelerator, history)
            accelerator.wait_for_everyone()
    trained = accelerator.unwrap_model(model).eval()  # stays on the device (the probe runs there too)
    return PretrainResult(model=trained, history=history, resumed_from=resumed_from, resume_dir=resume_dir,
                          is_main_process=accelerator.is_main_process)


def split_counts(corpus: Corpus, config: PretrainConfig, seed: int) -> dict:
    """Numbers of windows and recordings in the train and val parts (for the metrics file)."""
    train_idx, val_idx = split_by_recording(corpus.recording, config.val_fraction, seed)
    return {"train_windows": int(len(train_idx)), "val_windows": int(len(val_idx)),
            "val_recordings": int(len(np.unique(corpus.recording[val_idx])))}
