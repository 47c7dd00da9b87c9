"""What the real-scale pipelines share: a free-disk check and the params that fit them on 2 CPU cores."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def require_free_disk(folder: Path, gib: float, what: str) -> None:
    """Fail at once, naming the need, when the disk of `folder` has less than `gib` GiB free (rather than
    with ENOSPC deep inside a stage, as `make test-realscale` would on a full disk)."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free / 2**30
    if free < gib:
        pytest.fail(f"{what} need about {gib} GiB free on the disk of {folder}; {free:.1f} GiB are free")


def realscale_overrides(sources: dict) -> dict:
    """params overrides of a real-scale pipeline on 2 CPU cores: the local real-shape `sources`, fp32, one
    epoch of a few trials, two sampling steps; every model shape stays the real one."""
    return {
        "compute": {"device": "cpu"},
        "foundation": {"source": "pretrained",
                       "pretrained": {"stable_diffusion": str(sources["stable_diffusion"]),
                                      "clip_pretrained": str(sources["clip"]), "judge_weights": str(sources["judge"]),
                                      "judge_image_size": 224, "inception_weights": str(sources["inception"])},
                       "sample": {"per_class": 1, "grid_per_class": 1, "inference_steps": 2, "batch_size": 2}},
        "pretrain": {"epochs": 1, "batch_size": 2, "mixed_precision": "fp32", "checkpoint_every": 1,
                     "probe_batch_size": 4},
        "finetune": {"epochs": 1, "align_epochs": 0, "batch_size": 2, "mixed_precision": "fp32", "val_every": 1,
                     "val_trials": 2, "val_steps": 2, "encode_batch_size": 4, "val_batch_size": 2,
                     "checkpoint_every": 1},
        "generate": {"samples_per_eeg": 2, "steps": 2, "batch_size": 4, "decode_batch_size": 2,
                     "mixed_precision": "fp32"},
        "evaluate": {"nway_draws": 5, "batch_size": 4, "kid_subset_size": 2, "fidelity_batch_size": 4},
    }
