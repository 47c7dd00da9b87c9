"""THINGS-EEG2 at the published shapes: random data of one subject, (16540, 4, 17, 100) + (200, 80, 17, 100),
with 1654 x 10 + 200 image files, through `download` (things-local: every file read and checked) and
`preprocess`; and the 63-channel 250 Hz variant at its per-trial shape. Reports time and peak memory.

Run with `pytest -m realscale -s tests/test_things_realscale.py` (writes ~1.2 GB under the tmp folder).
"""
from __future__ import annotations

import json
import pickle
import resource
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamdiffusion.download import run as download
from dreamdiffusion.download.config import DownloadConfig
from dreamdiffusion.download.things_eeg2 import LAYOUTS, NICE_250HZ, OFFICIAL, Counts, EegLayout
from dreamdiffusion.download.things_eeg2_images import METADATA_FILE
from dreamdiffusion.preprocess import run as preprocess
from dreamdiffusion.preprocess.config import PreprocessConfig, ThingsConfig
from dreamdiffusion.preprocess.processed import load_paired_eeg

pytestmark = pytest.mark.realscale


def write_eeg(folder: Path, layout: EegLayout, seed: int) -> None:
    """Both files of sub-01, float64 random data, written as the published code writes them."""
    times = layout.tmin + np.arange(layout.times_skip + layout.n_times) / layout.sfreq
    rng = np.random.default_rng(seed)
    for partition, name in (("training", "preprocessed_eeg_training.npy"), ("test", "preprocessed_eeg_test.npy")):
        payload = {"preprocessed_eeg_data": rng.standard_normal(layout.shape(partition)),
                   "ch_names": list(layout.channels), "times": times}
        path = folder / "sub-01" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if layout.times_skip == 0:
            np.save(path, payload, allow_pickle=True)
        else:
            path.write_bytes(pickle.dumps(payload, protocol=4))
        del payload


def write_images(root: Path, counts: Counts) -> None:
    """The image set at `counts`: one 8 x 8 JPEG per image, and image_metadata.npy."""
    pixels = Image.fromarray(np.full((8, 8, 3), 128, np.uint8))
    meta = {key: [] for key in ("train_img_concepts", "train_img_files", "test_img_concepts", "test_img_files")}
    for key, folder, concepts, per in (("train", "training_images", counts.train_concepts, counts.images_per_concept),
                                       ("test", "test_images", counts.test_concepts, 1)):
        for k in range(concepts):
            concept = f"{k + 1:05d}_{key}concept{k}"
            (root / folder / concept).mkdir(parents=True)
            for j in range(per):
                pixels.save(root / folder / concept / f"{key}concept{k}_{j + 1:02d}s.jpg")
                meta[f"{key}_img_concepts"].append(concept)
                meta[f"{key}_img_files"].append(f"{key}concept{k}_{j + 1:02d}s.jpg")
    np.save(root / METADATA_FILE, meta, allow_pickle=True)


def download_and_preprocess(tmp: Path, layout_name: str, samples: int) -> dict:
    """things-local download then preprocess of the folder under `tmp`; seconds and peak RSS of each."""
    user, out, timing = tmp / "user", tmp / "repo", {}
    config = DownloadConfig(source="things-local", things_eeg_dir=str(user / "preprocessed_data"),
                            things_images_dir=str(user / "image_set"), things_layout=layout_name)
    start = time.perf_counter()
    download.run(config, download.DownloadPaths(raw=out / "raw"), 0, tmp)
    timing["download_s"] = time.perf_counter() - start
    timing["download_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    folder = out / "processed"
    paths = preprocess.PreprocessPaths(raw=out / "raw", processed=preprocess.ProcessedPaths(
        folder / "images.h5", folder / "eeg.h5", folder / "corpus.h5"), report=folder / "report.json",
        figure=folder / "figure.png")
    start = time.perf_counter()
    preprocess.run(PreprocessConfig(samples=samples, image_size=8, extra_images=False,
                                    things=ThingsConfig(val_concepts=100, train_repetitions="single")), paths)
    timing["preprocess_s"] = time.perf_counter() - start
    timing["preprocess_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{layout_name}: {json.dumps({k: round(v, 1) for k, v in timing.items()})}")
    return json.loads((folder / "report.json").read_text())


def test_official_17_channels_100_hz_at_the_published_shape(tmp_path):
    write_eeg(tmp_path / "user/preprocessed_data", OFFICIAL, 0)
    write_images(tmp_path / "user/image_set", OFFICIAL.counts)
    report = download_and_preprocess(tmp_path, "official", 100)
    assert report["trials_per_split"] == {"train": (1654 - 100) * 10 * 4, "val": 1000, "test": 200}
    eeg = load_paired_eeg(tmp_path / "repo/processed/eeg.h5")
    assert eeg.eeg.shape == (62160 + 1000 + 200, 17, 100)


def test_nice_63_channels_250_hz_at_its_trial_shape(tmp_path, monkeypatch):
    # 63 x 250 float64 at all 16540 x 4 trials is an 8.3 GB pickle: a tenth of the training concepts here
    counts = Counts(train_concepts=166)
    monkeypatch.setitem(LAYOUTS, "nice", NICE_250HZ.with_counts(counts))
    write_eeg(tmp_path / "user/preprocessed_data", LAYOUTS["nice"], 1)
    write_images(tmp_path / "user/image_set", counts)
    report = download_and_preprocess(tmp_path, "nice", 250)
    assert report["trials_per_split"] == {"train": (166 - 100) * 10 * 4, "val": 1000, "test": 200}
    assert report["channels"] == 63 and report["sample_rate"] == 250.0
