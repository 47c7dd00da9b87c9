"""Readers of THINGS-EEG2's preprocessed EEG, exactly as published, refusing anything else.

THINGS-EEG2 (Gifford et al., "A large and rich EEG dataset for modeling human visual object
recognition", NeuroImage 2022; OSF project 3jk45, CC-BY 4.0): per subject, `sub-XX/` holds

    preprocessed_eeg_training.npy   (16540, 4, C, T): image condition x repetition x channel x time
    preprocessed_eeg_test.npy       (200, 80, C, T)

each one dict with the keys `preprocessed_eeg_data` (float64), `ch_names` (list of str) and `times`
(seconds). Training row i is image i of `image_metadata.npy` (things_eeg2_images.py). Two variants:

- official (gifale95/eeg_encoding, 02_eeg_preprocessing): `np.save` of the dict; the 17 occipital and
  parietal channels (regex '^O *|^P *'), epochs -0.2..0.8 s at 100 Hz: T = 100, `times` the same 100 points;
- 250 Hz (eeyhsong/NICE-EEG preprocessing/preprocessing_utils.py, the files NICE, ATM and UBP read):
  `pickle.dump` (protocol 4) of the dict under the same names; 63 channels in NICE's `chan_order`, epochs
  -0.2..1.0 s at 250 Hz of which the data keeps samples 50.. (0..0.996 s, T = 250), while `times` keeps
  all 300 points of the epoch.

Both are pickles. They are unpickled by the restricted unpickler of core/unpickle.py (numpy arrays,
dtypes, plain containers; a reduce to anything else is refused, never called), from a stream that can
never read past the file's end, and an array's declared shape must match the data that the file holds,
so what a file makes us allocate is bounded by its size (itself bounded, `Limits`). Every refusal is a
DataError naming the file, the key, and the expected and found shape, dtype or value.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dreamdiffusion.core.fileio import DataError, plain_name
from dreamdiffusion.core.unpickle import BoundedReader, RestrictedUnpickler, refusals

EEG_FILES = {"training": "preprocessed_eeg_training.npy", "test": "preprocessed_eeg_test.npy"}
EEG_KEYS = ("preprocessed_eeg_data", "ch_names", "times")
NPY_MAGIC = b"\x93NUMPY"
# the 17 channels of the official files (regex '^O *|^P *' over the 63-channel cap), in the cap's order
OCCIPITAL_PARIETAL = ("P7", "P5", "P3", "P1", "Pz", "P2", "P4", "P6", "P8", "PO7", "PO3", "POz", "PO4", "PO8",
                      "O1", "Oz", "O2")
# NICE-EEG's `chan_order` (preprocessing_utils.py): every EEG channel of the cap, picked in this order
ALL_63 = ("Fp1", "Fp2", "AF7", "AF3", "AFz", "AF4", "AF8", "F7", "F5", "F3", "F1", "F2", "F4", "F6", "F8", "FT9",
          "FT7", "FC5", "FC3", "FC1", "FCz", "FC2", "FC4", "FC6", "FT8", "FT10", "T7", "C5", "C3", "C1", "Cz",
          "C2", "C4", "C6", "T8", "TP9", "TP7", "CP5", "CP3", "CP1", "CPz", "CP2", "CP4", "CP6", "TP8", "TP10",
          *OCCIPITAL_PARIETAL)


@dataclass(frozen=True)
class Counts:
    """How many concepts, images and repetitions a THINGS-EEG2 set has (the published set by default)."""

    train_concepts: int = 1654
    images_per_concept: int = 10
    test_concepts: int = 200  # one image each, none of them a training concept
    train_repetitions: int = 4
    test_repetitions: int = 80

    def conditions(self, partition: str) -> tuple[int, int]:
        """(image conditions, repetitions) of 'training' or 'test'."""
        if partition == "training":
            return self.train_concepts * self.images_per_concept, self.train_repetitions
        return self.test_concepts, self.test_repetitions


@dataclass(frozen=True)
class EegLayout:
    """What the preprocessed files of one variant hold."""

    name: str
    channels: tuple[str, ...]
    ordered: bool  # the file lists `channels` in exactly this order (else: the same set, any order)
    sfreq: float  # Hz
    n_times: int  # samples kept per trial
    times_skip: int  # entries of `times` before the first kept sample
    tmin: float = -0.2  # seconds, the first entry of `times`
    counts: Counts = Counts()

    def shape(self, partition: str) -> tuple[int, int, int, int]:
        """(N, R, C, T) of the file of `partition`."""
        return (*self.counts.conditions(partition), len(self.channels), self.n_times)

    def with_counts(self, counts: Counts) -> "EegLayout":
        """The same variant for a set of another size (the synthetic twin)."""
        return replace(self, counts=counts)


OFFICIAL = EegLayout("official 17 channels, 100 Hz", OCCIPITAL_PARIETAL, ordered=False, sfreq=100.0, n_times=100,
                     times_skip=0)
NICE_250HZ = EegLayout("NICE/ATM/UBP 63 channels, 250 Hz", ALL_63, ordered=True, sfreq=250.0, n_times=250,
                       times_skip=50)
LAYOUTS = {"official": OFFICIAL, "nice": NICE_250HZ}


@dataclass(frozen=True)
class Limits:
    """Bounds on what a file can make a reader allocate."""

    max_file_bytes: int = 16 << 30  # the largest published file, 63-channel float64 training, is 8.3 GB


@dataclass
class EegPartition:
    """One checked file of preprocessed EEG."""

    path: Path
    data: np.ndarray  # (N, R, C, T) float32
    ch_names: tuple[str, ...]  # (C,) in the file's order
    times: np.ndarray  # (T,) seconds of the kept samples


def _npy_object(handle, path: Path, size: int) -> Any:
    """The object an .npy file of one pickled object holds (np.save of a dict: a 0-d object array)."""
    from numpy.lib import format as npy

    version = npy.read_magic(handle)
    read = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
    if read is None:
        raise DataError(f"{path}: .npy format version {version} is not supported")
    shape, _fortran, dtype = read(handle)
    if not dtype.hasobject or shape != ():
        raise DataError(f"{path}: expected np.save of a dict (a 0-d object array), found an array of shape "
                        f"{shape} dtype {dtype}")
    array = RestrictedUnpickler(BoundedReader(handle, size - handle.tell())).load()
    if not isinstance(array, np.ndarray) or array.shape != () or not array.dtype.hasobject:
        raise DataError(f"{path}: the pickle holds {type(array).__name__}, expected a 0-d object array")
    return array.item()


def read_pickled_dict(path: str | Path, limits: Limits = Limits()) -> dict:
    """The dict in an `np.save`d or `pickle.dump`ed file, without running code, bounded by `limits`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise DataError(f"{path}: {size} bytes, above the limit of {limits.max_file_bytes} bytes")
    with open(path, "rb") as handle, refusals(path, "THINGS-EEG2 file (np.save or pickle of a dict)"):
        if handle.read(len(NPY_MAGIC)) == NPY_MAGIC:
            handle.seek(0)
            value = _npy_object(handle, path, size)
        else:
            handle.seek(0)
            value = RestrictedUnpickler(BoundedReader(handle, size)).load()
    if type(value) is not dict or not all(isinstance(k, str) for k in value):
        raise DataError(f"{path}: expected a dict with str keys, found {type(value).__name__}")
    return value


