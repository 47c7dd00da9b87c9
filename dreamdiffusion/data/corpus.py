"""The unlabeled pretraining corpus: recordings -> 128-channel, fixed-length windows.

Sources are folders of mne Raw FIF recordings (the synthetic corpus, MOABB exports, a user's
own) and, optionally, the TRAIN split of the paired data. Val/test trials can never enter:
`paired_train_windows` takes the split codes and keeps train rows only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import signal
from ..io import DataError
from .processed import SPLIT_CODES

PAIRED_TRAIN = "paired-train"


@dataclass(frozen=True)
class CorpusSettings:
    """How recordings become windows (the `corpus_*` params of `preprocess`)."""

    channels: int = 128
    samples: int = 512
    sample_rate: float = 1000.0
    bandpass: tuple[float, ...] = (5.0, 95.0)
    channel_mode: str = "tile"  # tile | zero | none
    scale: str = "zscore"  # none | zscore | divide
    divisor: float = 10.0
    stride: int = 512
    max_windows: int = 200  # per recording; 0 = all


@dataclass
class CorpusParts:
    """Windows collected so far, with their recording of origin."""

    windows: list[np.ndarray] = field(default_factory=list)
    recording: list[np.ndarray] = field(default_factory=list)
    recordings: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def add(self, windows: np.ndarray, name: str, source: str) -> None:
        """Append the (W, C, S) windows of one recording."""
        self.recording.append(np.full(len(windows), len(self.recordings), np.int64))
        self.windows.append(windows.astype(np.float32))
        self.recordings.append(name)
        self.sources.append(source)

    def arrays(self, settings: CorpusSettings) -> dict:
        """The corpus.h5 arrays."""
        empty = np.empty((0, settings.channels, settings.samples), np.float32)
        return dict(
            eeg=np.concatenate(self.windows) if self.windows else empty,
            recording=np.concatenate(self.recording) if self.recording else np.empty(0, np.int64),
            recordings=self.recordings, sources=self.sources,
        )


def scale_windows(windows: np.ndarray, settings: CorpusSettings) -> np.ndarray:
    """Amplitude normalisation of (W, C, S) windows."""
    if settings.scale == "zscore":
        return signal.zscore_channels(windows)
    if settings.scale == "divide":
        return windows / settings.divisor
    return windows


def pick_evenly(count: int, limit: int) -> np.ndarray:
    """`limit` indices spread evenly over range(count) (all when limit is 0 or >= count)."""
    if limit == 0 or count <= limit:
        return np.arange(count)
    return np.linspace(0, count - 1, limit).round().astype(np.int64)


def recording_windows(path: Path, settings: CorpusSettings) -> np.ndarray:
    """One FIF recording -> (W, channels, samples) windows: EEG channels, band-pass, resample,
    channel mapping, windowing, scaling."""
    import mne

    try:
        raw = mne.io.read_raw_fif(path, preload=True, verbose="error")
    except Exception as err:
        raise DataError(f"{path}: not a readable FIF recording ({err})") from None
    picks = mne.pick_types(raw.info, eeg=True, exclude="bads")
    if len(picks) == 0:
        raise DataError(f"{path}: recording has no EEG channels")
    raw.pick(picks)
    eeg = raw.get_data()  # (C, T) volts
    if not np.isfinite(eeg).all():
        raise DataError(f"{path}: recording contains NaN or Inf samples")
    if settings.bandpass:
        eeg = signal.bandpass(eeg, raw.info["sfreq"], *settings.bandpass)
    if raw.info["sfreq"] != settings.sample_rate:
        eeg = mne.filter.resample(eeg, up=settings.sample_rate, down=raw.info["sfreq"], verbose="error")
    try:
        eeg = signal.map_channels(eeg, settings.channels, settings.channel_mode)
    except ValueError as err:
        raise DataError(f"{path}: {err} (preprocess.corpus_channels)") from None
    cut = signal.windows(eeg, settings.samples, settings.stride)
    cut = cut[pick_evenly(len(cut), settings.max_windows)]
    return scale_windows(cut, settings)


def folder_windows(folder: Path, source: str, parts: CorpusParts, settings: CorpusSettings) -> None:
    """Add every `*.fif` recording of `folder` (sorted) to `parts`."""
    files = sorted(folder.rglob("*.fif"))
    if not files:
        raise DataError(f"{folder}: corpus source {source!r} has no .fif recordings")
    for path in tqdm(files, desc=f"corpus {source}", unit="rec", mininterval=1.0):
        parts.add(recording_windows(path, settings), f"{source}/{path.relative_to(folder)}", source)


def paired_train_windows(eeg: np.ndarray, split: np.ndarray, trial: np.ndarray,
                         parts: CorpusParts, settings: CorpusSettings) -> None:
    """Add the paired trials of the TRAIN split only (one window each): never val or test."""
    train = np.flatnonzero(split == SPLIT_CODES["train"])
    if eeg.shape[1:] != (settings.channels, settings.samples):
        raise DataError(f"paired EEG has shape {eeg.shape[1:]}, corpus windows need "
                        f"({settings.channels}, {settings.samples})")
    windows = scale_windows(eeg[train].astype(np.float64), settings)
    for row, index in enumerate(train):
        parts.add(windows[row : row + 1], f"{PAIRED_TRAIN}/trial{int(trial[index])}", PAIRED_TRAIN)


def build_corpus(corpus_root: Path | None, sources: list[str], paired: dict | None,
                 settings: CorpusSettings) -> dict:
    """corpus.h5 arrays from the named sources ('paired-train' or a folder under corpus_root)."""
    parts = CorpusParts()
    for source in sources:
        if source == PAIRED_TRAIN:
            if paired is None:
                raise DataError("pretrain source 'paired-train' requested but no paired EEG given")
            paired_train_windows(paired["eeg"], paired["split"], paired["trial"], parts, settings)
            continue
        folder = corpus_root / source if corpus_root is not None else None
        if folder is None or not folder.is_dir():
            raise DataError(f"pretrain source {source!r}: no folder {folder} in the raw data "
                            f"(preprocess.pretrain_sources; available: "
                            f"{sorted(p.name for p in corpus_root.iterdir()) if corpus_root and corpus_root.is_dir() else []})")
        folder_windows(folder, source, parts, settings)
    arrays = parts.arrays(settings)
    if len(arrays["eeg"]) == 0 and sources:
        raise DataError(f"pretraining corpus from {sources} has no windows of {settings.samples} samples")
    return arrays
