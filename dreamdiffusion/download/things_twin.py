"""A synthetic twin of THINGS-EEG2, small and in exactly the published file formats.

`write_twin(config, seed, root)` writes, deterministically from `seed`:

    preprocessed_data/sub-XX/preprocessed_eeg_{training,test}.npy   the official 17-channel 100 Hz files
                                    (np.save of a dict), or the 63-channel 250 Hz ones (pickle.dump)
    image_set/training_images/<nnnnn_concept>/<concept>_<jj>s.jpg, image_set/test_images/...
    image_set/image_metadata.npy    the published keys, one entry per image

so the readers of things_eeg2.py / things_eeg2_images.py read it as they read the real set (Gifford et
al., NeuroImage 2022; OSF project 3jk45). Concepts are the shape x colour concepts of synthetic_images.py
(10 x 10): training and test concepts are disjoint, but every test concept's shape and colour also occur
in training. The evoked response of an image is a sum of spatio-temporal patterns driven by its parts:
one per shape, one per colour, three weighted by where the shape sits and how large it is, plus a small
image-specific part. So a mapping from EEG to image features learnt on the training concepts carries over
to the unseen test concepts, and zero-shot retrieval can beat chance (tests/test_things_eeg2.py measures it).
Noise, subjects and topographies come from synthetic_eeg.py; then a baseline correction over -0.2..0 s, as
the official preprocessing does (no MVNN: the simulated noise is already near unit variance per channel).
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dreamdiffusion.core.config import ConfigError, param
from dreamdiffusion.core.fileio import atomic_path
from dreamdiffusion.download import synthetic_eeg as sim
from dreamdiffusion.download.synthetic import stream
from dreamdiffusion.download.synthetic_images import COLOURS, SHAPES, Concept, Placement, render_image, save_jpeg
from dreamdiffusion.download.things_eeg2 import EEG_FILES, LAYOUTS, Counts, EegLayout, subject_folder
from dreamdiffusion.download.things_eeg2_images import IMAGE_FOLDERS, METADATA_FILE

EEG_DIR, IMAGE_DIR = "preprocessed_data", "image_set"
OWN_PATTERNS = 8  # image-specific patterns (random weights per image)
COMPONENTS = 2  # Gaussian-windowed oscillations per pattern
DRIVEN_TERMS = 5  # unit-power feature terms per image: its shape, its colour, x, y, radius


@dataclass(frozen=True)
class TwinConfig:
    """Sizes and knobs of the THINGS-EEG2 twin."""

    train_concepts: int = param(60, min=2, max=99, help="training concepts (shape x colour)")
    images_per_concept: int = param(10, min=1, max=100)
    test_concepts: int = param(20, min=2, max=98, help="test concepts, one image each, unseen in training")
    train_repetitions: int = param(4, min=1, max=100)
    test_repetitions: int = param(20, min=1, max=1000)
    subjects: int = param(2, min=1, max=10)
    layout: str = param("official", choices=list(LAYOUTS), help="official: 17 ch, 100 Hz; nice: 63 ch, 250 Hz")
    image_size: int = param(64, min=16, max=512)
    jpeg_quality: int = param(90, min=50, max=100)
    snr: float = param(0.3, min=0.0, max=100.0, help="single-trial RMS of the evoked response over 0..0.5 s "
                       "/ RMS of the noise (roughly: each pattern has unit RMS, DRIVEN_TERMS of them per image)")
    own_share: float = param(0.25, min=0.0, max=1.0, help="share of that response's power that is image-specific")

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {list(LAYOUTS)}, got {self.layout!r}")
        if self.train_concepts + self.test_concepts > len(SHAPES) * len(COLOURS):
            raise ConfigError(f"{self.train_concepts} + {self.test_concepts} concepts exceed the "
                              f"{len(SHAPES) * len(COLOURS)} shape x colour concepts")

    @property
    def counts(self) -> Counts:
        """The set's sizes, as the readers check them."""
        return Counts(self.train_concepts, self.images_per_concept, self.test_concepts, self.train_repetitions,
                      self.test_repetitions)

    @property
    def eeg_layout(self) -> EegLayout:
        """The file variant written, at the twin's sizes."""
        return LAYOUTS[self.layout].with_counts(self.counts)


@dataclass(frozen=True)
class TwinImage:
    """One stimulus: its concept, where its file goes, and where its shape sits."""

    concept: Concept
    folder: str  # nnnnn_<colour>_<shape>
    file: str
    place: Placement


