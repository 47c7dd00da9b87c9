"""The synthetic EEG-ImageNet world: a miniature stand-in for the real data, in its exact formats.

`generate_world(config, seed, out_dir)` writes, deterministically from `seed`:

    eeg_5_95_std.pth                {'dataset': [{'eeg': FloatTensor[128, T], 'image', 'label',
                                    'subject'}], 'labels': [wnid], 'images': [name]}
    block_splits_by_image_all.pth   {'splits': [{'train', 'val', 'test'}]}, split by image
    images/<wnid>/<name>.JPEG       stimulus images (`<wnid>_<number>`, listed in 'images') and
                                    extra images (`<wnid>_x<number>`, the foundation-model corpus)
    captions.json                   {wnid: 'a red circle'}
    corpus/synthetic/recNNN_raw.fif unlabeled EEG (mne Raw, volts), varied channels and rates
    corpus/synthetic-physiology/    only when physiology_blocks > 0: unlabeled blocks of the same
      subNN_blockNNN_raw.fif        subjects (synthetic_physiology.py)

Classes are shape x colour concepts (synthetic_images.py); every subject sees every stimulus
image once, class by class (block design); the EEG is simulated in synthetic_eeg.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from dreamdiffusion.core.config import ConfigError, param
from dreamdiffusion.core.eeg_signal import resample_linear
from dreamdiffusion.core.parallel import sequential_map, task_map
from dreamdiffusion.download import synthetic_eeg as sim
from dreamdiffusion.download.synthetic_eeg import stream
from dreamdiffusion.download.raw import CAPTIONS_FILE, CORPUS_DIR, IMAGES_DIR, RawManifest, image_path
from dreamdiffusion.download.synthetic_physiology import PHYSIOLOGY_SOURCE, write_physiology_corpus
from dreamdiffusion.download.synthetic_images import class_concepts, render_image, save_jpeg

EEG_FILE = "eeg_5_95_std.pth"
SPLITS_FILE = "block_splits_by_image_all.pth"
CORPUS_SOURCE = "synthetic"
OFFICIAL_LENGTHS = (450, 600)  # the official loader keeps 450 <= T <= 600
TRIAL_CHUNK = 32  # trials simulated together (small arrays stay in cache and get reused)


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and knobs of the synthetic world (params.yaml `download.synthetic`)."""

    classes: int = param(10, min=2, max=100, help="classes (shape x colour concepts)")
    shapes: int = param(5, min=1, max=10, help="shapes used; class k = shape k % shapes, colour k // shapes")
    images_per_class: int = param(40, min=3, max=10_000, help="stimulus images per class (shown in the EEG experiment)")
    extra_images_per_class: int = param(200, min=0, max=10_000, help="images per class never shown (foundation corpus)")
    image_size: int = param(64, min=16, max=1024, help="image side in pixels")
    jpeg_quality: int = param(95, min=50, max=100)
    subjects: int = param(4, min=1, max=64, help="every subject sees every stimulus image once")
    snr: float = param(0.45, min=0.0, help="RMS of the evoked response over 0-500 ms / RMS of the noise "
                       "(0.45: single-trial 10-way linear probe ~0.85-0.94 on val)")
    image_effect: float = param(0.3, min=0.0, max=2.0, help="how much the response depends on the image")
    block_drift: float = param(0.0, min=0.0,
                               help="offset shared by a class block (block-design confound), noise RMS units")
    onset_jitter_ms: float = param(10.0, min=0.0, max=100.0)
    line_freq: float = param(50.0, choices=[50.0, 60.0])
    min_length: int = param(460, min=1, max=100_000, help="trial length T in samples at 1 kHz: uniform in [min, max]")
    max_length: int = param(560, min=1, max=100_000)
    length_outliers: float = param(0.02, min=0.0, max=1.0, help="fraction of trials with T outside 450..600")
    n_splits: int = param(1, min=1, max=100, help="split partitions in the split file")
    val_fraction: float = param(0.1, min=0.0, max=0.5)
    test_fraction: float = param(0.1, min=0.0, max=0.5)
    corpus_recordings: int = param(40, min=0, max=10_000, help="unlabeled pretraining recordings")
    physiology_blocks: int = param(0, min=0, max=10_000, help="blocks per subject of the corpus that shares the "
                                   "paired EEG's physiology (synthetic_physiology.py); 0 = not written")
    physiology_block_seconds: float = param(25.0, min=1.0, max=3600.0, help="seconds per block (one FIF file)")
    physiology_concepts: int = param(100, min=1, max=10_000, help="unlabelled concepts, none a paired class")
    physiology_rest_fraction: float = param(0.2, min=0.0, max=1.0, help="blocks without images (rest: alpha)")
    corpus_min_seconds: float = param(20.0, min=1.0, max=3600.0)
    corpus_max_seconds: float = param(60.0, min=1.0, max=3600.0)
    corpus_channels: list[int] = param([22, 32, 60, 64, 118, 128], min=1, max=343)
    corpus_sample_rates: list[float] = param([128.0, 160.0, 250.0, 256.0, 500.0, 512.0, 1000.0], min=64.0,
                                             max=100_000.0)

    def __post_init__(self):
        if self.min_length > self.max_length:
            raise ConfigError(f"min_length {self.min_length} is above max_length {self.max_length}")
        if self.corpus_min_seconds > self.corpus_max_seconds:
            raise ConfigError(f"corpus_min_seconds {self.corpus_min_seconds} is above "
                              f"corpus_max_seconds {self.corpus_max_seconds}")
        if not self.corpus_channels or not self.corpus_sample_rates:
            raise ConfigError("corpus_channels and corpus_sample_rates must not be empty")
        try:
            class_concepts(self.classes, self.shapes)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        split_sizes(self)


