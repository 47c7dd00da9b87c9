"""The training core of `pretrain` and `finetune`: the run key, and a seeded, resumable epoch loop.

A run's checkpoints are accelerate's own state (`save_state` / `load_state`: the prepared models,
optimizer, fp16 scaler, RNG states, and every object registered for checkpointing, such as an EMA
and the loop's `History`), one folder per checkpoint with a sha256 manifest written last:

    <resume_dir>/epoch-0004/   model.safetensors, optimizer.bin, ..., custom_checkpoint_0.pkl, manifest.json

Models keep only the parameters that train (a frozen UNet is not copied into every checkpoint).
Resuming takes the newest intact checkpoint; a damaged one is reported and skipped. Since every
random draw of a sample is keyed by (seed, epoch, sample) and the shuffle by (seed, epoch), a
resumed run follows the uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Sampler

from dreamdiffusion.core.config import to_dict
from dreamdiffusion.core.fileio import DataError, verify_manifest, write_manifest


def training_fields(config) -> dict:
    """The fields of a config dataclass that shape training: all but those declared `run_key=False`."""
    out = {}
    for field in dataclasses.fields(config):
        if field.metadata.get("run_key", True):
            value = getattr(config, field.name)
            out[field.name] = training_fields(value) if dataclasses.is_dataclass(value) else value
    return out


def run_key(config, **identity) -> str:
    """Short hash of `config`'s training fields and of `identity` (seed, data, code, processes, ...)."""
    payload = {"config": training_fields(config), **{k: to_dict(v) if dataclasses.is_dataclass(v) else v
                                                     for k, v in identity.items()}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def code_digest(*files: Path) -> str:
    """sha256 of the training code: a code change must not resume an old run."""
    return hashlib.sha256(b"".join(Path(f).read_bytes() for f in files)).hexdigest()


class History:
    """Per-epoch records and the best-so-far state, saved with every checkpoint."""

    def __init__(self):
        self.records: list[dict] = []
        self.best: dict = {"epoch": 0, "score": None, "state": {}}

    def state_dict(self) -> dict:
        return {"records": json.dumps(self.records), "best_epoch": self.best["epoch"],
                "best_score": json.dumps(self.best["score"]), "best_state": self.best["state"]}

    def load_state_dict(self, state: dict) -> None:
        self.records = json.loads(state["records"])
        self.best = {"epoch": state["best_epoch"], "score": json.loads(state["best_score"]),
                     "state": state["best_state"]}


def damage(folder: Path) -> str | None:
    """Why `folder` is not an intact checkpoint (None when every file matches its manifest)."""
    try:
        verify_manifest(folder, "resume")
    except DataError as err:
        return str(err)
    return None


def keep_trainable(models, weights, output_dir) -> None:
    """accelerate save-state hook: keep only each model's trainable parameters in the checkpoint."""
    for model, state in zip(models, weights):
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        for key in [k for k in state if k not in trainable]:
            del state[key]


class Checkpoints:
    """The epoch checkpoints of one run under `resume_dir` (None: no checkpoints)."""

    def __init__(self, accelerator, resume_dir: Path | None, keep: int = 2):
        self.accelerator, self.resume_dir, self.keep = accelerator, resume_dir, keep
        accelerator.register_save_state_pre_hook(keep_trainable)

    def save(self, epochs_done: int) -> None:
        """Save the full training state after `epochs_done` epochs (all processes take part)."""
        if self.resume_dir is None:
            return
        final = self.resume_dir / f"epoch-{epochs_done:04d}"
        tmp = self.resume_dir / f".epoch-{epochs_done:04d}.tmp"
        if self.accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(tmp))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            write_manifest(tmp)  # last: a checkpoint with a manifest is complete
            shutil.rmtree(final, ignore_errors=True)
            tmp.replace(final)
            for old in self.intact_first()[self.keep :]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def intact_first(self) -> list[Path]:
        """The checkpoint folders, newest first."""
        if self.resume_dir is None or not self.resume_dir.is_dir():
            return []
        return sorted(self.resume_dir.glob("epoch-*"), reverse=True)

    def restore(self) -> int:
        """Load the newest intact checkpoint (after `prepare`); returns the epochs it holds (0: none)."""
        for folder in self.intact_first():
            problem = damage(folder)
            if problem is None:
                self.accelerator.load_state(str(folder), strict=False)  # models hold their trainable part only
                return int(folder.name.split("-")[1])
            if self.accelerator.is_main_process:
                print(f"resume: skipping checkpoint {folder}: {problem}", file=sys.stderr)
        return 0

    def remove(self) -> None:
        """Delete the run's checkpoints (after a successful run)."""
        if self.resume_dir is not None and self.accelerator.is_main_process:
            shutil.rmtree(self.resume_dir, ignore_errors=True)


def run_epochs(checkpoints: Checkpoints, history: History, epochs: int, one_epoch: Callable[[int], dict],
               checkpoint_every: int, seed: int, stop_after: int | None = None) -> int:
    """Resume, then run `one_epoch(epoch) -> record` for the remaining epochs, checkpointing every
    `checkpoint_every` epochs and after the last; stops early after `stop_after` epochs (tests).
    Returns the number of epochs the run resumed from."""
    from accelerate.utils import set_seed

    resumed_from = checkpoints.restore()
    end = epochs if stop_after is None else min(epochs, stop_after)
    for epoch in range(resumed_from, end):
        set_seed(seed * 1_000_003 + epoch)  # any global draw is a function of (seed, epoch) too
        history.records.append(one_epoch(epoch))
        if (epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs:
            checkpoints.save(epoch + 1)
    return resumed_from


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
