"""Simulated EEG of the synthetic world: visual evoked responses in realistic background noise.

Spatial model: electrodes on a unit sphere (the BioSemi 128 montage); every source (evoked
component, background generator, alpha generator) projects with a smooth Gaussian
topography exp(-d^2 / 2w^2) of the great-circle distance d to its centre.

A paired trial (128 channels, 1 kHz, stimulus at sample 0) is
    evoked(class, image, subject, trial)  scaled so that its RMS over 0-500 ms is `snr`
  + noise(subject, trial)                 RMS 1: pink (1/f) sources, alpha rhythm, sensor noise,
                                          line noise, slow drift
  + block drift                           optional offset shared by one class block
then z-scored per subject and channel (the real file is band-passed and standardized).

The evoked response is a sum of Gaussian-windowed oscillations (latency, width, frequency,
phase, amplitude, topography): two components shared by all classes (P1/N1-like), three
class-specific ones, and one weak image-specific one; the image also shifts latencies, gain
and (with the shape's horizontal position) the lateralisation of every topography.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

N_CHANNELS = 128
SFREQ = 1000.0
SHARED, PER_CLASS = 2, 5  # evoked components shared by all classes / specific to a class
SUBJECT_GAIN_SD, SUBJECT_ROTATION_SD = 0.25, 0.15  # log-gain and topography rotation (radians)
NOISE_SOURCES = 32
# relative RMS of the noise parts before the total is normalised to 1
PINK, ALPHA, SENSOR, LINE, DRIFT = 1.0, 0.6, 0.35, 0.15, 0.4
POSTERIOR = np.array([0.0, -0.8, 0.6])  # occipital direction (x right, y front, z up)
CLASS_STREAM, SUBJECT_STREAM = "eeg-classes", "eeg-subject"  # random streams of the class templates, the subjects


def stream(seed: int, name: str, *index: int) -> np.random.Generator:
    """An independent random stream per (seed, purpose, index): sizes of one part never shift another."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng([seed, zlib.crc32(name.encode()), *index])


def channel_positions() -> np.ndarray:
    """Unit vectors of the 128 BioSemi electrodes, (128, 3)."""
    import mne

    montage = mne.channels.make_standard_montage("biosemi128")
    pos = np.array(list(montage.get_positions()["ch_pos"].values()))
    return pos / np.linalg.norm(pos, axis=1, keepdims=True)


def unit(v: np.ndarray) -> np.ndarray:
    """Normalise vectors along the last axis."""
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def random_directions(rng: np.random.Generator, n: int, towards=None, spread: float = 1.0) -> np.ndarray:
    """`n` unit vectors on the upper head, optionally clustered `towards` a direction, (n, 3)."""
    v = rng.normal(size=(n, 3)) * spread
    if towards is not None:
        v = v + unit(np.asarray(towards, dtype=float))
    v[:, 2] = np.abs(v[:, 2]) + 0.1
    return unit(v)


def topography(centres: np.ndarray, widths: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Gaussian scalp patterns of sources at `centres` (..., 3) with `widths` (...) -> (..., C)."""
    cos = np.clip(centres @ positions.T, -1.0, 1.0)
    return np.exp(-np.arccos(cos) ** 2 / (2 * widths[..., None] ** 2)).astype(np.float32)


def rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix about `axis` by `angle` (Rodrigues), (3, 3)."""
    x, y, z = unit(np.asarray(axis, dtype=float))
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def shaped_noise(rng: np.random.Generator, shape: tuple, n_times: int, sfreq: float,
                 amplitude) -> np.ndarray:
    """Gaussian noise with amplitude spectrum `amplitude(freqs)`, unit RMS, shape + (n_times,)."""
    n_fft = 1 << int(np.ceil(np.log2(max(n_times, 2))))
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sfreq)
    gain = amplitude(freqs).astype(np.float32)
    gain /= np.sqrt(np.mean(gain**2) + 1e-12)
    spectrum = rng.standard_normal((*shape, len(freqs), 2), dtype=np.float32)
    spectrum = (spectrum[..., 0] + 1j * spectrum[..., 1]) * gain
    return (np.fft.irfft(spectrum, n_fft, axis=-1)[..., :n_times] * np.sqrt(n_fft / 2)).astype(np.float32)