def split_sizes(config: SyntheticConfig) -> dict[str, int]:
    """Images per class in val, test and train (val and test get at least one when asked for)."""
    n = config.images_per_class
    val, test = (max(1, round(f * n)) if f > 0 else 0 for f in (config.val_fraction, config.test_fraction))
    if val + test >= n:
        raise ConfigError(f"images_per_class {n} leaves no training image after {val} val "
                          f"and {test} test images per class")
    return {"val": val, "test": test, "train": n - val - test}


def class_ids(n_classes: int) -> list[str]:
    """Synthetic WordNet-style ids, 'n0' + 7 digits, distinct and sorted."""
    return [f"n0{9900000 + 1013 * k:07d}" for k in range(n_classes)]


def stimulus_names(seed: int, wnid: str, k: int, n: int) -> list[str]:
    """`n` distinct ImageNet-style names `<wnid>_<number>` for class `k`, sorted by number."""
    numbers = stream(seed, "image-names", k).choice(np.arange(1, 100000), n, replace=False)
    return [f"{wnid}_{int(x)}" for x in np.sort(numbers)]


def write_class_images(task: tuple) -> list[float]:
    """Render and save one class's stimulus or extra images; return their shapes' x positions."""
    config, seed, images_dir, kind, k, wnid, names = task
    concept, rng = class_concepts(config.classes, config.shapes)[k], stream(seed, f"{kind}-images", k)
    x_positions = []
    for name in names:
        pixels, place = render_image(concept, config.image_size, rng)
        save_jpeg(pixels, image_path(images_dir, wnid, name), config.jpeg_quality)
        x_positions.append(place.x)
    return x_positions


def write_images(config: SyntheticConfig, seed: int, images_dir: Path, wnids: list[str],
                 names: list[list[str]], run: Callable = sequential_map) -> np.ndarray:
    """Render and save stimulus and extra images, class by class (`run`: a `parallel.task_map`);
    return the stimulus shapes' x positions."""
    work = [(config, seed, images_dir, kind, k, wnid, class_names) for k, wnid in enumerate(wnids)
            for kind, class_names in (("stimulus", names[k]), ("extra", [
                f"{wnid}_x{j + 1}" for j in range(config.extra_images_per_class)]))]
    positions = run(write_class_images, work, desc="synthetic images", unit="class")
    return np.array([x for task, xs in zip(work, positions) if task[3] == "stimulus" for x in xs])


def trial_lengths(rng: np.random.Generator, n: int, config: SyntheticConfig) -> np.ndarray:
    """Samples per trial: uniform in [min_length, max_length], a few outside 450..600."""
    lengths = rng.integers(config.min_length, config.max_length + 1, n)
    outlier = rng.random(n) < config.length_outliers
    short = rng.integers(OFFICIAL_LENGTHS[0] - 20, OFFICIAL_LENGTHS[0], n)
    long = rng.integers(OFFICIAL_LENGTHS[1] + 1, OFFICIAL_LENGTHS[1] + 61, n)
    return np.where(outlier, np.where(rng.random(n) < 0.5, short, long), lengths)