def choose_concepts(config: TwinConfig, seed: int) -> dict[str, list[Concept]]:
    """Disjoint training and test concepts, each sorted by name (their folders' order)."""
    every = [Concept(shape, colour) for colour in COLOURS for shape in SHAPES]
    order = stream(seed, "things-concepts").permutation(len(every))
    train = [every[k] for k in order[:config.train_concepts]]
    test = [every[k] for k in order[config.train_concepts:config.train_concepts + config.test_concepts]]
    return {p: sorted(c, key=label) for p, c in (("training", train), ("test", test))}


def label(concept: Concept) -> str:
    """The concept's name in folder and file names: `<colour>_<shape>`."""
    return f"{concept.colour}_{concept.shape}"


def write_images(config: TwinConfig, seed: int, folder: Path, concepts: list[Concept], per_concept: int,
                 partition: str) -> list[TwinImage]:
    """Render and save every image of one partition; return them in EEG condition order."""
    images = []
    for k, concept in enumerate(concepts):
        rng, name = stream(seed, f"things-{partition}-images", k), f"{k + 1:05d}_{label(concept)}"
        for j in range(per_concept):
            pixels, place = render_image(concept, config.image_size, rng)
            file = f"{label(concept)}_{j + 1:02d}s.jpg"
            save_jpeg(pixels, folder / name / file, config.jpeg_quality)
            images.append(TwinImage(concept, name, file, place))
    return images


def image_features(images: list[TwinImage]) -> np.ndarray:
    """What drives the EEG, (N, 10 shapes + 10 colours + 3): one-hot parts, then centred x, y and radius."""
    shapes, colours = list(SHAPES), list(COLOURS)
    parts = np.zeros((len(images), len(shapes) + len(colours) + 3), dtype=np.float32)
    for i, image in enumerate(images):
        parts[i, shapes.index(image.concept.shape)] = 1.0
        parts[i, len(shapes) + colours.index(image.concept.colour)] = 1.0
        place = image.place
        parts[i, -3:] = ((place.x - 0.5) / 0.1, (place.y - 0.5) / 0.1, (place.radius - 0.375) / 0.045)
    return parts