def pink(freqs: np.ndarray) -> np.ndarray:
    """1/f power (1/sqrt(f) amplitude) from 1 Hz, rolled off above 95 Hz."""
    return 1.0 / np.sqrt(np.maximum(freqs, 1.0)) / (1.0 + (freqs / 95.0) ** 4)


def alpha_peak(centre: float):
    """Amplitude spectrum of an alpha rhythm: a Gaussian peak of 1 Hz width at `centre` Hz."""
    return lambda freqs: np.exp(-((freqs - centre) ** 2) / 2.0)


@dataclass
class ClassTemplates:
    """Evoked-response parameters per class, each (n_classes, K) (centres (n_classes, K, 3))."""

    latency: np.ndarray  # seconds
    width: np.ndarray  # seconds
    freq: np.ndarray  # Hz
    phase: np.ndarray
    amplitude: np.ndarray
    centres: np.ndarray
    spread: np.ndarray  # topography width, radians


def _components(rng: np.random.Generator, n: int, latency: tuple, towards=POSTERIOR) -> dict:
    """Random parameters of `n` evoked components with latencies in `latency` (s)."""
    return dict(latency=rng.uniform(*latency, n), width=rng.uniform(0.02, 0.06, n),
                freq=rng.uniform(2.0, 14.0, n), phase=rng.uniform(0, 2 * np.pi, n),
                amplitude=rng.uniform(0.6, 1.2, n) * rng.choice([-1.0, 1.0], n),
                centres=random_directions(rng, n, towards, spread=0.9),
                spread=rng.uniform(0.4, 0.9, n))


def class_templates(rng: np.random.Generator, n_classes: int) -> ClassTemplates:
    """Shared (P1/N1-like) plus class-specific components for every class."""
    shared = dict(latency=np.array([0.10, 0.17]), width=np.array([0.025, 0.035]),
                  freq=np.array([4.0, 3.0]), phase=np.zeros(2), amplitude=np.array([0.8, -1.0]),
                  centres=random_directions(rng, SHARED, POSTERIOR, spread=0.2),
                  spread=np.array([0.6, 0.7]))
    per_class = [_components(rng, PER_CLASS, (0.08, 0.38)) for _ in range(n_classes)]
    stack = {key: np.stack([np.concatenate([shared[key], c[key]]) for c in per_class])
             for key in shared}
    return ClassTemplates(**stack)


@dataclass
class Subject:
    """What makes one simulated person differ from another."""

    gain: float
    latency_shift: float  # seconds
    mixing: np.ndarray  # (3, 3) rotation of every evoked source
    channel_gain: np.ndarray  # (C,)
    noise_leadfield: np.ndarray  # (C, NOISE_SOURCES + 1), the last column is the alpha source
    alpha_freq: float
    line_gain: np.ndarray  # (C,)


def make_subject(rng: np.random.Generator, positions: np.ndarray) -> Subject:
    """Draw a subject: gain, latency, topography mixing, noise generators, alpha frequency."""
    centres = np.concatenate([random_directions(rng, NOISE_SOURCES),
                              random_directions(rng, 1, POSTERIOR, spread=0.15)])
    widths = np.concatenate([rng.uniform(0.3, 0.8, NOISE_SOURCES), [0.6]])
    return Subject(gain=float(np.exp(rng.normal(0, SUBJECT_GAIN_SD))),
                   latency_shift=rng.uniform(-0.015, 0.015),
                   mixing=rotation(rng.normal(size=3), rng.normal(0, SUBJECT_ROTATION_SD)),
                   channel_gain=(1 + 0.1 * rng.normal(size=len(positions))).astype(np.float32),
                   noise_leadfield=np.ascontiguousarray(topography(centres, widths, positions).T),
                   alpha_freq=rng.uniform(8.0, 12.0),
                   line_gain=np.exp(rng.normal(0, 0.7, len(positions))).astype(np.float32))


@dataclass
class ImageEffects:
    """Per-image modulation of the evoked response (shared by all subjects who see the image)."""

    gain: np.ndarray  # (n_images,)
    latency_shift: np.ndarray  # (n_images,) seconds
    lateral: np.ndarray  # (n_images,) rotation about the vertical axis, radians
    own: dict  # parameters of one image-specific component, each (n_images, 1)