def session_order(rng: np.random.Generator, n_classes: int, per_class: int) -> tuple[np.ndarray, ...]:
    """A block-design session: classes in random order, images shuffled within each block.

    Returns, per trial, the image index, its block number and its progress through the block.
    """
    images, blocks, progress = [], [], []
    for block, k in enumerate(rng.permutation(n_classes)):
        images.append(k * per_class + rng.permutation(per_class))
        blocks.append(np.full(per_class, block))
        progress.append(np.linspace(0, 1, per_class))
    return np.concatenate(images), np.concatenate(blocks), np.concatenate(progress)


def simulate_session(task: tuple) -> list[dict]:
    """All trials of subject `number` (from 1), in session order, z-scored per channel ('eeg': numpy)."""
    config, seed, world, number = task
    rng, blocks_rng = stream(seed, sim.SUBJECT_STREAM, number), stream(seed, "eeg-blocks", number)
    subject = sim.make_subject(rng, world["positions"])
    images, blocks, progress = session_order(rng, config.classes, config.images_per_class)
    labels = images // config.images_per_class
    lengths = trial_lengths(rng, len(images), config)
    offsets = sim.block_levels(blocks_rng, subject, blocks, progress) * np.float32(config.block_drift)
    trials = []
    for chunk in np.array_split(np.arange(len(images)), -(-len(images) // TRIAL_CHUNK)):
        n_times = int(lengths[chunk].max())
        eeg = sim.background(rng, subject, len(chunk), n_times, sim.SFREQ, config.line_freq)
        eeg += sim.evoked(rng, world["templates"], world["effects"], subject, labels[chunk],
                          images[chunk], n_times, world["positions"], world["scale"],
                          config.onset_jitter_ms / 1000.0)  # (n, C, T)
        eeg += offsets[chunk, :, None]
        trials += [eeg[i, :, :lengths[j]].copy() for i, j in enumerate(chunk)]
    mean = sum(x.sum(axis=1, dtype=np.float64) for x in trials) / lengths.sum()
    std = np.sqrt(sum(np.square(x, dtype=np.float64).sum(axis=1) for x in trials) / lengths.sum() - mean**2)
    scale, shift = (1 / std).astype(np.float32)[:, None], (mean / std).astype(np.float32)[:, None]
    for x in trials:
        x *= scale
        x -= shift
    return [{"eeg": x, "image": int(image), "label": int(label), "subject": number}
            for x, image, label in zip(trials, images, labels)]


def simulate_paired_eeg(config: SyntheticConfig, seed: int, x_positions: np.ndarray,
                        run: Callable = sequential_map) -> list[dict]:
    """The `dataset` list: one dict per trial, subject by subject (over `run`), in session order."""
    positions = sim.channel_positions()
    templates = sim.class_templates(stream(seed, sim.CLASS_STREAM), config.classes)
    world = {"positions": positions, "templates": templates,
             "effects": sim.image_effects(stream(seed, "eeg-images"), x_positions, config.image_effect),
             "scale": config.snr / sim.evoked_rms(templates, positions)}
    import torch  # here, not above: the worker processes need no torch

    sessions = run(simulate_session, [(config, seed, world, number) for number in range(1, config.subjects + 1)],
                   desc="synthetic EEG", unit="subject")
    return [{"eeg": torch.from_numpy(trial["eeg"]), "image": trial["image"], "label": trial["label"],
             "subject": trial["subject"]} for session in sessions for trial in session]  # keys: one str each (same bytes)


def split_by_image(config: SyntheticConfig, seed: int, dataset: list[dict], n_images: int) -> dict:
    """`n_splits` seeded partitions of the stimulus images, per class, into train/val/test trials."""
    per_class, sizes = config.images_per_class, split_sizes(config)
    part_of_rank = np.repeat(["val", "test", "train"], [sizes["val"], sizes["test"], sizes["train"]])
    trial_images = np.array([trial["image"] for trial in dataset])
    splits = []
    for i in range(config.n_splits):
        rng = stream(seed, "splits", i)
        part = np.empty(n_images, dtype=object)
        for k in range(config.classes):
            part[k * per_class + rng.permutation(per_class)] = part_of_rank
        splits.append({name: [int(t) for t in np.flatnonzero(part[trial_images] == name)]
                       for name in ("train", "val", "test")})
    return {"splits": splits}


def write_recording(task: tuple) -> dict:
    """Write unlabeled recording `r` as an mne Raw FIF file (volts); return what it holds."""
    import mne

    config, seed, corpus_dir, r = task
    rng = stream(seed, "corpus", r)
    n_channels = int(rng.choice(config.corpus_channels))
    sfreq = float(rng.choice(config.corpus_sample_rates))
    n_times = int(rng.uniform(config.corpus_min_seconds, config.corpus_max_seconds) * sfreq)
    names, positions = sim.corpus_montage(rng, n_channels)
    volts = sim.recording(rng, positions, sfreq, n_times, config.line_freq) * rng.uniform(5e-6, 2e-5)
    info = mne.create_info(names, sfreq, ch_types="eeg", verbose=False)
    raw = mne.io.RawArray(volts.astype(np.float64), info, verbose=False)
    raw.save(corpus_dir / f"rec{r:03d}_raw.fif", fmt="single", verbose=False)
    return {"recording": f"rec{r:03d}", "channels": n_channels, "sfreq": sfreq, "samples": n_times}


def write_corpus(config: SyntheticConfig, seed: int, corpus_dir: Path, run: Callable = sequential_map) -> list[dict]:
    """Unlabeled recordings (over `run`); returns what each one holds."""
    corpus_dir.mkdir(parents=True, exist_ok=True)
    return run(write_recording, [(config, seed, corpus_dir, r) for r in range(config.corpus_recordings)],
               desc="synthetic corpus", unit="rec")


def generate_world(config: SyntheticConfig, seed: int, out_dir: Path, workers: int = 1) -> RawManifest:
    """Write the whole synthetic raw-data folder into the existing empty `out_dir`, over `workers`
    processes (the same bytes for any number)."""

    out_dir = Path(out_dir)
    if not out_dir.is_dir() or any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir}: expected an existing empty folder")
    wnids = class_ids(config.classes)
    names = [stimulus_names(seed, wnid, k, config.images_per_class) for k, wnid in enumerate(wnids)]
    with task_map(workers, preload=(__name__, "mne")) as run:
        x_positions = write_images(config, seed, out_dir / IMAGES_DIR, wnids, names, run)
        dataset = simulate_paired_eeg(config, seed, x_positions, run)
        write_corpus(config, seed, out_dir / CORPUS_DIR / CORPUS_SOURCE, run)
    captions = {wnid: c.caption for wnid, c in zip(wnids, class_concepts(config.classes, config.shapes))}
    (out_dir / CAPTIONS_FILE).write_text(json.dumps(captions, indent=2) + "\n")
    images = [name for class_names in names for name in class_names]
    import torch

    torch.save({"dataset": dataset, "labels": wnids, "images": images}, out_dir / EEG_FILE)
    torch.save(split_by_image(config, seed, dataset, len(images)), out_dir / SPLITS_FILE)
    if config.physiology_blocks:
        write_physiology_corpus(config, seed, out_dir / CORPUS_DIR / PHYSIOLOGY_SOURCE)
    return RawManifest(source="synthetic", eeg_file=EEG_FILE, splits_file=SPLITS_FILE,
                       images_dir=IMAGES_DIR, captions_file=CAPTIONS_FILE, corpus_dir=CORPUS_DIR)


def probe_features(eeg_file: Path, bins: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loader-style features of every trial: keep 450 <= T <= 600, crop 20:460, resample to
    512, average into `bins` time bins. Returns (features (N, 128 * bins), labels, trial ids)."""
    from dreamdiffusion.core.fileio import safe_torch_load

    dataset = safe_torch_load(eeg_file)["dataset"]
    low, high = OFFICIAL_LENGTHS
    keep = [i for i, t in enumerate(dataset) if low <= t["eeg"].shape[1] <= high]
    eeg = np.stack([dataset[i]["eeg"][:, 20:460].numpy() for i in keep])  # (N, 128, 440)
    eeg = resample_linear(eeg, 512).reshape(len(keep), eeg.shape[1], bins, -1).mean(-1)  # (N, 128, bins)
    labels = np.array([dataset[i]["label"] for i in keep])
    return eeg.reshape(len(keep), -1), labels, np.array(keep)
