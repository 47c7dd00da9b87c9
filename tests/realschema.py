"""Build a tiny EEG-ImageNet set in the exact real schema (Spampinato et al., CVPR 2017), for tests.

    paths = make_real_schema_set(tmp_path)       # {'eeg_file', 'splits_file', 'images_dir'}
    payload = read_eeg_file(paths["eeg_file"])   # break one thing ...
    payload["dataset"][3]["eeg"][0, 0] = float("nan")
    write_eeg_file(paths["eeg_file"], payload)   # ... and write it back

Trials: every image is shown once to every subject, class by class (block design). Images are
small random-colour JPEGs named `<wnid>_<number>` under `<images_dir>/<wnid>/`. The split is
by image: per class the images go to train / val / test, never to two parts.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from PIL import Image

EEG_NAME = "eeg_5_95_std.pth"
SPLITS_NAME = "block_splits_by_image_all.pth"


def wnids(classes: int) -> list[str]:
    """WordNet-style class ids `n0xxxxxxx`, distinct and sorted."""
    return [f"n{2000000 + 1357 * k:08d}" for k in range(classes)]


def write_jpeg(path: Path, rng: np.random.Generator, size: int = 16) -> Path:
    """A small random-colour JPEG at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    return path


def write_eeg_file(path: Path, payload) -> Path:
    """torch.save an EEG payload (any object: tests write broken ones on purpose)."""
    torch.save(payload, path)
    return Path(path)


def write_splits_file(path: Path, payload) -> Path:
    """torch.save a split payload, e.g. {'splits': [{'train': [...], 'val': [...], 'test': [...]}]}."""
    torch.save(payload, path)
    return Path(path)


def read_eeg_file(path: Path) -> dict:
    """The payload of an EEG file, as a deep copy safe to modify."""
    return copy.deepcopy(torch.load(path, weights_only=True))


def read_splits_file(path: Path) -> dict:
    """The payload of a split file, as a deep copy safe to modify."""
    return copy.deepcopy(torch.load(path, weights_only=True))


def make_payload(*, classes=3, images_per_class=4, subjects=2, T=500, T_jitter=0, seed=0) -> dict:
    """The EEG payload {'dataset', 'labels', 'images'}; T varies by +-T_jitter when given."""
    rng = np.random.default_rng(seed)
    labels = wnids(classes)
    images = [f"{wnid}_{1000 + 37 * j}" for wnid in labels for j in range(images_per_class)]
    dataset = []
    for subject in range(1, subjects + 1):
        for image, name in enumerate(images):
            length = T + int(rng.integers(-T_jitter, T_jitter + 1)) if T_jitter else T
            eeg = torch.from_numpy(rng.standard_normal((128, length), dtype=np.float32))
            dataset.append({"eeg": eeg, "image": image, "label": image // images_per_class,
                            "subject": subject})
    return {"dataset": dataset, "labels": labels, "images": images}


def split_by_image(payload: dict, images_per_class: int) -> dict:
    """{'splits': [split]}: per class, the last image is test, the one before val, the rest train."""
    def part(image: int) -> str:
        rank = image % images_per_class
        return "test" if rank == images_per_class - 1 else "val" if rank == images_per_class - 2 \
            else "train"
    split = {"train": [], "val": [], "test": []}
    for i, trial in enumerate(payload["dataset"]):
        split[part(trial["image"])].append(i)
    return {"splits": [split]}


def make_real_schema_set(root: Path, *, classes=3, images_per_class=4, subjects=2, T=500,
                         T_jitter=0, seed=0) -> dict:
    """Write a valid tiny set under `root`; return {'eeg_file', 'splits_file', 'images_dir'}."""
    if images_per_class < 3:
        raise ValueError("images_per_class must be >= 3 (one image each for train, val, test)")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    payload = make_payload(classes=classes, images_per_class=images_per_class, subjects=subjects,
                           T=T, T_jitter=T_jitter, seed=seed)
    paths = {"eeg_file": root / EEG_NAME, "splits_file": root / SPLITS_NAME,
             "images_dir": root / "images"}
    write_eeg_file(paths["eeg_file"], payload)
    write_splits_file(paths["splits_file"], split_by_image(payload, images_per_class))
    rng = np.random.default_rng(seed + 1)
    for image, name in enumerate(payload["images"]):
        wnid = payload["labels"][image // images_per_class]
        write_jpeg(paths["images_dir"] / wnid / f"{name}.JPEG", rng)
    return paths


def image_file(paths: dict, image: int) -> Path:
    """Where image number `image` of a set lives (`<images_dir>/<wnid>/<name>.JPEG`)."""
    payload = torch.load(paths["eeg_file"], weights_only=True)
    label = next(t["label"] for t in payload["dataset"] if t["image"] == image)
    return Path(paths["images_dir"]) / payload["labels"][label] / f"{payload['images'][image]}.JPEG"
