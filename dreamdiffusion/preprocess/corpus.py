"""The unlabeled pretraining corpus: recordings -> 128-channel, fixed-length windows.

Sources are folders of mne Raw FIF recordings (the synthetic corpus, MOABB exports, a user's
own) and, optionally, the TRAIN split of the paired data. Val/test trials can never enter:
`paired_train_windows` takes the split codes and keeps train rows only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dreamdiffusion.core import eeg_signal
from dreamdiffusion.core.fileio import DataError
from dreamdiffusion.core.progress import progress
from dreamdiffusion.preprocess.processed import SPLIT_CODES, H5Writer

PAIRED_TRAIN = "paired-train"


@dataclass(frozen=True)
class CorpusSettings:
    """How recordings become windows: the `corpus_*` params of `preprocess` (built from its config
    by `preprocess.corpus_settings`; no defaults of its own)."""

    channels: int
    samples: int
    sample_rate: float
    bandpass: tuple[float, ...]
    channel_mode: str  # tile | zero | none
    scale: str  # none | zscore | divide
    divisor: float
    stride: int
    max_windows: int  # per recording; 0 = all


class CorpusWriter:
    """Windows appended to corpus.h5 one recording at a time, with their recording of origin:
    the corpus never sits in memory whole (a MOABB-sized one is tens of GB)."""

    def __init__(self, writer: H5Writer, settings: CorpusSettings):
        self.writer, self.windows = writer, 0
        self.recording: list[np.ndarray] = []
        self.recordings: list[str] = []
        self.sources: list[str] = []
        writer.rows("eeg", (0, settings.channels, settings.samples), np.float32, growable=True)

    def add(self, windows: np.ndarray, name: str, source: str) -> None:
        """Append the (W, C, S) windows of one recording."""
        self.writer.append("eeg", windows.astype(np.float32))
        self.recording.append(np.full(len(windows), len(self.recordings), np.int64))
        self.recordings.append(name)
        self.sources.append(source)
        self.windows += len(windows)

    def finish(self) -> dict:
        """Write the index datasets; return the summary (window count, recording of each window, names)."""
        recording = np.concatenate(self.recording) if self.recording else np.empty(0, np.int64)
        for key, value in (("recording", recording), ("recordings", self.recordings), ("sources", self.sources)):
            self.writer.put(key, value)
        return dict(windows=self.windows, recording=recording, recordings=self.recordings, sources=self.sources)


def scale_windows(windows: np.ndarray, settings: CorpusSettings) -> np.ndarray:
    """Amplitude normalisation of (W, C, S) windows."""
    if settings.scale == "zscore":
        return eeg_signal.zscore_channels(windows)
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
    sfreq = raw.info["sfreq"]
    if settings.bandpass:
        if settings.bandpass[1] >= sfreq / 2:
            raise DataError(f"{path}: recorded at {sfreq:g} Hz, whose Nyquist frequency {sfreq / 2:g} Hz is not above "
                            f"preprocess.corpus_bandpass's upper edge {settings.bandpass[1]:g} Hz (the band-pass runs "
                            f"at the recording's own rate): lower corpus_bandpass or leave this recording out")
        eeg = eeg_signal.bandpass(eeg, sfreq, *settings.bandpass)
    if sfreq != settings.sample_rate:
        eeg = mne.filter.resample(eeg, up=settings.sample_rate, down=sfreq, verbose="error")
    try:
        eeg = eeg_signal.map_channels(eeg, settings.channels, settings.channel_mode)
    except ValueError as err:
        raise DataError(f"{path}: {err} (preprocess.corpus_channels)") from None
    cut = eeg_signal.windows(eeg, settings.samples, settings.stride)
    cut = cut[pick_evenly(len(cut), settings.max_windows)]
    return scale_windows(cut, settings)


def folder_windows(folder: Path, source: str, parts: CorpusWriter, settings: CorpusSettings) -> None:
    """Add every `*.fif` recording of `folder` (sorted) to `parts`."""
    files = sorted(folder.rglob("*.fif"))
    if not files:
        raise DataError(f"{folder}: corpus source {source!r} has no .fif recordings")
    for path in progress(files, desc=f"corpus {source}", unit="rec", mininterval=1.0):
        parts.add(recording_windows(path, settings), f"{source}/{path.relative_to(folder)}", source)


def paired_train_windows(eeg, split: np.ndarray, trial: np.ndarray, parts: CorpusWriter,
                         settings: CorpusSettings, batch: int = 256) -> None:
    """Add the paired trials of the TRAIN split only (one window each): never val or test.
    `eeg` (N, C, S) may be an on-disk array; it is read `batch` trials at a time."""
    train = np.flatnonzero(split == SPLIT_CODES["train"])
    if tuple(eeg.shape[1:]) != (settings.channels, settings.samples):
        raise DataError(f"paired EEG has shape {tuple(eeg.shape[1:])}, corpus windows need "
                        f"({settings.channels}, {settings.samples})")
    for start in range(0, len(train), batch):
        rows = train[start : start + batch]
        windows = scale_windows(eeg[rows].astype(np.float64), settings)
        for row, index in enumerate(rows):
            parts.add(windows[row : row + 1], f"{PAIRED_TRAIN}/trial{int(trial[index])}", PAIRED_TRAIN)


def build_corpus(corpus_root: Path | None, sources: list[str], paired: dict | None,
                 settings: CorpusSettings, out_path: Path) -> dict:
    """Write corpus.h5 at `out_path` from the named sources ('paired-train' or a folder under
    corpus_root); `paired` holds eeg.h5's `eeg` (array or on-disk), `split` and `trial`.
    Returns the summary of `CorpusWriter.finish`."""
    with H5Writer(out_path, {"samples": settings.samples}) as writer:
        parts = CorpusWriter(writer, settings)
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
        summary = parts.finish()
    if summary["windows"] == 0 and sources:
        raise DataError(f"pretraining corpus from {sources} has no windows of {settings.samples} samples")
    return summary
