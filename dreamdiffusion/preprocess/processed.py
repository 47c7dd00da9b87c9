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

import math
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from dreamdiffusion.core.fileio import DeferredErrorFile
from dreamdiffusion.core.hdf5 import Field, open_h5, read_strings

SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "extra": 3}
UNUSED = -1
STR = h5py.string_dtype("utf-8")
# the layouts of the module docstring, checked by `open_h5` before anything is read
IMAGES_SCHEMA = {"images": Field("uint8", 4, "image", (None, None, 3)), "image_names": Field("str", 1, "image"),
                 "labels": Field("int", 1, "image"), "split": Field("int", 1, "image"),
                 "class_names": Field("str", 1, "class"), "captions": Field("str", 1, "class")}
PAIRED_SCHEMA = {"eeg": Field("float32", 3, "trial"), **{key: Field("int", 1, "trial") for key in
                                                          ("label", "image_index", "subject", "trial", "split")},
                 "class_names": Field("str", 1)}
CORPUS_SCHEMA = {"eeg": Field("float32", 3, "window"), "recording": Field("int", 1, "window"),
                 "recordings": Field("str", 1, "recording"), "sources": Field("str", 1, "recording")}


def split_code(name: str) -> int:
    """Integer code of a split name ('train' | 'val' | 'test' | 'extra')."""
    if name not in SPLIT_CODES:
        raise ValueError(f"split {name!r} is not one of {list(SPLIT_CODES)}")
    return SPLIT_CODES[name]


def write_h5(path: str | Path, arrays: dict[str, np.ndarray], attrs: dict | None = None,
             chunk_first: tuple[str, ...] = ()) -> None:
    """Write arrays to a new HDF5 file at `path` (deterministic; `chunk_first` chunk per row)."""
    with H5Writer(path, attrs) as writer:
        for key, value in arrays.items():
            writer.put(key, value, chunk_rows=key in chunk_first)


class H5Writer:
    """A new HDF5 file written deterministically (no timestamps); row datasets can be filled
    or grown a batch at a time, so a large set never has to sit in memory at once. Every numeric
    dataset is chunked with a Fletcher-32 checksum per chunk: a changed byte fails the read
    (`H5Array` turns that into a DataError naming the file) instead of passing as a number.
    HDF5 writes through a `DeferredErrorFile`: a failed write (file size limit, full disk) is
    raised as an OSError naming the file by the next `put`/`append` or at the end, never a crash."""

    def __init__(self, path: str | Path, attrs: dict | None = None):
        self.file = DeferredErrorFile(path)
        self.handle = h5py.File(self.file, "w", track_order=False)
        for key, value in (attrs or {}).items():
            self.handle.attrs[key] = value

    def put(self, key: str, value, chunk_rows: bool = False) -> None:
        """A whole array (or list of strings) as dataset `key`."""
        self.file.raise_deferred()
        if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.dtype.kind in "OU"):
            self.handle.create_dataset(key, data=np.asarray(value, dtype=object), dtype=STR, track_times=False)
            return
        chunks = (1, *value.shape[1:]) if chunk_rows and len(value) else True if value.size else None
        self.handle.create_dataset(key, data=value, chunks=chunks, fletcher32=bool(chunks), track_times=False)

    def rows(self, key: str, shape: tuple[int, ...], dtype, growable: bool = False):
        """An empty dataset of `shape` chunked one row per chunk (growable: the first axis may grow)."""
        maxshape = (None, *shape[1:]) if growable else None
        return self.handle.create_dataset(key, shape=shape, dtype=dtype, chunks=(1, *shape[1:]), maxshape=maxshape,
                                          fletcher32=True, track_times=False)

    def append(self, key: str, rows: np.ndarray) -> None:
        """Append rows to the growable dataset `key` (see `rows`)."""
        self.file.raise_deferred()
        dataset = self.handle[key]
        start = dataset.shape[0]
        dataset.resize(start + len(rows), axis=0)
        dataset[start:] = rows

    def __enter__(self) -> "H5Writer":
        return self

    def __exit__(self, *exc) -> bool:
        try:
            self.handle.close()
        finally:
            self.file.close()
        if exc[0] is None:
            self.file.raise_deferred()
        return False


