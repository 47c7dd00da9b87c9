"""The pretraining loop: accelerate (CPU / GPU / multi-GPU), AdamW, warmup + cosine, resumable.

Checkpoints and resume come from the training core (`dreamdiffusion.core.training`): every
`checkpoint_every` epochs the whole training state is saved under `<resume_root>/<resume_name>/`,
and a restarted run continues from the newest intact checkpoint on the same trajectory (the
shuffle is keyed by (seed, epoch), the masks by (seed, epoch, window)). Changed params, data or
code give a new resume name, so they never resume an old run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset

from dreamdiffusion.core.compute import ComputeConfig, accelerator_kwargs, apply_threads, prepare_module
from dreamdiffusion.core.fileio import DataError
from dreamdiffusion.core.training import Checkpoints, EpochShuffle, History, run_epochs
from dreamdiffusion.preprocess.processed import Corpus, preload
from dreamdiffusion.pretrain.config import PretrainConfig
from dreamdiffusion.pretrain.engine import lr_at, masked_mse, train_one_epoch
from dreamdiffusion.pretrain.model import MAEConfig, MaskedAutoencoder, param_groups

CODE = [Path(__file__).parent / name for name in ("model.py", "engine.py", "train.py")]


@dataclass
class PretrainResult:
    """What `train` returns: the trained model (unwrapped, on the training device) and per-epoch history."""

    model: MaskedAutoencoder
    history: list[dict] = field(default_factory=list)
    resumed_from: int = 0  # epochs already done by an earlier (interrupted) run
    checkpoints: Checkpoints | None = None
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


def resume_name(config: PretrainConfig, seed: int, data_id: str, processes: int = 1) -> str:
    """The resume folder's name: a hash of what shapes the training trajectory."""
    from dreamdiffusion.core import rng, training

    return training.run_key(config, model=config.resolved_model(), seed=seed, data=data_id, processes=processes,
                            code=training.code_digest(*CODE, Path(training.__file__), Path(rng.__file__)))


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


def make_loaders(corpus: Corpus, train_idx: np.ndarray, val_idx: np.ndarray, batch_size: int, seed: int,
                 preload_mib: float = 0):
    """Training loader (seeded per-epoch shuffle, full batches) and val loader (in order); the
    windows are read into memory first when they take at most `preload_mib` MiB."""
    eeg = preload(corpus.eeg, preload_mib)
    train_set = CorpusWindows(eeg, train_idx)
    if len(train_set) < batch_size:
        raise DataError(f"corpus: {len(train_set)} training windows, fewer than one batch of {batch_size}")
    train_loader = DataLoader(train_set, batch_size=batch_size, sampler=EpochShuffle(len(train_set), seed),
                              drop_last=True)
    val_loader = DataLoader(CorpusWindows(eeg, val_idx), batch_size=batch_size)
    return train_loader, val_loader


def train(config: PretrainConfig, corpus: Corpus, seed: int, resume_root: Path | None = None,
          data_id: str = "", log: Callable[[dict, int], None] | None = None,
          compute: ComputeConfig | None = None, stop_after: int | None = None) -> PretrainResult:
    """Pretrain the masked autoencoder on `corpus`, checkpointing to / resuming from
    `<resume_root>/<resume_name>` (no checkpoints when `resume_root` is None), on the device and
    with the speed knobs of `compute`. `data_id` identifies the corpus (e.g. its sha256);
    `log(metrics, step)` receives step loss/lr and epoch losses (main process only)."""
    compute = compute or ComputeConfig()
    accelerator = Accelerator(**accelerator_kwargs(compute, config.mixed_precision, "pretrain"))
    apply_threads(compute)
    model_config = config.resolved_model()
    check_corpus(corpus, model_config)
    train_idx, val_idx = training_windows(corpus, config, seed)
    train_loader, val_loader = make_loaders(corpus, train_idx, val_idx, config.batch_size, seed, compute.preload_mib)
    set_seed(seed)
    model = prepare_module(MaskedAutoencoder(model_config), compute)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.95))
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    history = History()
    accelerator.register_for_checkpointing(history)
    resume = Path(resume_root) / resume_name(config, seed, data_id, accelerator.num_processes) if resume_root else None
    checkpoints = Checkpoints(accelerator, resume)
    one_epoch = epoch_runner(model, optimizer, train_loader, val_loader if len(val_idx) else None, accelerator,
                             config, seed, log)
    resumed = run_epochs(checkpoints, history, config.epochs, one_epoch, config.checkpoint_every, seed, stop_after)
    return PretrainResult(accelerator.unwrap_model(model).eval(), history.records, resumed, checkpoints,
                          accelerator.is_main_process)


def training_windows(corpus: Corpus, config: PretrainConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) window indices: split by recording, the train part capped at `max_windows`."""
    train_idx, val_idx = split_by_recording(corpus.recording, config.val_fraction, seed)
    if config.max_windows and len(train_idx) > config.max_windows:
        train_idx = np.sort(np.random.default_rng(seed).choice(train_idx, config.max_windows, replace=False))
    return train_idx, val_idx


def epoch_runner(model, optimizer, train_loader, val_loader, accelerator, config: PretrainConfig, seed: int,
                 log: Callable[[dict, int], None] | None) -> Callable[[int], dict]:
    """`one_epoch(epoch) -> record`: train over the corpus once, then the val masked MSE."""
    steps_per_epoch = len(train_loader)
    total_steps, warmup_steps = config.epochs * steps_per_epoch, round(config.warmup_epochs * steps_per_epoch)
    schedule = lambda step: lr_at(step, total_steps, warmup_steps, config.lr, config.min_lr)  # noqa: E731
    log_step = None
    if log is not None:
        log_step = lambda step, m: log(m, step) if step % config.log_every == 0 else None  # noqa: E731

    def one_epoch(epoch: int) -> dict:
        train_loader.set_epoch(epoch)
        stats = train_one_epoch(model, train_loader, optimizer, accelerator, schedule, epoch * steps_per_epoch,
                                config.clip_grad, seed, epoch, log_step, desc=f"pretrain epoch {epoch + 1}/{config.epochs}")
        val_loss = masked_mse(model, val_loader, accelerator, seed) if val_loader is not None else None
        if log is not None and accelerator.is_main_process:
            log({"epoch_train_loss": stats["loss"], "val_loss": val_loss}, epoch + 1)
        return {"epoch": epoch + 1, "train_loss": stats["loss"], "val_loss": val_loss,
                "lr": schedule(stats["step"] - 1), "samples": stats["samples"], "seconds": stats["seconds"]}

    return one_epoch


def split_counts(corpus: Corpus, config: PretrainConfig, seed: int) -> dict:
    """Numbers of windows and recordings in the train and val parts (for the metrics file)."""
    train_idx, val_idx = split_by_recording(corpus.recording, config.val_fraction, seed)
    return {"train_windows": int(len(train_idx)), "val_windows": int(len(val_idx)),
            "val_recordings": int(len(np.unique(corpus.recording[val_idx])))}