def image_effects(rng: np.random.Generator, x_positions: np.ndarray, strength: float) -> ImageEffects:
    """Image-specific modulation: its strength scales everything (0 = images of a class alike)."""
    n = len(x_positions)
    own = _components(rng, n, (0.08, 0.38))
    own["amplitude"] = own["amplitude"] * 0.5 * strength
    return ImageEffects(gain=np.exp(strength * 0.3 * rng.normal(size=n)),
                        latency_shift=strength * 0.015 * rng.normal(size=n),
                        lateral=strength * 0.8 * (np.asarray(x_positions) - 0.5),
                        own={k: v[:, None] if v.ndim == 1 else v[:, None, :] for k, v in own.items()})


def waveforms(t: np.ndarray, latency, width, freq, phase, amplitude) -> np.ndarray:
    """Gaussian-windowed oscillations, params (N, K) -> (N, K, T)."""
    dt = t[None, None, :] - latency[..., None]
    window = np.exp(-(dt**2) / (2 * width[..., None] ** 2))
    return (amplitude[..., None] * window * np.cos(2 * np.pi * freq[..., None] * dt + phase[..., None])
            ).astype(np.float32)


def evoked_rms(templates: ClassTemplates, positions: np.ndarray) -> float:
    """RMS of the noise-free class responses over channels and 0-500 ms (the snr reference)."""
    t = np.arange(500) / SFREQ
    waves = waveforms(t, templates.latency, templates.width, templates.freq, templates.phase,
                      templates.amplitude)  # (n_classes, K, T)
    topo = topography(templates.centres, templates.spread, positions)  # (n_classes, K, C)
    return float(np.sqrt(np.mean((topo.transpose(0, 2, 1) @ waves) ** 2)))


def _trial_components(rng, templates: ClassTemplates, effects: ImageEffects, subject: Subject,
                      labels: np.ndarray, images: np.ndarray, onset_jitter: float) -> dict:
    """Evoked-component parameters of every trial, each (N, K) (centres (N, K, 3))."""
    own = {key: value[images] for key, value in effects.own.items()}
    params = {key: np.concatenate([getattr(templates, key)[labels], own[key]], axis=1) for key in own}
    n = len(labels)
    params["latency"] = params["latency"] + (effects.latency_shift[images] + subject.latency_shift
                                             + rng.normal(0, onset_jitter, n))[:, None]
    params["amplitude"] = params["amplitude"] * (effects.gain[images] * subject.gain
                                                 * np.exp(rng.normal(0, 0.2, n)))[:, None]
    lateral = np.stack([rotation([0, 0, 1], a) for a in effects.lateral[images]])  # (N, 3, 3)
    params["centres"] = params["centres"] @ lateral.transpose(0, 2, 1) @ subject.mixing.T
    return params


def evoked(rng, templates, effects, subject, labels, images, n_times, positions,
           scale: float, onset_jitter: float) -> np.ndarray:
    """Evoked responses of the trials, (N, C, T), `scale` times the template units."""
    p = _trial_components(rng, templates, effects, subject, labels, images, onset_jitter)
    topo = topography(p["centres"], p["spread"], positions) * subject.channel_gain  # (N, K, C)
    waves = waveforms(np.arange(n_times) / SFREQ, p["latency"], p["width"], p["freq"], p["phase"],
                      p["amplitude"])  # (N, K, T)
    return np.matmul(topo.transpose(0, 2, 1), waves) * np.float32(scale)


def _rms(x: np.ndarray) -> float:
    """Root mean square of all values (float32 pairwise sums are accurate enough here)."""
    return float(np.sqrt(np.mean(np.square(x))))