def check_keys(path: Path, found: dict, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """Refuse a missing or an unknown key, naming it."""
    missing = [k for k in required if k not in found]
    if missing:
        raise DataError(f"{path}: key {missing[0]!r} is missing (expected keys {list(required)})")
    unknown = sorted(set(found) - set(required) - set(optional))
    if unknown:
        raise DataError(f"{path}: unknown key {unknown[0]!r} (expected keys {list(required + optional)})")


def _describe(value: Any) -> str:
    """Shape and dtype of an array, else its type."""
    if isinstance(value, np.ndarray):
        return f"shape {value.shape} dtype {value.dtype}"
    return f"a {type(value).__name__}"


def float_array(path: Path, key: str, value: Any, shape: tuple) -> np.ndarray:
    """`value` as float32 if it is a float16/32/64 array of `shape` with finite values, else a DataError."""
    if not (isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.shape == shape):
        raise DataError(f"{path}: key {key!r}: expected shape {shape} dtype float16/float32/float64, found "
                        f"{_describe(value)}")
    with np.errstate(over="ignore"):  # beyond float32: inf, refused below
        array = value.astype(np.float32)
    for start in range(0, len(array), 1024):  # bounded temporaries
        bad = np.argwhere(~np.isfinite(array[start:start + 1024]))
        if len(bad):
            index = (start + int(bad[0][0]), *map(int, bad[0][1:]))
            raise DataError(f"{path}: key {key!r}: non-finite value at index {index} (or beyond the float32 range)")
    return array


def check_channels(path: Path, names: Any, layout: EegLayout) -> tuple[str, ...]:
    """The channel names, if they are `layout.channels` (in its order when `layout.ordered`)."""
    what = f"{path}: key 'ch_names'"
    if not isinstance(names, list) or len(names) != len(layout.channels):
        shown = len(names) if isinstance(names, list) else type(names).__name__
        raise DataError(f"{what}: expected a list of {len(layout.channels)} channel names ({layout.name}), "
                        f"found {shown}")
    names = tuple(plain_name(n, f"{what} item {i}") for i, n in enumerate(names))
    if set(names) != set(layout.channels) or len(set(names)) != len(names):
        odd = sorted(set(names) ^ set(layout.channels)) or [n for n in names if names.count(n) > 1]
        raise DataError(f"{what}: expected the channels {list(layout.channels)} ({layout.name}); "
                        f"{odd[0]!r} is unexpected, missing or repeated")
    if layout.ordered and names != layout.channels:
        raise DataError(f"{what}: expected the order {list(layout.channels)} ({layout.name}), found {list(names)}")
    return names


def check_times(path: Path, times: Any, layout: EegLayout) -> np.ndarray:
    """The times of the kept samples, (T,), if `times` starts at tmin and steps by 1/sfreq."""
    expected = layout.times_skip + layout.n_times
    times = float_array(path, "times", times, (expected,)).astype(np.float64)
    step = np.diff(times)
    if abs(times[0] - layout.tmin) > 0.25 / layout.sfreq or not np.allclose(step, 1 / layout.sfreq, rtol=1e-3):
        raise DataError(f"{path}: key 'times': expected {expected} points from {layout.tmin} s every "
                        f"{1 / layout.sfreq:g} s ({layout.name}), found {times[0]:g}..{times[-1]:g} s with steps "
                        f"{step.min():g}..{step.max():g} s")
    return times[layout.times_skip:]


def read_eeg(path: str | Path, layout: EegLayout, partition: str, limits: Limits = Limits()) -> EegPartition:
    """One preprocessed file (`partition` 'training' or 'test') of `layout`, checked."""
    if partition not in EEG_FILES:
        raise ValueError(f"partition must be one of {list(EEG_FILES)}, got {partition!r}")
    path = Path(path)
    found = read_pickled_dict(path, limits)
    check_keys(path, found, EEG_KEYS)
    names = check_channels(path, found["ch_names"], layout)
    times = check_times(path, found["times"], layout)
    data = float_array(path, "preprocessed_eeg_data", found.pop("preprocessed_eeg_data"), layout.shape(partition))
    return EegPartition(path, data, names, times)


def subject_folder(root: str | Path, subject: int) -> Path:
    """`<root>/sub-XX`, the folder of one subject's preprocessed files (subjects count from 1)."""
    if not 1 <= subject <= 99:
        raise ValueError(f"subject must be 1..99, got {subject}")
    return Path(root) / f"sub-{subject:02d}"


def read_subject(folder: str | Path, layout: EegLayout, limits: Limits = Limits()) -> dict[str, EegPartition]:
    """Both files of one subject's folder, checked; their channels and times must agree."""
    parts = {p: read_eeg(Path(folder) / name, layout, p, limits) for p, name in EEG_FILES.items()}
    train, test = parts["training"], parts["test"]
    if train.ch_names != test.ch_names or not np.array_equal(train.times, test.times):
        raise DataError(f"{test.path}: 'ch_names' or 'times' differ from those of {train.path}")
    return parts
