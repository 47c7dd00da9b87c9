"""The synthetic world: real schema, determinism, decodable EEG, loadable corpus."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import mne
import numpy as np
import pytest
import torch
from PIL import Image

from dreamdiffusion.core.config import ConfigError, parse_config
from dreamdiffusion.download.synthetic import EEG_FILE, SPLITS_FILE, SyntheticConfig, generate_world, probe_features
from dreamdiffusion.download.synthetic_images import SHAPES, Placement, shape_mask

TINY = SyntheticConfig(classes=3, shapes=3, images_per_class=4, extra_images_per_class=5, subjects=2,
                       image_size=32, length_outliers=0.2, corpus_recordings=3, corpus_min_seconds=2.0,
                       corpus_max_seconds=4.0, corpus_channels=[22, 64, 128],
                       corpus_sample_rates=[128.0, 250.0, 1000.0])


def make_world(tmp_path: Path, config: SyntheticConfig = TINY, seed: int = 0, name: str = "raw",
               workers: int = 1) -> Path:
    out = tmp_path / name
    out.mkdir()
    manifest = generate_world(config, seed, out, workers)
    assert (manifest.source, manifest.eeg_file, manifest.splits_file) == ("synthetic", EEG_FILE, SPLITS_FILE)
    assert (manifest.images_dir, manifest.captions_file, manifest.corpus_dir) == \
        ("images", "captions.json", "corpus")
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return make_world(tmp_path_factory.mktemp("synthetic"))


def test_eeg_file_has_the_real_schema(world):
    payload = torch.load(world / EEG_FILE, weights_only=True)
    assert type(payload) is dict and set(payload) == {"dataset", "labels", "images"}
    labels, images, dataset = payload["labels"], payload["images"], payload["dataset"]
    assert type(labels) is list and len(labels) == 3 and len(set(labels)) == 3
    assert all(type(w) is str and re.fullmatch(r"n0\d{7}", w) for w in labels)
    assert type(images) is list and len(images) == 3 * 4 and len(set(images)) == 12
    assert all(type(n) is str and re.fullmatch(r"n0\d{7}_\d+", n) for n in images)
    assert type(dataset) is list and len(dataset) == 3 * 4 * 2
    for trial in dataset:
        assert type(trial) is dict and list(trial) == ["eeg", "image", "label", "subject"]
        eeg = trial["eeg"]
        assert type(eeg) is torch.Tensor and eeg.dtype == torch.float32 and eeg.dim() == 2
        assert eeg.shape[0] == 128 and 430 <= eeg.shape[1] <= 660 and torch.isfinite(eeg).all()
        assert all(type(trial[key]) is int for key in ("image", "label", "subject"))
        assert 0 <= trial["image"] < 12 and 0 <= trial["label"] < 3 and trial["subject"] in (1, 2)
        assert images[trial["image"]].startswith(labels[trial["label"]] + "_")
    seen = sorted((t["subject"], t["image"]) for t in dataset)
    assert seen == [(s, i) for s in (1, 2) for i in range(12)]  # every subject sees every image once
    values = torch.cat([t["eeg"].flatten() for t in dataset])
    assert abs(values.mean()) < 0.05 and 0.9 < values.std() < 1.1  # standardized


def test_trial_lengths_vary_and_some_fall_outside_the_official_window(world):
    lengths = [t["eeg"].shape[1] for t in torch.load(world / EEG_FILE, weights_only=True)["dataset"]]
    inside = [450 <= n <= 600 for n in lengths]
    assert len(set(lengths)) > 10 and 0 < inside.count(False) < len(lengths) / 2


def test_splits_are_by_image_and_cover_every_trial(world):
    dataset = torch.load(world / EEG_FILE, weights_only=True)["dataset"]
    payload = torch.load(world / SPLITS_FILE, weights_only=True)
    assert type(payload) is dict and set(payload) == {"splits"} and len(payload["splits"]) == 1
    split = payload["splits"][0]
    assert type(split) is dict and set(split) == {"train", "val", "test"}
    assert all(type(i) is int for part in split.values() for i in part)
    trials = [set(split[p]) for p in ("train", "val", "test")]
    assert sum(map(len, trials)) == len(dataset) and set.union(*trials) == set(range(len(dataset)))
    images = [{dataset[i]["image"] for i in part} for part in trials]
    assert not (images[0] & images[1] or images[0] & images[2] or images[1] & images[2])
    for part in trials:  # every class in every part
        assert {dataset[i]["label"] for i in part} == {0, 1, 2}


def test_more_splits_are_different_partitions(tmp_path):
    config = dataclasses.replace(TINY, images_per_class=10, n_splits=3, extra_images_per_class=0,
                                 corpus_recordings=0)
    splits = torch.load(make_world(tmp_path, config) / SPLITS_FILE, weights_only=True)["splits"]
    assert len(splits) == 3 and len({tuple(s["test"]) for s in splits}) == 3


def test_images_captions_and_extras(world):
    payload = torch.load(world / EEG_FILE, weights_only=True)
    for wnid in payload["labels"]:
        files = sorted((world / "images" / wnid).iterdir())
        stimuli = [f for f in files if f.stem in payload["images"]]
        extras = [f for f in files if f.stem not in payload["images"]]
        assert len(stimuli) == 4 and len(extras) == 5
        assert all(re.fullmatch(rf"{wnid}_x\d+\.JPEG", f.name) for f in extras)
    for name in payload["images"]:
        with Image.open(world / "images" / name.rsplit("_", 1)[0] / f"{name}.JPEG") as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == (32, 32)
            image.load()
    captions = json.loads((world / "captions.json").read_text())
    assert list(captions) == payload["labels"] and len(set(captions.values())) == 3
    assert captions[payload["labels"][0]] == "a red circle"


def test_shapes_are_large_and_distinct():
    place = Placement(0.5, 0.5, 0.3, 0.2)
    masks = {shape: shape_mask(shape, place, 64) > 0.5 for shape in SHAPES}
    assert all(m.mean() > 0.08 for m in masks.values())  # small VAEs need big shapes
    for a in SHAPES:
        for b in SHAPES:
            if a < b:
                iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
                assert iou < 0.9, (a, b, iou)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    config = dataclasses.replace(TINY, extra_images_per_class=1, corpus_recordings=1)
    a, b, c = (make_world(tmp_path, config, seed, name) for seed, name in ((3, "a"), (3, "b"), (4, "c")))
    fif = "corpus/synthetic/rec000_raw.fif"
    for rel in (EEG_FILE, SPLITS_FILE, "captions.json", first_image(a), fif):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    for rel_a, rel_c in ((EEG_FILE, EEG_FILE), (first_image(a), first_image(c)), (fif, fif)):
        assert (a / rel_a).read_bytes() != (c / rel_c).read_bytes(), rel_a


def test_worker_processes_write_the_same_bytes(tmp_path):
    """Images, subjects and recordings over 2 worker processes (one BLAS thread each) = the loop in one process."""
    alone, pooled = make_world(tmp_path, TINY, 5, "alone"), make_world(tmp_path, TINY, 5, "pooled", workers=2)
    files = sorted(p.relative_to(alone) for p in alone.rglob("*") if p.is_file())
    assert len(files) == 3 * (4 + 5) + 3 + 3  # images, EEG + splits + captions, recordings
    assert files == sorted(p.relative_to(pooled) for p in pooled.rglob("*") if p.is_file())
    for rel in files:
        assert (alone / rel).read_bytes() == (pooled / rel).read_bytes(), rel


def first_image(world: Path) -> str:
    """Path, relative to the world, of the first stimulus image."""
    name = torch.load(world / EEG_FILE, weights_only=True)["images"][0]
    return f"images/{name.rsplit('_', 1)[0]}/{name}.JPEG"


def nearest_class_mean_accuracy(world: Path) -> float:
    """Train class means on the train split, classify the val + test trials."""
    features, labels, trials = probe_features(world / EEG_FILE, bins=16)
    split = torch.load(world / SPLITS_FILE, weights_only=True)["splits"][0]
    train = np.isin(trials, split["train"])
    features = (features - features[train].mean(0)) / features[train].std(0)
    means = np.stack([features[train & (labels == k)].mean(0) for k in np.unique(labels)])
    guess = np.argmin(((features[~train, None] - means) ** 2).sum(-1), axis=1)
    return float((guess == labels[~train]).mean())


@pytest.fixture(scope="module")
def decoding_config() -> SyntheticConfig:
    return dataclasses.replace(TINY, classes=4, shapes=4, images_per_class=20, extra_images_per_class=0,
                               image_size=16, length_outliers=0.0, corpus_recordings=0)


def test_eeg_carries_class_information_growing_with_snr(tmp_path, decoding_config):
    accuracy = {snr: nearest_class_mean_accuracy(make_world(
        tmp_path, dataclasses.replace(decoding_config, snr=snr), name=f"snr{snr}")) for snr in (0.05, 2.0)}
    assert accuracy[2.0] >= 0.75  # chance is 0.25
    assert accuracy[2.0] - accuracy[0.05] >= 0.3


def test_block_drift_alone_makes_blocks_decodable(tmp_path, decoding_config):
    """The block-design confound: no stimulus signal, yet the class block is readable."""
    config = dataclasses.replace(decoding_config, snr=0.0, subjects=1)
    accuracy = {drift: nearest_class_mean_accuracy(make_world(
        tmp_path, dataclasses.replace(config, block_drift=drift), name=f"drift{drift}"))
        for drift in (0.0, 2.0)}
    assert accuracy[2.0] >= 0.75 and accuracy[0.0] <= 0.5  # chance is 0.25


def test_corpus_loads_with_mne_in_volts_with_varied_layouts(world):
    files = sorted((world / "corpus" / "synthetic").glob("*_raw.fif"))
    assert [f.name for f in files] == ["rec000_raw.fif", "rec001_raw.fif", "rec002_raw.fif"]
    layouts = set()
    for path in files:
        raw = mne.io.read_raw_fif(path, preload=True, verbose=False)
        data = raw.get_data()
        assert raw.info["nchan"] in (22, 64, 128) and raw.info["sfreq"] in (128.0, 250.0, 1000.0)
        assert set(raw.get_channel_types()) == {"eeg"} and len(set(raw.ch_names)) == raw.info["nchan"]
        assert 2.0 <= data.shape[1] / raw.info["sfreq"] <= 4.0
        assert np.isfinite(data).all() and 1e-6 < data.std() < 1e-4  # volts, ~10 uV
        layouts.add((raw.info["nchan"], raw.info["sfreq"]))
    assert len(layouts) >= 2


def test_config_is_checked():
    with pytest.raises(ConfigError, match="min_length"):
        parse_config(SyntheticConfig, {"min_length": 600, "max_length": 500}, "synthetic")
    with pytest.raises(ConfigError, match="shapes"):
        parse_config(SyntheticConfig, {"classes": 100, "shapes": 2}, "synthetic")
    with pytest.raises(ConfigError, match="no training image"):
        parse_config(SyntheticConfig, {"images_per_class": 4, "val_fraction": 0.5, "test_fraction": 0.5},
                     "synthetic")
    with pytest.raises(ConfigError, match="snr"):
        parse_config(SyntheticConfig, {"snr": -1.0}, "synthetic")


def test_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "leftover.txt").write_text("x")
    with pytest.raises(FileExistsError, match="empty"):
        generate_world(TINY, 0, tmp_path)
