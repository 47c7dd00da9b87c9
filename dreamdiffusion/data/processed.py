"""The processed-data files (HDF5) that `preprocess` writes and later stages read.

Three files, kept apart so that a stage re-runs only when what it reads changes:

images.h5  (read by `foundation`; independent of every EEG param)
    images       uint8  [N_img, H, W, 3]
    image_names  str    [N_img]         names as in the EEG file's `images` list, same order
    labels       int64  [N_img]         class index of each image
    split        int8   [N_img]         SPLIT_CODES: 0 train, 1 val, 2 test, 3 extra, -1 unused
                                        (extra: in the image folder but never shown in the EEG
                                        experiment, e.g. the synthetic world's foundation corpus;
                                        unused: a stimulus whose trials were all filtered out)
    class_names  str    [C]             WordNet ids (or synthetic ids), indexed by label
    captions     str    [C]             one caption per class

eeg.h5  (paired trials: read by `pretrain` probe, `finetune`, `generate`, `evaluate`)
    eeg          float32 [N, 128, 512]  chunked one trial per chunk
    label        int64  [N]
    image_index  int64  [N]             row in images.h5
    subject      int64  [N]
    trial        int64  [N]             index into the source file's `dataset` list
    split        int8   [N]             0 train, 1 val, 2 test
    class_names  str    [C]

corpus.h5  (unlabeled pretraining windows: read by `pretrain`)
    eeg          float32 [M, 128, 512]
    recording    int64  [M]             row in `recordings`
    recordings   str    [R]             '<source>/<recording id>'
    sources      str    [R]             source of each recording ('synthetic', 'paired-train', 'moabb:<name>')

Files are written deterministically (no HDF5 timestamps), so re-running `preprocess` with an
EEG-only change rewrites images.h5 byte for byte and DVC does not re-run `foundation`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "extra": 3}
UNUSED = -1
STR = h5py.string_dtype("utf-8")


def split_code(name: str) -> int:
    """Integer code of a split name ('train' | 'val' | 'test' | 'extra')."""
    if name not in SPLIT_CODES:
        raise ValueError(f"split {name!r} is not one of {list(SPLIT_CODES)}")
    return SPLIT_CODES[name]


def write_h5(path: str | Path, arrays: dict[str, np.ndarray], attrs: dict | None = None,
             chunk_first: tuple[str, ...] = ()) -> None:
    """Write arrays to a new HDF5 file at `path` (deterministic; `chunk_first` chunk per row)."""
    with h5py.File(path, "w", track_order=False) as handle:
        for key, value in arrays.items():
            if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.dtype.kind in "OU"):
                handle.create_dataset(key, data=np.asarray(value, dtype=object), dtype=STR, track_times=False)
                continue
            chunks = (1, *value.shape[1:]) if key in chunk_first and len(value) else None
            handle.create_dataset(key, data=value, chunks=chunks, track_times=False)
        for key, value in (attrs or {}).items():
            handle.attrs[key] = value


def _strings(dataset) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in dataset[()]]


@dataclass
class ImageSet:
    """Contents of images.h5, fully in memory (the image sets here are small)."""

    images: np.ndarray  # (N, H, W, 3) uint8
    image_names: list[str]
    labels: np.ndarray  # (N,) int64
    split: np.ndarray  # (N,) int8
    class_names: list[str]
    captions: list[str]

    def subset(self, *splits: str) -> np.ndarray:
        """Row indices of the images in any of `splits`."""
        return np.flatnonzero(np.isin(self.split, [split_code(s) for s in splits]))


def load_images(path: str | Path) -> ImageSet:
    """Read images.h5."""
    with h5py.File(path, "r") as h5:
        return ImageSet(
            images=h5["images"][()], image_names=_strings(h5["image_names"]),
            labels=h5["labels"][()].astype(np.int64), split=h5["split"][()].astype(np.int8),
            class_names=_strings(h5["class_names"]), captions=_strings(h5["captions"]),
        )


@dataclass
class PairedEEG:
    """Contents of eeg.h5; `eeg` is loaded eagerly (N x 128 x 512 float32 fits in memory here)."""

    eeg: np.ndarray  # (N, 128, 512) float32
    label: np.ndarray
    image_index: np.ndarray
    subject: np.ndarray
    trial: np.ndarray
    split: np.ndarray
    class_names: list[str]

    def subset(self, split: str) -> np.ndarray:
        """Row indices of the trials in `split`."""
        return np.flatnonzero(self.split == split_code(split))


def read_rows(dataset, rows) -> np.ndarray:
    """`dataset[rows]` for sorted row indices, read as contiguous runs (one slice per run):
    h5py's point selection reads row by row and is ~5x slower on eeg.h5."""
    if isinstance(rows, slice) or len(rows) == 0:
        return dataset[rows]
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts, ends = np.r_[0, breaks], np.r_[breaks, len(rows)]
    return np.concatenate([dataset[rows[a]: rows[b - 1] + 1] for a, b in zip(starts, ends)])


def load_paired_eeg(path: str | Path, splits: tuple[str, ...] | None = None) -> PairedEEG:
    """Read eeg.h5; with `splits`, only the rows of those splits are read from disk at all
    (so a stage that must not see the test split never loads it)."""
    with h5py.File(path, "r") as h5:
        split = h5["split"][()].astype(np.int8)
        rows = slice(None) if splits is None else np.flatnonzero(np.isin(split, [split_code(s) for s in splits]))
        return PairedEEG(
            eeg=read_rows(h5["eeg"], rows), label=h5["label"][rows], image_index=h5["image_index"][rows],
            subject=h5["subject"][rows], trial=h5["trial"][rows], split=split[rows],
            class_names=_strings(h5["class_names"]),
        )


@dataclass
class Corpus:
    """Contents of corpus.h5."""

    eeg: np.ndarray  # (M, 128, 512) float32
    recording: np.ndarray  # (M,) int64
    recordings: list[str]
    sources: list[str]


def load_corpus(path: str | Path) -> Corpus:
    """Read corpus.h5."""
    with h5py.File(path, "r") as h5:
        return Corpus(
            eeg=h5["eeg"][()], recording=h5["recording"][()],
            recordings=_strings(h5["recordings"]), sources=_strings(h5["sources"]),
        )