class H5Array:
    """A read-only, numpy-indexable view of one HDF5 dataset (optionally a subset of its rows)
    that reads rows from disk only when indexed: `view[i]`, `view[a:b]`, `view[int array]`."""

    def __init__(self, path: str | Path, key: str, rows: np.ndarray | None = None):
        self.path, self.key, self._file = Path(path), key, None
        with open_h5(self.path) as h5:
            full = h5[key].shape
            self.dtype = h5[key].dtype
        self.rows = np.arange(full[0]) if rows is None else np.asarray(rows, dtype=np.int64)
        self.shape = (len(self.rows), *full[1:])

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _dataset(self):
        if self._file is None:
            self._file = open_h5(self.path)
        return self._file[self.key]

    def _read(self, rows) -> np.ndarray:
        """File rows `rows` (an int or sorted ints); a failed checksum or read is a DataError naming the file."""
        try:
            return self._dataset()[rows] if isinstance(rows, int) else read_rows(self._dataset(), rows)
        except OSError as err:
            from dreamdiffusion.core.fileio import DataError

            raise DataError(f"{self.path}: cannot read '{self.key}' ({err}): the file is damaged; rerun the stage "
                            f"that wrote it") from None

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self._read(int(self.rows[index]))
        wanted = self.rows[index]  # slice or integer array -> file rows, in the caller's order
        if len(wanted) == 0:
            return np.empty((0, *self.shape[1:]), self.dtype)
        order = np.argsort(wanted, kind="stable")
        unique, inverse = np.unique(wanted[order], return_inverse=True)
        values = self._read(unique)[inverse]
        out = np.empty_like(values)
        out[order] = values
        return out

    def subset(self, index) -> "H5Array":
        """A view of some of this view's rows (nothing is read)."""
        view = H5Array.__new__(H5Array)
        view.__dict__.update(self.__getstate__())
        view.rows = self.rows[index]
        view.shape = (len(view.rows), *self.shape[1:])
        return view

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        values = self[:]
        return values if dtype is None else values.astype(dtype)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}  # an open h5py file cannot be pickled


def read_processed(loader, path: str | Path, **kwargs):
    """`loader(path, **kwargs)`, a missing or malformed processed file turned into a DataError naming it."""
    try:
        return loader(path, **kwargs)
    except (OSError, KeyError) as err:
        from dreamdiffusion.core.fileio import DataError

        raise DataError(f"{path}: cannot read ({err}); run the `preprocess` stage first") from None


def preload(array, max_mib: float):
    """`array` read into memory when it takes at most `max_mib` MiB, else unchanged. Training reads
    every row once per epoch; from memory that is free, from eeg.h5 / corpus.h5 each row is a
    checksummed chunk read (~0.6 ms for a 128 x 512 window on 2 cores)."""
    if not isinstance(array, H5Array) or math.prod(array.shape) * array.dtype.itemsize > max_mib * 2**20:
        return array
    return array[:]


def take(array, rows):
    """`array[rows]`, lazily for an on-disk `H5Array` (a view), eagerly for a numpy array."""
    return array.subset(rows) if isinstance(array, H5Array) else array[rows]


@dataclass
class ImageSet:
    """Contents of images.h5; `images` is read from disk row by row as it is indexed."""

    images: np.ndarray | H5Array  # (N, H, W, 3) uint8
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
    with open_h5(path, IMAGES_SCHEMA) as h5:
        return ImageSet(
            images=H5Array(path, "images"), image_names=read_strings(h5["image_names"]),
            labels=h5["labels"][()].astype(np.int64), split=h5["split"][()].astype(np.int8),
            class_names=read_strings(h5["class_names"]), captions=read_strings(h5["captions"]),
        )


@dataclass
class PairedEEG:
    """Contents of eeg.h5; `eeg` is read from disk row by row as it is indexed."""

    eeg: np.ndarray | H5Array  # (N, 128, 512) float32
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
    """Read eeg.h5's index arrays; the EEG is read lazily. With `splits`, only the rows of those
    splits can be read at all (so a stage that must not see the test split never loads it)."""
    with open_h5(path, PAIRED_SCHEMA) as h5:
        split = h5["split"][()].astype(np.int8)
        rows = np.arange(len(split)) if splits is None else np.flatnonzero(np.isin(split, [split_code(s) for s in splits]))
        return PairedEEG(
            eeg=H5Array(path, "eeg", rows), label=h5["label"][rows], image_index=h5["image_index"][rows],
            subject=h5["subject"][rows], trial=h5["trial"][rows], split=split[rows],
            class_names=read_strings(h5["class_names"]),
        )


@dataclass
class Corpus:
    """Contents of corpus.h5; `eeg` is read from disk row by row as it is indexed."""

    eeg: np.ndarray | H5Array  # (M, 128, 512) float32
    recording: np.ndarray  # (M,) int64
    recordings: list[str]
    sources: list[str]


def load_corpus(path: str | Path) -> Corpus:
    """Read corpus.h5."""
    with open_h5(path, CORPUS_SCHEMA) as h5:
        return Corpus(
            eeg=H5Array(path, "eeg"), recording=h5["recording"][()],
            recordings=read_strings(h5["recordings"]), sources=read_strings(h5["sources"]),
        )