def pattern_parameters(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Parameters of `n` patterns of COMPONENTS posterior components each, every value (n, COMPONENTS)."""
    shape = (n, COMPONENTS)
    return dict(latency=rng.uniform(0.07, 0.45, shape), width=rng.uniform(0.03, 0.08, shape),
                freq=rng.uniform(1.0, 8.0, shape), phase=rng.uniform(0, 2 * np.pi, shape),
                amplitude=rng.uniform(0.6, 1.2, shape) * rng.choice([-1.0, 1.0], shape),
                centres=sim.random_directions(rng, n * COMPONENTS, sim.POSTERIOR, spread=0.9).reshape(*shape, 3),
                spread=rng.uniform(0.4, 0.9, shape))


def render_patterns(params: dict, subject: sim.Subject, positions: np.ndarray, times: np.ndarray) -> np.ndarray:
    """The patterns as one subject's scalp sees them (sources rotated, delayed, channel gains), (n, C, T)."""
    topo = sim.topography(params["centres"] @ subject.mixing.T, params["spread"], positions)  # (n, K, C)
    waves = sim.waveforms(times, params["latency"] + subject.latency_shift, params["width"], params["freq"],
                          params["phase"], params["amplitude"])  # (n, K, T)
    return np.einsum("nkc,nkt->nct", topo * subject.channel_gain, waves)


def channel_positions(names: tuple[str, ...]) -> np.ndarray:
    """Unit vectors of the named 10-05 electrodes, (C, 3)."""
    import mne

    ch_pos = mne.channels.make_standard_montage("colin27_1005").get_positions()["ch_pos"]
    return sim.unit(np.array([ch_pos[name] for name in names]))


def unit_patterns(params: dict, subject: sim.Subject, positions: np.ndarray, times: np.ndarray) -> np.ndarray:
    """`render_patterns`, each scaled to unit RMS over 0..0.5 s, (n, C, T)."""
    patterns = render_patterns(params, subject, positions, times)
    window = (times >= 0) & (times < 0.5)
    return patterns / (np.sqrt(np.mean(patterns[..., window] ** 2, axis=(1, 2), keepdims=True)) + 1e-12)


def evoked_responses(seed: int, subject: sim.Subject, features: np.ndarray, own_weights: np.ndarray,
                     config: TwinConfig, positions: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Noise-free responses of one subject to every image, (N, C, T): base + feature-driven + own patterns."""
    rng = stream(seed, "things-patterns")  # the same patterns for every subject (seen through each one)
    base, driven, own = (unit_patterns(pattern_parameters(rng, n), subject, positions, times)
                         for n in (1, features.shape[1], OWN_PATTERNS))
    driven_part = np.einsum("nf,fct->nct", features, driven) / np.sqrt(DRIVEN_TERMS)
    own_part = np.einsum("no,oct->nct", own_weights, own) / np.sqrt(OWN_PATTERNS)
    image_part = np.sqrt(1 - config.own_share) * driven_part + np.sqrt(config.own_share) * own_part
    return (config.snr * subject.gain * (base + image_part)).astype(np.float32)


def simulate_trials(rng: np.random.Generator, evoked: np.ndarray, repetitions: int, subject: sim.Subject,
                    times: np.ndarray, sfreq: float) -> np.ndarray:
    """Single trials of every image, baseline-corrected over t < 0, (N, R, C, T) float64."""
    n, n_channels, n_times = evoked.shape
    gain = np.exp(rng.normal(0, 0.2, (n, repetitions, 1, 1))).astype(np.float32)
    noise = sim.background(rng, subject, n * repetitions, n_times, sfreq, line_freq=50.0)
    trials = evoked[:, None] * gain + noise.reshape(n, repetitions, n_channels, n_times)
    trials -= trials[..., times < 0].mean(axis=-1, keepdims=True)
    return trials.astype(np.float64)


def epoch_times(layout: EegLayout) -> np.ndarray:
    """The `times` a file of `layout` stores (the whole epoch), (times_skip + n_times,)."""
    return layout.tmin + np.arange(layout.times_skip + layout.n_times) / layout.sfreq


def save_dict(path: Path, payload: dict, layout: EegLayout) -> None:
    """Write `payload` as the published files are: np.save (official) or pickle protocol 4 (250 Hz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout.times_skip == 0:
        np.save(path, payload, allow_pickle=True)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle, protocol=4)


def write_subject(config: TwinConfig, seed: int, number: int, folder: Path,
                  features: dict[str, np.ndarray]) -> None:
    """Simulate and write both preprocessed files of subject `number` (from 1)."""
    layout = config.eeg_layout
    times = epoch_times(layout)
    positions = channel_positions(layout.channels)
    subject = sim.make_subject(stream(seed, "things-subject", number), positions)
    for partition, name in EEG_FILES.items():
        own_weights = stream(seed, f"things-{partition}-own").normal(size=(len(features[partition]), OWN_PATTERNS))
        evoked = evoked_responses(seed, subject, features[partition], own_weights, config, positions, times)
        reps = layout.counts.conditions(partition)[1]
        trials = simulate_trials(stream(seed, f"things-{partition}-trials", number), evoked, reps, subject,
                                 times, layout.sfreq)  # (N, R, C, T of the whole epoch)
        payload = {"preprocessed_eeg_data": trials[..., layout.times_skip:], "ch_names": list(layout.channels),
                   "times": times}
        save_dict(subject_folder(folder, number) / name, payload, layout)


def metadata(images: dict[str, list[TwinImage]], things_ids: dict[str, int]) -> dict[str, list[str]]:
    """The dict of `image_metadata.npy`: the published keys, one entry per image."""
    payload = {}
    for partition, key in (("training", "train"), ("test", "test")):
        payload[f"{key}_img_concepts"] = [image.folder for image in images[partition]]
        payload[f"{key}_img_concepts_THINGS"] = [f"{things_ids[label(image.concept)]:05d}_{label(image.concept)}"
                                                 for image in images[partition]]
        payload[f"{key}_img_files"] = [image.file for image in images[partition]]
    return payload


def write_twin(config: TwinConfig, seed: int, root: str | Path) -> Path:
    """Write the whole twin to `root` (atomically: all of it or nothing); return `root`."""
    concepts = choose_concepts(config, seed)
    every = sorted(label(c) for part in concepts.values() for c in part)
    things_ids = {name: k + 1 for k, name in enumerate(every)}  # ids in the set of all concepts, as THINGS has
    with atomic_path(root) as tmp:
        image_dir, images = tmp / IMAGE_DIR, {}
        for partition, folder in IMAGE_FOLDERS.items():
            per_concept = config.images_per_concept if partition == "training" else 1
            images[partition] = write_images(config, seed, image_dir / folder, concepts[partition], per_concept,
                                             partition)
        np.save(image_dir / METADATA_FILE, metadata(images, things_ids), allow_pickle=True)
        features = {partition: image_features(part) for partition, part in images.items()}
        for number in range(1, config.subjects + 1):
            write_subject(config, seed, number, tmp / EEG_DIR, features)
    return Path(root)