def background(rng, subject: Subject, n_trials: int, n_times: int, sfreq: float,
               line_freq: float) -> np.ndarray:
    """Noise of the trials, RMS ~1, (N, C, T): pink sources, alpha, sensor, line noise, drift.

    Every part is scaled by its expected (not measured) RMS, so chunks of trials drawn
    separately share one scale.
    """
    lead = subject.noise_leadfield  # (C, S + 1)
    lead_rms = np.float32(np.sqrt(np.mean(lead**2) * lead.shape[1]))  # RMS of lead @ unit sources
    sources = np.concatenate([  # (N, S + 1, T), unit RMS each
        shaped_noise(rng, (n_trials, NOISE_SOURCES), n_times, sfreq, pink),
        shaped_noise(rng, (n_trials, 1), n_times, sfreq, alpha_peak(subject.alpha_freq))], axis=1)
    weights = np.full((n_trials, NOISE_SOURCES + 1, 1), PINK * np.sqrt(1 + 1 / NOISE_SOURCES),
                      dtype=np.float32)  # all S pink sources together: power PINK**2
    weights[:, -1, 0] = ALPHA * np.sqrt(NOISE_SOURCES + 1) * np.exp(rng.normal(0, 0.4, n_trials) - 0.16)
    noise = np.einsum("cs,nst->nct", lead / lead_rms, sources * weights, optimize=True)
    noise += rng.standard_normal(noise.shape, dtype=np.float32) * np.float32(SENSOR)
    line = np.sin(2 * np.pi * line_freq * np.arange(n_times) / sfreq
                  + rng.uniform(0, 2 * np.pi, (n_trials, 1)))  # (N, T)
    line_power = 0.0
    if 0 < line_freq < sfreq / 2:
        noise += (LINE * subject.line_gain)[None, :, None] * line.astype(np.float32)[:, None, :]
        line_power = LINE**2 * np.mean(subject.line_gain**2) / 2
    level, slope = rng.normal(size=(2, n_trials, lead.shape[1])).astype(np.float32) @ (lead / lead_rms).T
    ramp = np.linspace(-1, 1, n_times, dtype=np.float32)
    noise += np.float32(DRIFT / np.sqrt(4 / 3)) * (level[..., None] + slope[..., None] * ramp)
    total = np.sqrt(PINK**2 + ALPHA**2 + SENSOR**2 + line_power + DRIFT**2)
    return noise * np.float32(1 / total)


def block_levels(rng, subject: Subject, blocks: np.ndarray, progress: np.ndarray) -> np.ndarray:
    """Slow offsets shared by the trials of one class block, RMS ~1, (N, C).

    `blocks` (N,) names each trial's block, `progress` (N,) its position in the block (0..1):
    each block has its own offset pattern, which also drifts (half as much) along the block.
    """
    lead = subject.noise_leadfield
    lead = lead / np.sqrt(np.mean(lead**2) * lead.shape[1])
    level, trend = rng.normal(size=(2, int(blocks.max()) + 1, lead.shape[1])) @ lead.T  # (B, C) each
    offsets = level[blocks] + 0.5 * trend[blocks] * (progress[:, None] - 0.5) * np.sqrt(12)
    return (offsets / np.sqrt(1.25)).astype(np.float32)


def corpus_montage(rng: np.random.Generator, n_channels: int) -> tuple[list[str], np.ndarray]:
    """Channel names and unit positions of a recording: BioSemi 128 or a 10-05 subset."""
    import mne

    name = "biosemi128" if n_channels == N_CHANNELS else "colin27_1005"
    montage = mne.channels.make_standard_montage(name)
    ch_pos = montage.get_positions()["ch_pos"]
    names = list(ch_pos) if name == "biosemi128" else sorted(
        rng.choice(list(ch_pos), n_channels, replace=False).tolist(), key=list(ch_pos).index)
    pos = np.array([ch_pos[n] for n in names]) - [0.0, -0.017, 0.0]  # roughly head-centred
    return names, unit(pos)


def recording(rng: np.random.Generator, positions: np.ndarray, sfreq: float, n_times: int,
              line_freq: float, burst_rate: float = 0.3) -> np.ndarray:
    """An unlabeled continuous recording, unit RMS, (C, T): the trial background plus bursts."""
    subject = make_subject(rng, positions)
    noise = background(rng, subject, 1, n_times, sfreq, line_freq)[0]  # (C, T)
    n_bursts = rng.poisson(burst_rate * n_times / sfreq)
    for onset in rng.integers(0, max(n_times - int(0.5 * sfreq), 1), n_bursts):
        burst = _components(rng, 3, (0.08, 0.38), towards=None)
        topo = topography(burst["centres"], burst["spread"], positions)  # (3, C)
        t = np.arange(int(0.5 * sfreq)) / sfreq
        waves = waveforms(t, *(burst[k][None] for k in ("latency", "width", "freq", "phase",
                                                        "amplitude")))[0]  # (3, t)
        seg = noise[:, onset:onset + len(t)]
        seg += (topo.T @ waves)[:, :seg.shape[1]] * rng.uniform(0.5, 1.5)
    return noise / np.float32(_rms(noise))
