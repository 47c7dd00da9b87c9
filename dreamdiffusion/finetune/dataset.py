"""Fine-tuning data: in memory when it is small, read from disk per item when it is not.

Each distinct image is encoded once (VAE posterior mean/std, unit CLIP image embedding), in
batches, into an HDF5 file keyed by the models and the images it was computed from. A trial's EEG
and features come from eeg.h5 and that file, read into memory first when each array fits under
`compute.preload_mib`, else read when its batch is drawn. No per-trial copy of an image exists.

    features.h5
        rows          int64   [U]             rows of images.h5, sorted
        latent_mean   float32 [U, c, h, w]    VAE posterior mean (unscaled)
        latent_std    float32 [U, c, h, w]
        clip          float32 [U, E]          unit-norm CLIP image embedding
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from dreamdiffusion.core.fileio import DataError, atomic_path, sha256_file
from dreamdiffusion.core.hdf5 import Field, open_h5
from dreamdiffusion.finetune.budget import budget_rows
from dreamdiffusion.foundation.images import to_float_images
from dreamdiffusion.preprocess.processed import H5Array, H5Writer, preload

FEATURES_VERSION = "1"
FEATURES_SCHEMA = {"rows": Field("int", 1, "image"), "latent_mean": Field("float32", 4, "image"),
                   "latent_std": Field("float32", 4, "image"), "clip": Field("float32", 2, "image")}


def features_key(foundation_root: Path, images_sha256: str, rows: np.ndarray) -> str:
    """Names a features file: the foundation's manifest (its files' sha256s), the images, the rows."""
    digest = hashlib.sha256(FEATURES_VERSION.encode())
    digest.update(sha256_file(Path(foundation_root) / "manifest.json").encode())
    digest.update(images_sha256.encode())
    digest.update(np.asarray(rows, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def encode_batch(foundation, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (B, 3, H, W) in [0, 1] on the models' device -> posterior mean, std (B, c, h, w), CLIP (B, E)."""
    posterior = foundation.vae.encode(pixels * 2 - 1).latent_dist
    clip = F.normalize(foundation.clip.encode_image(foundation.clip_transform(pixels)).float(), dim=-1)
    return posterior.mean.float(), posterior.std.float(), clip


def write_features(foundation, images, rows: np.ndarray, batch_size: int, path: Path) -> None:
    """Encode image rows `rows` of `images` (N, H, W, 3) uint8, `batch_size` at a time, into `path`."""
    size = foundation.image_size
    if tuple(images.shape[1:3]) != (size, size):
        raise DataError(f"images.h5 holds {images.shape[1]} px images, the foundation works at {size} px: "
                        f"set preprocess.image_size: {size}")
    device = next(foundation.vae.parameters()).device
    with H5Writer(path) as writer:
        writer.put("rows", np.asarray(rows, dtype=np.int64))
        for start in range(0, len(rows), batch_size):
            part = rows[start : start + batch_size]
            mean, std, clip = encode_batch(foundation, to_float_images(images[part]).to(device))
            for key, value in (("latent_mean", mean), ("latent_std", std), ("clip", clip)):
                if start == 0:
                    writer.rows(key, (len(rows), *value.shape[1:]), np.float32)
                writer.handle[key][start : start + len(part)] = value.cpu().numpy()


def cached_features(cache_dir: Path, key: str, write) -> Path:
    """`cache_dir/<key>.h5`, written by `write(temp_path)` first if it is not there yet."""
    path = Path(cache_dir) / f"{key}.h5"
    if not path.is_file():
        with atomic_path(path) as tmp:
            write(tmp)
    return path


@dataclass
class ImageFeatures:
    """A features file opened once for every trial set: its image rows and its arrays, each in memory
    when it takes at most `preload_mib` MiB (`load_features`), else read from disk per item."""

    path: Path
    rows: np.ndarray  # rows of images.h5, sorted
    arrays: list  # latent_mean, latent_std, clip


def load_features(path: Path, preload_mib: float = 0) -> ImageFeatures:
    """Open a features file (see the module docstring)."""
    with open_h5(path, FEATURES_SCHEMA) as h5:
        rows = h5["rows"][()]
    arrays = [preload(H5Array(path, key), preload_mib) for key in ("latent_mean", "latent_std", "clip")]
    return ImageFeatures(Path(path), rows, arrays)


class PairedTrials(Dataset):
    """Trial i -> (trial id, EEG (128, L), latent mean, latent std (c, h, w), CLIP target (E,), label).

    `eeg` is read into memory when it takes at most `preload_mib` MiB, else read from disk per item."""

    def __init__(self, eeg, trial: np.ndarray, image_index: np.ndarray, label: np.ndarray, features: ImageFeatures,
                 preload_mib: float = 0):
        self.trial, self.label, self.features = np.asarray(trial), np.asarray(label), features
        cached = features.rows
        position = np.searchsorted(cached, image_index)
        if (position >= len(cached)).any() or (cached[np.minimum(position, len(cached) - 1)] != image_index).any():
            raise DataError(f"{features.path}: lacks features of some images of these trials")
        self.position, self.eeg = position, preload(eeg, preload_mib)

    def __len__(self) -> int:
        return len(self.trial)

    def __getitem__(self, i: int):
        row = int(self.position[i])
        item = [torch.from_numpy(np.asarray(array[row])) for array in self.features.arrays]
        eeg = torch.from_numpy(np.ascontiguousarray(self.eeg[i], dtype=np.float32))
        return int(self.trial[i]), eeg, *item, int(self.label[i])


@dataclass
class FinetuneData:
    """What one fine-tuning run reads: train and val trials, and the val trials whose generated
    images are judged (`probe_rows`, positions in `val`) with the judge's class of their ground truth."""

    train: PairedTrials
    val: PairedTrials
    probe_rows: np.ndarray
    probe_true: np.ndarray


def finetune_data(paired, features: Path, image_set, foundation, config, preload_mib: float = 0,
                  seed: int = 0) -> FinetuneData:
    """Train trials (the `config.train_fraction` label budget of the train split, fixed by `seed`) and val
    trial sets over `features` (in memory up to `preload_mib` MiB per array), and the `config.val_trials`
    val trials (evenly spaced) that validation generates from, with the judge's class of their ground truth."""
    from dreamdiffusion.core.nway import true_classes_from
    from dreamdiffusion.foundation.judge import predict
    from dreamdiffusion.preprocess.processed import take

    image_features = load_features(features, preload_mib)  # one copy for the train and the val trials

    def trials(rows):
        return PairedTrials(take(paired.eeg, rows), paired.trial[rows], paired.image_index[rows], paired.label[rows],
                            image_features, preload_mib)

    train, val = paired.subset("train"), paired.subset("val")
    train = train[budget_rows(paired.label[train], paired.trial[train], config.train_fraction, seed)]
    if len(val) == 0:
        raise DataError("eeg.h5 has no val trials: validation (and so model selection) needs some")
    probe = np.linspace(0, len(val) - 1, min(config.val_trials, len(val))).round().astype(int)
    truth = to_float_images(image_set.images[paired.image_index[val][probe]])
    logits = predict(foundation.judge, foundation.judge_transform, truth, config.val_batch_size)
    return FinetuneData(trials(train), trials(val), probe, true_classes_from(logits.numpy()))
