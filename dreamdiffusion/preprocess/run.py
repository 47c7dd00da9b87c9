"""Paired EEG-image preprocessing: trial selection, signal processing, image resizing.

Follows the official loader by default (keep 450 <= T <= 600, crop 20:460, linear interpolation
to 512 samples, no normalisation) and exposes every choice as a param.
"""
from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from dreamdiffusion.core import eeg_signal
from dreamdiffusion.core.fileio import DataError
from dreamdiffusion.core.progress import progress
from dreamdiffusion.core.results import StageResult
from dreamdiffusion.download.raw import image_path
from dreamdiffusion.preprocess.config import OFFICIAL_CHANNELS, PreprocessConfig
from dreamdiffusion.preprocess.corpus import CorpusSettings
from dreamdiffusion.preprocess.processed import SPLIT_CODES, UNUSED, H5Writer

CHANNELS = 128


# ----------------------------------------------------------------------------- trial selection

def split_trials(dataset: list[dict], splits: list[dict], config: PreprocessConfig,
                 source: str = "splits file") -> dict[int, str]:
    """Map trial index (into `dataset`) -> split name, resolving `_single` indexing."""
    if config.split >= len(splits):
        raise DataError(f"{source}: split {config.split} requested but the file has "
                        f"{len(splits)} split(s) (preprocess.split)")
    if config.splits_index == "single":
        (subject,) = config.subjects
        index_map = [i for i, trial in enumerate(dataset) if trial["subject"] == subject]
        meaning = f"the {len(index_map)} trials of subject {subject}"
    else:
        index_map, meaning = list(range(len(dataset))), f"the {len(dataset)} trials"
    assignment = {}
    for part in ("train", "val", "test"):
        indices = splits[config.split][part]
        bad = [i for i in indices if not 0 <= i < len(index_map)]
        if bad:
            raise DataError(
                f"{source}: split {config.split} '{part}' has indices {bad[:5]} outside {meaning} "
                f"(preprocess.splits_index={config.splits_index!r}; the _all files index every "
                f"trial, the _single files the trials of one subject)")
        for i in indices:
            assignment[index_map[i]] = part
    return assignment


def select_trials(dataset: list[dict], assignment: dict[int, str], config: PreprocessConfig):
    """Trials to keep (sorted indices) and the reason each other trial was dropped."""
    kept, dropped = [], collections.Counter()
    for index, trial in enumerate(dataset):
        length = trial["eeg"].shape[-1]
        if config.subjects and trial["subject"] not in config.subjects:
            dropped["subject_not_selected"] += 1
        elif index not in assignment:
            dropped["not_in_split"] += 1
        elif length < config.min_length:
            dropped["too_short"] += 1
        elif length > config.max_length:
            dropped["too_long"] += 1
        else:
            kept.append(index)
    return kept, dict(dropped)


# ----------------------------------------------------------------------------- signal processing

