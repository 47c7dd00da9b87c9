"""THINGS-EEG2 raw data -> the same processed files as EEG-ImageNet (eeg.h5, images.h5, corpus.h5).

Splits follow the zero-shot protocol (Gifford et al., NeuroImage 2022; NICE-EEG, ATM, UBP): the test
partition is the test concepts, none of them a training concept; val is `things.val_concepts` whole
training concepts chosen by `things.val_seed` (disjoint by concept, as Gifford et al.'s 100 x 10 images);
train is every other training concept. Training images are single repetitions or their mean
(`things.train_repetitions`); val and test trials average repetitions (test: the first
`things.test_repetitions`), as every peer scores the test set. Intra-subject: each chosen subject's data
in every part; leave-one-subject-out: train and val from the other subjects, test from `test_subject`.
The class of a row is its concept: training concepts first, then the test concepts.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from dreamdiffusion.core import eeg_signal
from dreamdiffusion.core.config import ConfigError
from dreamdiffusion.core.fileio import DataError
from dreamdiffusion.core.progress import progress
from dreamdiffusion.download.raw import RawManifest
from dreamdiffusion.download.things_eeg2 import LAYOUTS, Counts, EegLayout, read_subject, subject_folder
from dreamdiffusion.download.things_eeg2_images import CONCEPT, IMAGE_FOLDERS, read_image, read_image_metadata
from dreamdiffusion.preprocess.config import PreprocessConfig, below_nyquist
from dreamdiffusion.preprocess.processed import SPLIT_CODES, H5Writer

TRAIN, VAL, TEST = (SPLIT_CODES[name] for name in ("train", "val", "test"))


def val_concept_mask(train_concepts: int, val_concepts: int, seed: int) -> np.ndarray:
    """(train_concepts,) bool: True for the training concepts held out as val (whole concepts, seeded)."""
    if val_concepts >= train_concepts:
        raise ConfigError(f"preprocess.things.val_concepts {val_concepts} must be below the {train_concepts} "
                          "training concepts (some must remain to train on)")
    mask = np.zeros(train_concepts, bool)
    mask[np.random.default_rng(seed).choice(train_concepts, val_concepts, replace=False)] = True
    return mask


def subject_roles(present: list[int], config: PreprocessConfig) -> dict[int, tuple[int, ...]]:
    """Subject -> the split codes its trials enter, per `things.protocol`."""
    chosen = list(config.subjects) or present
    missing = sorted(set(chosen) - set(present))
    if missing:
        raise ConfigError(f"preprocess.subjects: subject {missing[0]} is not in the raw data (subjects {present})")
    if config.things.protocol == "intra-subject":
        return {s: (TRAIN, VAL, TEST) for s in chosen}
    test = config.things.test_subject
    if test not in chosen or len(chosen) < 2:
        raise ConfigError(f"preprocess.things.test_subject {test}: leave-one-subject-out needs it among at least two "
                          f"subjects, got preprocess.subjects {chosen}")
    return {s: (TEST,) if s == test else (TRAIN, VAL) for s in chosen}


@dataclasses.dataclass
class Rows:
    """Which trials one subject contributes: per part, the image rows and how repetitions combine."""

    train: np.ndarray  # training-image indices of train rows
    val: np.ndarray  # training-image indices of val rows (mean of their repetitions)
    test: np.ndarray  # test-image indices (mean of the first `test_reps` repetitions)

    def count(self, train_reps: int) -> int:
        """Trials these rows make."""
        return len(self.train) * train_reps + len(self.val) + len(self.test)


def subject_rows(roles: tuple[int, ...], image_split: np.ndarray, n_test: int) -> Rows:
    """The rows of one subject, from its roles and the split code of each training image."""
    none = np.empty(0, np.int64)
    return Rows(np.flatnonzero(image_split == TRAIN) if TRAIN in roles else none,
                np.flatnonzero(image_split == VAL) if VAL in roles else none,
                np.arange(n_test) if TEST in roles else none)


def process(eeg: np.ndarray, config: PreprocessConfig, sfreq: float) -> np.ndarray:
    """Trials (N, C, T) -> (N, C, samples) float32: optional filters, resampling, normalisation."""
    eeg = np.asarray(eeg, dtype=np.float64)
    if config.bandpass:
        below_nyquist("preprocess.bandpass", config.bandpass[1:], "the THINGS-EEG2 rate", sfreq)
        eeg = eeg_signal.bandpass(eeg, sfreq, *config.bandpass)
    if config.notch:
        below_nyquist("preprocess.notch", config.notch, "the THINGS-EEG2 rate", sfreq)
        eeg = eeg_signal.notch(eeg, sfreq, config.notch)
    if eeg.shape[-1] != config.samples:
        eeg = eeg_signal.resample(eeg, config.samples, config.resample)
    if config.normalize == "channel":
        eeg = eeg_signal.zscore_channels(eeg)
    return eeg.astype(np.float32)


def subject_trials(parts: dict, rows: Rows, config: PreprocessConfig, test_reps: int):
    """(trials (N, C, T) as read, image index into the training+test images, split code) of one subject."""
    train, test = parts["training"].data, parts["test"].data  # (N_img, R, C, T)
    n_train_images = len(train)
    if config.things.train_repetitions == "single":
        single = train[rows.train].reshape(-1, *train.shape[2:])  # (images * R, C, T), image-major
        train_index = np.repeat(rows.train, train.shape[1])
    else:
        single, train_index = train[rows.train].mean(axis=1), rows.train
    blocks = [single, train[rows.val].mean(axis=1), test[rows.test][:, :test_reps].mean(axis=1)]
    index = np.concatenate([train_index, rows.val, n_train_images + rows.test])
    codes = np.concatenate([np.full(len(train_index), TRAIN), np.full(len(rows.val), VAL),
                            np.full(len(rows.test), TEST)]).astype(np.int8)
    return np.concatenate(blocks), index.astype(np.int64), codes


@dataclasses.dataclass
class ThingsSet:
    """What the raw folder holds, as `preprocess` needs it."""

    eeg_root: Path
    image_root: Path
    layout: EegLayout
    subjects: list[int]
    concepts: list[str]  # class names: the training concept folders, then the test ones
    image_paths: list[Path]  # training images (condition order), then test images
    image_concept: np.ndarray  # (images,) class of each image

    @property
    def n_train_concepts(self) -> int:
        return self.layout.counts.train_concepts


def read_things_set(raw_dir: Path, manifest: RawManifest) -> ThingsSet:
    """The layout, subjects, concepts and image paths a THINGS-EEG2 raw folder holds (metadata checked)."""
    from dreamdiffusion.download.things_eeg2_images import check_image_set

    info = manifest.things
    try:
        layout = LAYOUTS[info["layout"]].with_counts(Counts(**info["counts"]))
        subjects = [int(s) for s in info["subjects"]]
    except (KeyError, TypeError) as err:
        raise DataError(f"{raw_dir / 'manifest.json'}: key 'things' is not a THINGS-EEG2 description ({err}); "
                        "rerun the `download` stage") from None
    image_root = raw_dir / manifest.images_dir
    metadata = read_image_metadata(raw_dir / manifest.splits_file, layout.counts)
    paths = check_image_set(image_root, metadata)
    per = layout.counts.images_per_concept
    concepts = list(metadata.train_concepts[::per]) + list(metadata.test_concepts)
    image_concept = np.concatenate([np.arange(len(paths["training"])) // per,
                                    layout.counts.train_concepts + np.arange(len(paths["test"]))])
    return ThingsSet(raw_dir / manifest.eeg_file, image_root, layout, subjects, concepts,
                     paths["training"] + paths["test"], image_concept.astype(np.int64))


def caption(concept_folder: str) -> str:
    """The class caption of a concept folder `00001_aardvark` (its name, underscores as spaces)."""
    return f"a photo of {CONCEPT.fullmatch(concept_folder)[2].replace('_', ' ')}"


def image_splits(things: ThingsSet, val_mask: np.ndarray) -> np.ndarray:
    """(images,) split code of every image, by its concept: train, val (held-out concepts) or test."""
    concept_code = np.where(val_mask, VAL, TRAIN)
    n_train = things.n_train_concepts
    return np.array([concept_code[c] if c < n_train else TEST for c in things.image_concept], np.int8)


def write_images(things: ThingsSet, split: np.ndarray, size: int, writer: H5Writer) -> dict:
    """images.h5: every training image, then every test image, centre-cropped and resized to `size`."""
    pixels = writer.rows("images", (len(things.image_paths), size, size, 3), np.uint8)
    for row, path in enumerate(progress(things.image_paths, desc="images", unit="img", mininterval=1.0)):
        image = Image.fromarray(read_image(path))
        pixels[row] = np.asarray(ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC), np.uint8)
    names = [f"{p.parent.parent.name}/{p.parent.name}/{p.name}" for p in things.image_paths]
    index = dict(image_names=names, labels=things.image_concept, split=split, class_names=things.concepts,
                 captions=[caption(c) for c in things.concepts])
    for key, value in index.items():
        writer.put(key, value)
    return index


def write_eeg(things: ThingsSet, roles: dict, image_split: np.ndarray, config: PreprocessConfig,
              writer: H5Writer) -> tuple[dict, list]:
    """eeg.h5, one subject at a time: the processed trials (N, C, samples) and their index arrays;
    returns the index and a few (trial, as read, processed) examples for the figure."""
    counts, layout = things.layout.counts, things.layout
    train_reps = counts.train_repetitions if config.things.train_repetitions == "single" else 1
    test_reps = min(config.things.test_repetitions or counts.test_repetitions, counts.test_repetitions)
    n_train_images = counts.train_concepts * counts.images_per_concept
    rows = {s: subject_rows(r, image_split[:n_train_images], counts.test_concepts) for s, r in roles.items()}
    total = sum(r.count(train_reps) for r in rows.values())
    eeg = writer.rows("eeg", (total, len(layout.channels), config.samples), np.float32)
    index, start, examples = {"image_index": [], "subject": [], "split": []}, 0, []
    for subject, subject_rows_ in progress(list(rows.items()), desc="preprocess EEG", unit="subject"):
        parts = read_subject(subject_folder(things.eeg_root, subject), layout)
        trials, image_index, codes = subject_trials(parts, subject_rows_, config, test_reps)
        for a in range(0, len(trials), 1024):  # bounded temporaries
            eeg[start + a: start + a + len(trials[a:a + 1024])] = process(trials[a:a + 1024], config, layout.sfreq)
        if not examples:
            examples = [(int(r), trials[r], eeg[start + r]) for r in
                        np.linspace(0, len(trials) - 1, min(config.figure_trials, len(trials))).astype(int)]
        index["image_index"].append(image_index)
        index["subject"].append(np.full(len(trials), subject, np.int64))
        index["split"].append(codes)
        start += len(trials)
    index = {key: np.concatenate(value) for key, value in index.items()}
    index.update(label=things.image_concept[index["image_index"]], trial=np.arange(total, dtype=np.int64),
                 class_names=things.concepts)
    for key, value in index.items():
        writer.put(key, value)
    return index, examples


def counts(values: np.ndarray, names: dict) -> dict[str, int]:
    """{name of value: count}, for the report."""
    found, total = np.unique(values, return_counts=True)
    return {str(names.get(int(k), k)): int(n) for k, n in zip(found, total)}


def report(things: ThingsSet, config: PreprocessConfig, eeg: dict, images: dict, corpus: dict, roles: dict) -> dict:
    """Counts per split and subject, the concepts held out as val, the protocol, the corpus size."""
    names = {code: name for name, code in SPLIT_CODES.items()}
    concepts_per_split = {names[c]: int(len(np.unique(eeg["label"][eeg["split"] == c]))) for c in (TRAIN, VAL, TEST)}
    val = sorted({things.concepts[c] for c in eeg["label"][eeg["split"] == VAL]})
    return {"dataset": "things-eeg2", "layout": things.layout.name, "protocol": config.things.protocol,
            "subjects_per_part": {names[c]: sorted(s for s, r in roles.items() if c in r) for c in (TRAIN, VAL, TEST)},
            "trials_kept": int(len(eeg["label"])), "trials_per_split": counts(eeg["split"], names),
            "trials_per_subject": counts(eeg["subject"], {}), "concepts_per_split": concepts_per_split,
            "val_concepts": val, "images_per_split": counts(images["split"], names),
            "train_repetitions": config.things.train_repetitions,
            "test_repetitions": config.things.test_repetitions or things.layout.counts.test_repetitions,
            "channels": len(things.layout.channels), "samples": config.samples, "sample_rate": things.layout.sfreq,
            "corpus_windows": int(corpus["windows"])}


def run_things(raw_dir: Path, manifest: RawManifest, config: PreprocessConfig, out, settings) -> tuple[dict, list, dict]:
    """Read a THINGS-EEG2 raw folder (download/things_source.py), write images.h5, eeg.h5 and corpus.h5 (its
    windows by `settings`, CorpusSettings, at this data's channels); return the report, the figure's example
    trials and the figure's axes."""
    from dreamdiffusion.preprocess.corpus import build_corpus
    from dreamdiffusion.preprocess.processed import H5Array

    things = read_things_set(raw_dir, manifest)
    val_mask = val_concept_mask(things.n_train_concepts, config.things.val_concepts, config.things.val_seed)
    split = image_splits(things, val_mask)
    roles = subject_roles(things.subjects, config)
    with H5Writer(out.eeg, {"samples": config.samples}) as writer:
        eeg, examples = write_eeg(things, roles, split, config, writer)
    with H5Writer(out.images, {"image_size": config.image_size}) as writer:
        images = write_images(things, split, config.image_size, writer)
    channels = len(things.layout.channels)
    settings = dataclasses.replace(settings, channels=channels, sample_rate=things.layout.sfreq)
    corpus = build_corpus(None, config.pretrain_sources, {**eeg, "eeg": H5Array(out.eeg, "eeg")}, settings, out.corpus)
    figure = dict(sample_rate=things.layout.sfreq, crop=(0, things.layout.n_times),
                  channels=(0, channels // 2, channels - 1))
    return report(things, config, eeg, images, corpus, roles), examples, figure
