"""EEG signal operations on (C, T) arrays: crop, resample, filter, channel mapping, normalise."""
from __future__ import annotations

import numpy as np


def crop(eeg: np.ndarray, start: int, end: int) -> np.ndarray:
    """Samples [start, end) of every channel; the trial must be long enough."""
    if not 0 <= start < end <= eeg.shape[-1]:
        raise ValueError(f"crop [{start}, {end}) does not fit a trial of {eeg.shape[-1]} samples")
    return eeg[..., start:end]


def resample_linear(eeg: np.ndarray, samples: int) -> np.ndarray:
    """Linear interpolation to `samples` points, end points kept (the official loader's
    `interp1d(linspace(0, 1, T))`)."""
    length = eeg.shape[-1]
    position = np.linspace(0.0, length - 1, samples)  # (S,) fractional source index
    left = np.clip(np.floor(position).astype(np.int64), 0, length - 2 if length > 1 else 0)
    frac = position - left
    right = np.minimum(left + 1, length - 1)
    return eeg[..., left] * (1.0 - frac) + eeg[..., right] * frac


def resample_fourier(eeg: np.ndarray, samples: int) -> np.ndarray:
    """Band-limited (FFT) resampling to `samples` points."""
    import scipy.signal  # here: importing it costs every stage a second

    return scipy.signal.resample(eeg, samples, axis=-1)


def resample(eeg: np.ndarray, samples: int, method: str) -> np.ndarray:
    """Resample by `method`: 'linear' (official) or 'fourier' (band-limited)."""
    if method == "linear":
        return resample_linear(eeg, samples)
    if method == "fourier":
        return resample_fourier(eeg, samples)
    raise ValueError(f"resample method {method!r} is not one of ['linear', 'fourier']")


def bandpass(eeg: np.ndarray, sfreq: float, low: float, high: float) -> np.ndarray:
    """Zero-phase IIR band-pass (mne; IIR because trials are too short for a long FIR); the upper
    edge must be below the Nyquist frequency (no silent clamping)."""
    import mne

    if high >= sfreq / 2:
        raise ValueError(f"band-pass upper edge {high:g} Hz is not below the Nyquist frequency {sfreq / 2:g} Hz")
    return mne.filter.filter_data(
        eeg.astype(np.float64), sfreq, low, high, method="iir", verbose="error"
    )


def notch(eeg: np.ndarray, sfreq: float, freqs: list[float]) -> np.ndarray:
    """Zero-phase IIR notch at each line frequency below Nyquist (mne)."""
    import mne

    freqs = [f for f in freqs if f < sfreq / 2]
    if not freqs:
        return eeg
    return mne.filter.notch_filter(
        eeg.astype(np.float64), sfreq, np.asarray(freqs), method="iir", verbose="error"
    )


def zscore_channels(eeg: np.ndarray) -> np.ndarray:
    """Each channel to zero mean and unit variance over time (a flat channel stays at zero)."""
    mean = eeg.mean(axis=-1, keepdims=True)
    std = eeg.std(axis=-1, keepdims=True)
    return (eeg - mean) / np.where(std > 0, std, 1.0)


def map_channels(eeg: np.ndarray, channels: int, mode: str) -> np.ndarray:
    """Bring (C, T) to (channels, T): 'tile' repeats channels (paper), 'zero' pads with zeros,
    'none' requires exactly `channels`. More channels than wanted: the first `channels`."""
    count = eeg.shape[0]
    if count == 0:
        raise ValueError("recording has no channels")
    if count >= channels:
        if mode == "none" and count != channels:
            raise ValueError(f"recording has {count} channels, expected exactly {channels}")
        return eeg[:channels]
    if mode == "tile":
        return np.tile(eeg, (int(np.ceil(channels / count)), 1))[:channels]
    if mode == "zero":
        return np.concatenate([eeg, np.zeros((channels - count, eeg.shape[1]), eeg.dtype)])
    raise ValueError(f"recording has {count} channels, expected {channels} "
                     f"(set a channel mapping: 'tile' or 'zero', got {mode!r})")


def windows(eeg: np.ndarray, length: int, stride: int) -> np.ndarray:
    """Cut (C, T) into (W, C, length) windows with step `stride`; none if T < length."""
    starts = np.arange(0, eeg.shape[-1] - length + 1, stride)
    return np.stack([eeg[:, s : s + length] for s in starts]) if len(starts) else np.empty((0, eeg.shape[0], length), eeg.dtype)
