"""THINGS-EEG2's image set exactly as published: `image_metadata.npy` and the image folders, checked.

The image set of THINGS-EEG2 (Gifford et al., NeuroImage 2022; OSF project 3jk45) is

    training_images/<nnnnn_concept>/<file>.jpg    1654 concepts x 10 images (e.g. 00001_aardvark/aardvark_01b.jpg)
    test_images/<nnnnn_concept>/<file>.jpg        200 concepts x 1 image, none of them a training concept
    image_metadata.npy                            np.save of a dict of lists of str, one entry per image:
        train_img_concepts, train_img_files, test_img_concepts, test_img_files
        (and, in the published file, train_img_concepts_THINGS, test_img_concepts_THINGS: THINGS ids)

The sorted order of the folders and files is the order of the EEG's image conditions: training row i
is concept i // 10, exemplar i % 10 (gifale95/eeg_encoding; NICE-EEG, ATM and UBP index them so).
Every name read from the metadata must be one plain path component (no separator, no '..').
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dreamdiffusion.core.fileio import DataError, path_inside, plain_name
from dreamdiffusion.download.things_eeg2 import Counts, EegPartition, Limits, check_keys, read_pickled_dict

METADATA_FILE = "image_metadata.npy"
IMAGE_FOLDERS = {"training": "training_images", "test": "test_images"}
METADATA_KEYS = ("train_img_concepts", "train_img_files", "test_img_concepts", "test_img_files")
THINGS_KEYS = ("train_img_concepts_THINGS", "test_img_concepts_THINGS")
CONCEPT = re.compile(r"(\d{5})_(.+)")  # 00001_aardvark: its rank in the sorted folder, then its name
MAX_IMAGE_SIDE = 4096  # THINGS images are 500 x 500; a larger header is refused before decoding


@dataclass(frozen=True)
class ImageMetadata:
    """The checked metadata: one concept folder and one file name per image, in EEG condition order."""

    path: Path
    train_concepts: tuple[str, ...]  # (train_concepts * images_per_concept,)
    train_files: tuple[str, ...]
    test_concepts: tuple[str, ...]  # (test_concepts,)
    test_files: tuple[str, ...]

    def entries(self, partition: str) -> list[tuple[str, str]]:
        """(concept folder, file name) of every image of 'training' or 'test', in EEG condition order."""
        if partition == "training":
            return list(zip(self.train_concepts, self.train_files))
        return list(zip(self.test_concepts, self.test_files))


def _names(path: Path, key: str, value, length: int) -> tuple[str, ...]:
    """`value` if it is a list of `length` plain names, else a DataError naming the key."""
    if not isinstance(value, list) or len(value) != length:
        found = f"{len(value)} items" if isinstance(value, list) else f"a {type(value).__name__}"
        raise DataError(f"{path}: key {key!r}: expected a list of {length} names, found {found}")
    return tuple(plain_name(name, f"{path}: key {key!r} item {i}") for i, name in enumerate(value))


def _check_concepts(path: Path, key: str, concepts: tuple[str, ...], per_concept: int) -> list[str]:
    """The distinct concepts, if image i is in concept i // per_concept and they are numbered 1, 2, ..."""
    folders = list(concepts[::per_concept])
    for i, concept in enumerate(concepts):
        if concept != folders[i // per_concept]:
            raise DataError(f"{path}: key {key!r} item {i}: expected {folders[i // per_concept]!r} (image {i} is "
                            f"exemplar {i % per_concept} of concept {i // per_concept}), found {concept!r}")
    for k, folder in enumerate(folders):
        match = CONCEPT.fullmatch(folder)
        if not match or int(match[1]) != k + 1:
            raise DataError(f"{path}: key {key!r} item {k * per_concept}: expected a folder named "
                            f"'{k + 1:05d}_<concept>' (concept {k} in sorted order), found {folder!r}")
    return folders


def _check_files(path: Path, key: str, files: tuple[str, ...], per_concept: int) -> None:
    """Every file a .jpg, sorted and distinct within its concept (their sorted order is the EEG order)."""
    for i, name in enumerate(files):
        if not name.endswith(".jpg"):
            raise DataError(f"{path}: key {key!r} item {i}: expected a .jpg file name, found {name!r}")
        if i % per_concept and name <= files[i - 1]:
            raise DataError(f"{path}: key {key!r} item {i}: {name!r} does not sort after {files[i - 1]!r} "
                            "(the files of a concept are listed in sorted order)")


def _things_ids(path: Path, found: dict, lengths: dict[str, int]) -> None:
    """The optional THINGS ids, if present: one plain name per image."""
    for key in THINGS_KEYS:
        if key in found:
            _names(path, key, found[key], lengths[key])


def read_image_metadata(path: str | Path, counts: Counts = Counts(), limits: Limits = Limits()) -> ImageMetadata:
    """`image_metadata.npy`, checked against `counts` (the published set by default)."""
    path = Path(path)
    found = read_pickled_dict(path, limits)
    check_keys(path, found, METADATA_KEYS, THINGS_KEYS)
    n_train, n_test = counts.train_concepts * counts.images_per_concept, counts.test_concepts
    lengths = {"train_img_concepts": n_train, "train_img_files": n_train, "test_img_concepts": n_test,
               "test_img_files": n_test, THINGS_KEYS[0]: n_train, THINGS_KEYS[1]: n_test}
    names = {key: _names(path, key, found[key], lengths[key]) for key in METADATA_KEYS}
    _things_ids(path, found, lengths)
    train = _check_concepts(path, "train_img_concepts", names["train_img_concepts"], counts.images_per_concept)
    test = _check_concepts(path, "test_img_concepts", names["test_img_concepts"], 1)
    _check_files(path, "train_img_files", names["train_img_files"], counts.images_per_concept)
    _check_files(path, "test_img_files", names["test_img_files"], 1)
    shared = sorted({CONCEPT.fullmatch(c)[2] for c in train} & {CONCEPT.fullmatch(c)[2] for c in test})
    if shared:
        raise DataError(f"{path}: test concept {shared[0]!r} is also a training concept (test concepts must be unseen)")
    return ImageMetadata(path, *(names[key] for key in METADATA_KEYS))


def _listing(folder: Path) -> list[str]:
    """Sorted names in `folder`, hidden ones ('.DS_Store') left out."""
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _same_listing(folder: Path, found: list[str], expected: list[str], metadata: Path) -> None:
    """Refuse a folder whose sorted listing differs from what the metadata lists, naming the first difference."""
    if found != expected:
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        detail = f"{missing[0]!r} is missing" if missing else f"{extra[0]!r} is not listed" if extra else "order"
        raise DataError(f"{folder}: its sorted contents differ from {metadata}: {detail} "
                        f"(expected {len(expected)} entries, found {len(found)})")


def check_image_set(root: str | Path, metadata: ImageMetadata) -> dict[str, list[Path]]:
    """The image paths of 'training' and 'test' in EEG condition order, if `root`'s folders hold exactly them."""
    root, paths = Path(root), {}
    for partition, folder_name in IMAGE_FOLDERS.items():
        folder, entries = root / folder_name, metadata.entries(partition)
        files: dict[str, list[str]] = {}
        for concept, name in entries:
            files.setdefault(concept, []).append(name)
        _same_listing(folder, _listing(folder), list(files), metadata.path)
        for concept, names in files.items():
            _same_listing(folder / concept, _listing(folder / concept), names, metadata.path)
        paths[partition] = [path_inside(folder, concept, name, what=f"{metadata.path}: image of {partition}")
                            for concept, name in entries]
    return paths


def read_image(path: str | Path, max_side: int = MAX_IMAGE_SIDE) -> np.ndarray:
    """A JPEG stimulus as RGB uint8 (H, W, 3); its size is checked before it is decoded."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.format != "JPEG" or max(image.size) > max_side:
                raise DataError(f"{path}: expected a JPEG of at most {max_side} px a side, found {image.format} "
                                f"{image.size[0]} x {image.size[1]}")
            return np.asarray(image.convert("RGB"))
    except (OSError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: not a readable image ({err})") from None


def check_counts(metadata: ImageMetadata, eeg: dict[str, EegPartition]) -> None:
    """Refuse EEG whose image conditions are not the metadata's images, one for one."""
    for partition, part in eeg.items():
        listed = len(metadata.entries(partition))
        if part.data.shape[0] != listed:
            raise DataError(f"{part.path}: key 'preprocessed_eeg_data': {part.data.shape[0]} image conditions, "
                            f"but {metadata.path} lists {listed} {partition} images")