def process_trial(eeg: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """One trial (128, T) -> (128, samples) float32: filter, crop, resample, normalise."""
    eeg = np.asarray(eeg, dtype=np.float64)
    if config.bandpass:
        eeg = eeg_signal.bandpass(eeg, config.sample_rate, *config.bandpass)
    if config.notch:
        eeg = eeg_signal.notch(eeg, config.sample_rate, config.notch)
    # like the official loader, a trial shorter than crop_end is cropped to its end
    eeg = eeg_signal.crop(eeg, config.crop_start, min(config.crop_end, eeg.shape[-1]))
    eeg = eeg_signal.resample(eeg, config.samples, config.resample)
    if config.normalize == "channel":
        eeg = eeg_signal.zscore_channels(eeg)
    return eeg.astype(np.float32)


def process_trials(dataset: list[dict], kept: list[int], config: PreprocessConfig, out) -> None:
    """Process the kept trials one at a time into `out` (N, 128, samples), an array or HDF5 dataset."""
    for row, index in enumerate(progress(kept, desc="preprocess EEG", unit="trial", mininterval=1.0)):
        out[row] = process_trial(dataset[index]["eeg"].numpy(), config)


# ----------------------------------------------------------------------------- images

def image_splits(dataset: list[dict], assignment: dict[int, str], n_images: int) -> np.ndarray:
    """Split code of each stimulus image from its trials' parts (UNUSED when in none)."""
    codes = np.full(n_images, UNUSED, np.int8)
    for index, part in assignment.items():
        codes[dataset[index]["image"]] = SPLIT_CODES[part]
    return codes


def load_image(path: Path, size: int) -> np.ndarray:
    """An RGB image centre-cropped to a square and resized to (size, size, 3) uint8."""
    try:
        with Image.open(path) as img:
            img = ImageOps.fit(img.convert("RGB"), (size, size), Image.Resampling.BICUBIC)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot decode image ({err})") from None
    return np.asarray(img, dtype=np.uint8)


def extra_images(images_dir: Path, class_ids: list[str], known: set[str]) -> list[tuple[str, int]]:
    """Images in the class folders that the EEG file never lists: (name, label), sorted."""
    extras = []
    for label, class_id in enumerate(class_ids):
        for path in sorted((images_dir / class_id).glob("*.JPEG")):
            if path.stem not in known:
                extras.append((path.stem, label))
    return extras


def write_image_set(payload: dict, assignment: dict[int, str], images_dir: Path, config: PreprocessConfig,
                    writer: H5Writer) -> dict:
    """images.h5: every stimulus image (in the EEG file's order), then the extra images when
    `config.extra_images`, resized and written one at a time; returns the index arrays."""
    dataset, class_ids, names = payload["dataset"], payload["labels"], payload["images"]
    labels = np.full(len(names), -1, np.int64)
    for trial in dataset:
        labels[trial["image"]] = trial["label"]
    split = image_splits(dataset, assignment, len(names))
    extras = extra_images(images_dir, class_ids, set(names)) if config.extra_images else []
    all_names = list(names) + [name for name, _ in extras]
    all_labels = np.concatenate([labels, np.array([lab for _, lab in extras], np.int64)])
    all_split = np.concatenate([split, np.full(len(extras), SPLIT_CODES["extra"], np.int8)])
    size = config.image_size
    pixels = writer.rows("images", (len(all_names), size, size, 3), np.uint8)
    for row, (name, label) in enumerate(progress(list(zip(all_names, all_labels)), desc="images",
                                            unit="img", mininterval=1.0)):
        if label < 0:  # listed in `images` but shown in no trial: nothing tells its class
            raise DataError(f"image {name!r} (index {row}) is listed but no trial shows it")
        pixels[row] = load_image(image_path(images_dir, class_ids[label], name), size)
    index = dict(image_names=all_names, labels=all_labels, split=all_split, class_names=list(class_ids))
    for key, value in index.items():
        writer.put(key, value)
    return index


def counts(values: np.ndarray, names: dict | None = None) -> dict[str, int]:
    """{value (or its name): count}, for the preprocessing report."""
    found = collections.Counter(values.tolist())
    return {str(names.get(k, k) if names else k): int(v) for k, v in sorted(found.items())}


# ----------------------------------------------------------------------------- entry point

@dataclasses.dataclass(frozen=True)
class ProcessedPaths:
    """Where `run_preprocess` writes its three files (the stage passes temporary paths)."""

    images: Path
    eeg: Path
    corpus: Path


@dataclasses.dataclass
class Preprocessed:
    """What `run_preprocess` returns besides its files: the report and a few example trials."""

    report: dict
    examples: list[tuple[int, np.ndarray, np.ndarray]]  # (trial, raw (C, T), processed (C, S))
    sample_rate: float | None = None  # Hz of the raw trials in the figure (None: preprocess.sample_rate)
    crop: tuple[int, int] | None = None  # the window shaded in the figure (None: crop_start, crop_end)
    channels: tuple[int, ...] = (0, 64, 127)  # channels drawn in the figure


def corpus_settings(config: PreprocessConfig) -> CorpusSettings:
    """The corpus part of the config."""
    return CorpusSettings(
        channels=CHANNELS, samples=config.samples, sample_rate=config.corpus_sample_rate,
        bandpass=tuple(config.corpus_bandpass), channel_mode=config.corpus_channels,
        scale=config.corpus_scale, divisor=config.corpus_divisor, stride=config.corpus_stride,
        max_windows=config.corpus_max_windows,
    )


def paired_index(payload: dict, kept: list[int], assignment: dict[int, str]) -> dict:
    """The eeg.h5 index arrays of the kept trials (everything but the EEG)."""
    dataset = payload["dataset"]
    field_of = lambda key: np.array([dataset[i][key] for i in kept], np.int64)  # noqa: E731
    return dict(label=field_of("label"), image_index=field_of("image"), subject=field_of("subject"),
                trial=np.array(kept, np.int64), split=np.array([SPLIT_CODES[assignment[i]] for i in kept], np.int8),
                class_names=list(payload["labels"]))


def write_paired(payload: dict, kept: list[int], index: dict, config: PreprocessConfig, writer: H5Writer) -> None:
    """eeg.h5: the processed EEG (chunked one trial per chunk, written trial by trial) and `index`."""
    eeg = writer.rows("eeg", (len(kept), CHANNELS, config.samples), np.float32)
    process_trials(payload["dataset"], kept, config, eeg)
    for key, value in index.items():
        writer.put(key, value)


def check_split_images(eeg: dict) -> None:
    """No image may appear in two parts of the split (the 'by image' guarantee)."""
    parts: dict[int, set] = collections.defaultdict(set)
    for image, code in zip(eeg["image_index"].tolist(), eeg["split"].tolist()):
        parts[image].add(code)
    shared = [image for image, codes in parts.items() if len(codes) > 1]
    if shared:
        raise DataError(f"images {shared[:5]} appear in more than one part of the split "
                        f"({len(shared)} in all): the split is not by image")


def report(payload: dict, eeg: dict, images: dict, corpus: dict, dropped: dict, crop_end: int) -> dict:
    """Counts per split, class and subject; dropped trials with reasons; corpus sizes."""
    split_names = {v: k for k, v in SPLIT_CODES.items()} | {UNUSED: "unused"}
    by_split = {name: counts(eeg["label"][eeg["split"] == code], dict(enumerate(payload["labels"])))
                for name, code in SPLIT_CODES.items() if name != "extra"}
    return {
        "trials_in_file": len(payload["dataset"]), "trials_kept": int(len(eeg["label"])),
        "trials_shorter_than_crop": int(sum(payload["dataset"][t]["eeg"].shape[-1] < crop_end
                                            for t in eeg["trial"])),
        "dropped": dropped, "trials_per_split": counts(eeg["split"], split_names),
        "trials_per_subject": counts(eeg["subject"]), "trials_per_class_per_split": by_split,
        "images_per_split": counts(images["split"], split_names),
        "corpus_windows": int(corpus["windows"]), "corpus_recordings": len(corpus["recordings"]),
        "corpus_windows_per_source": counts(np.array(corpus["sources"])[corpus["recording"]])
        if len(corpus["recording"]) else {},
    }


def check_model_input(payload: dict, kept: list[int], config: PreprocessConfig, eeg_file: Path) -> None:
    """`model_input: official`: refuse EEG the official checkpoint cannot take (not 128 channels)."""
    if config.model_input != "official":
        return
    channels = {int(payload["dataset"][i]["eeg"].shape[0]) for i in kept}
    if channels != {OFFICIAL_CHANNELS}:
        raise DataError(f"{eeg_file}: trials have {sorted(channels)} channels; preprocess.model_input official "
                        f"(the official checkpoint) takes exactly {OFFICIAL_CHANNELS}")


def run_preprocess(raw_dir: Path, config: PreprocessConfig, out: ProcessedPaths) -> Preprocessed:
    """Read a raw-data folder (see raw.py), write images.h5, eeg.h5 and corpus.h5 to `out`
    (streamed: neither images nor EEG nor corpus windows are held in memory at once)."""
    from dreamdiffusion.download.eeg_imagenet import load_eeg_file, load_splits_file
    from dreamdiffusion.download.raw import RawManifest, read_captions
    from dreamdiffusion.preprocess.corpus import build_corpus
    from dreamdiffusion.preprocess.processed import H5Array

    manifest = RawManifest.read(raw_dir)
    manifest.verify(raw_dir)
    if manifest.things is not None:
        from dreamdiffusion.preprocess.things import run_things

        found, examples, figure = run_things(raw_dir, manifest, config, out, corpus_settings(config))
        return Preprocessed(found, examples, **figure)
    payload = load_eeg_file(raw_dir / manifest.eeg_file)
    splits = load_splits_file(raw_dir / manifest.splits_file)
    assignment = split_trials(payload["dataset"], splits, config, manifest.splits_file)
    kept, dropped = select_trials(payload["dataset"], assignment, config)
    if not kept:
        raise DataError(f"no trial survives selection (dropped: {dropped}); check preprocess.subjects "
                        "and the length bounds")
    eeg = paired_index(payload, kept, assignment)
    check_split_images(eeg)
    check_model_input(payload, kept, config, raw_dir / manifest.eeg_file)
    with H5Writer(out.eeg, {"samples": config.samples}) as writer:
        write_paired(payload, kept, eeg, config, writer)
    with H5Writer(out.images, {"image_size": config.image_size}) as writer:
        images = write_image_set(payload, assignment, raw_dir / manifest.images_dir, config, writer)
        images["captions"] = read_captions(
            raw_dir / manifest.captions_file if manifest.captions_file else None, images["class_names"])
        writer.put("captions", images["captions"])
    processed = H5Array(out.eeg, "eeg")
    corpus_root = raw_dir / manifest.corpus_dir if manifest.corpus_dir else None
    corpus = build_corpus(corpus_root, config.pretrain_sources, {**eeg, "eeg": processed},
                          corpus_settings(config), out.corpus)
    examples = [(kept[r], payload["dataset"][kept[r]]["eeg"].numpy(), processed[int(r)])
                for r in np.linspace(0, len(kept) - 1, min(config.figure_trials, len(kept))).astype(int)]
    return Preprocessed(report(payload, eeg, images, corpus, dropped, config.crop_end), examples)


@dataclasses.dataclass(frozen=True)
class PreprocessPaths:
    """What the `preprocess` stage reads and writes."""

    raw: Path  # the raw-data folder (raw.py's layout)
    processed: ProcessedPaths  # images.h5, eeg.h5, corpus.h5
    report: Path  # json: counts per split, class, subject; dropped trials; corpus sizes
    figure: Path  # png: a few trials raw vs processed


def run(config: PreprocessConfig, paths: PreprocessPaths) -> StageResult:
    """The `preprocess` stage: the three processed files (atomically), the report and the figure."""
    from dreamdiffusion.core.fileio import atomic_path, write_json
    from dreamdiffusion.core.plots import raw_vs_processed

    out = paths.processed
    with atomic_path(out.images) as images, atomic_path(out.eeg) as eeg, atomic_path(out.corpus) as corpus:
        result = run_preprocess(paths.raw, config, ProcessedPaths(images=images, eeg=eeg, corpus=corpus))
    raw_vs_processed(result.examples, result.sample_rate or config.sample_rate,
                     result.crop or (config.crop_start, config.crop_end), paths.figure, result.channels)
    write_json(paths.report, result.report)
    return StageResult({k: v for k, v in result.report.items() if isinstance(v, int)},
                       [(paths.report, None), (paths.figure, None)])
