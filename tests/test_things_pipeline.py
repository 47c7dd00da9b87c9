"""THINGS-EEG2 in the stages: download (twin, local), preprocess splits and repetitions, protocols, refusals."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from dreamdiffusion.core.config import ConfigError, parse_config
from dreamdiffusion.core.fileio import DataError
from dreamdiffusion.download import run as download
from dreamdiffusion.download.config import DownloadConfig
from dreamdiffusion.download.things_eeg2 import OFFICIAL, read_subject, subject_folder
from dreamdiffusion.download.things_twin import TwinConfig, write_twin
from dreamdiffusion.preprocess import run as preprocess
from dreamdiffusion.preprocess.config import PreprocessConfig, ThingsConfig
from dreamdiffusion.preprocess.processed import SPLIT_CODES, load_images, load_paired_eeg

TWIN = TwinConfig(train_concepts=8, images_per_concept=2, test_concepts=4, train_repetitions=2, test_repetitions=3,
                  subjects=2, image_size=16)
N_TRAIN_IMAGES = 16
TRAIN, VAL, TEST = (SPLIT_CODES[k] for k in ("train", "val", "test"))


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """A raw folder written by the `download` stage from a tiny twin."""
    out = tmp_path_factory.mktemp("things") / "raw"
    download.run(DownloadConfig(source="things-twin", twin=TWIN), download.DownloadPaths(raw=out), 0, out.parent)
    return out


def run_preprocess(raw: Path, folder: Path, **things) -> tuple:
    """Preprocess `raw` with `preprocess.things` overrides into `folder`; (eeg.h5, images.h5, report)."""
    config = PreprocessConfig(samples=100, image_size=16, extra_images=False, figure_trials=1,
                              things=ThingsConfig(**{"val_concepts": 2, **things}))
    paths = preprocess.PreprocessPaths(raw=raw, processed=preprocess.ProcessedPaths(
        folder / "images.h5", folder / "eeg.h5", folder / "corpus.h5"), report=folder / "report.json",
        figure=folder / "figure.png")
    preprocess.run(config, paths)
    return (load_paired_eeg(folder / "eeg.h5"), load_images(folder / "images.h5"),
            json.loads((folder / "report.json").read_text()))


def raw_subject(raw: Path, number: int) -> dict:
    """The twin's files of one subject, as the readers give them."""
    return read_subject(subject_folder(raw / "things/preprocessed_data", number), OFFICIAL.with_counts(TWIN.counts))


def test_download_wrote_the_twin_and_its_manifest(raw):
    manifest = json.loads((raw / "manifest.json").read_text())
    assert manifest["source"] == "things-twin" and manifest["things"]["subjects"] == [1, 2]
    assert manifest["things"]["counts"]["train_concepts"] == 8 and manifest["things"]["layout"] == "official"
    hashed = [name for name, entry in manifest["files"].items() if "sha256" in entry]
    assert len(hashed) == 5  # 2 subjects x 2 files, and the image metadata


def test_splits_are_whole_concepts_and_test_is_only_the_test_concepts(raw, tmp_path):
    eeg, images, report = run_preprocess(raw, tmp_path)
    label, split = eeg.label, eeg.split
    assert set(label[split == TEST]) == set(range(8, 12))  # the test concepts, after the 8 training ones
    assert set(label[split == VAL]).isdisjoint(label[split == TRAIN]) and len(set(label[split == VAL])) == 2
    assert set(label[split != TEST]) <= set(range(8))
    for code in (TRAIN, VAL, TEST):  # images.h5 marks each image by its concept, as eeg.h5 does
        assert set(images.labels[images.split == code]) == set(label[split == code])
    assert set(eeg.image_index[split == TEST]) == set(np.flatnonzero(images.split == TEST))
    assert report["concepts_per_split"] == {"train": 6, "val": 2, "test": 4}
    assert images.images.shape == (N_TRAIN_IMAGES + 4, 16, 16, 3) and len(images.captions) == 12


def test_val_concepts_follow_their_seed(raw, tmp_path):
    first = run_preprocess(raw, tmp_path / "a", val_seed=0)[2]["val_concepts"]
    again = run_preprocess(raw, tmp_path / "b", val_seed=0)[2]["val_concepts"]
    other = [run_preprocess(raw, tmp_path / f"s{s}", val_seed=s)[2]["val_concepts"] for s in (1, 2, 3)]
    assert first == again and any(o != first for o in other)


def test_repetitions_single_mean_and_test_average_are_the_raw_data(raw, tmp_path):
    parts = raw_subject(raw, 1)
    train, test = parts["training"].data, parts["test"].data  # (16, 2, 17, 100), (4, 3, 17, 100)
    single, _, _ = run_preprocess(raw, tmp_path / "single", train_repetitions="single", test_repetitions=2)
    rows = np.flatnonzero((single.subject == 1) & (single.split == TRAIN))
    first_image = single.image_index[rows[0]]
    np.testing.assert_allclose(single.eeg[rows[:2]], train[first_image], atol=1e-6)  # its 2 repetitions, in order
    assert len(rows) == 2 * 12  # 6 train concepts x 2 images x 2 repetitions
    tests = np.flatnonzero((single.subject == 1) & (single.split == TEST))
    image = single.image_index[tests] - N_TRAIN_IMAGES
    np.testing.assert_allclose(single.eeg[tests], test[image, :2].mean(axis=1), atol=1e-5)  # first 2 of 3 reps
    val = np.flatnonzero((single.subject == 1) & (single.split == VAL))
    np.testing.assert_allclose(single.eeg[val], train[single.image_index[val]].mean(axis=1), atol=1e-5)
    mean, _, _ = run_preprocess(raw, tmp_path / "mean", train_repetitions="mean")
    rows = np.flatnonzero((mean.subject == 1) & (mean.split == TRAIN))
    assert len(rows) == 12
    np.testing.assert_allclose(mean.eeg[rows], train[mean.image_index[rows]].mean(axis=1), atol=1e-5)


def test_leave_one_subject_out_tests_only_the_held_out_subject(raw, tmp_path):
    eeg, _, report = run_preprocess(raw, tmp_path, protocol="leave-one-subject-out", test_subject=2)
    assert set(eeg.subject[eeg.split == TEST]) == {2} and set(eeg.subject[eeg.split != TEST]) == {1}
    assert report["subjects_per_part"] == {"train": [1], "val": [1], "test": [2]}


@pytest.mark.parametrize("things, message", [
    ({"val_concepts": 8}, "val_concepts 8 must be below the 8 training concepts"),
    ({"protocol": "leave-one-subject-out", "test_subject": 3}, "test_subject 3"),
])
def test_bad_split_params_are_refused_before_anything_is_written(raw, tmp_path, things, message):
    with pytest.raises(ConfigError, match=message):
        run_preprocess(raw, tmp_path, **things)
    assert not list(tmp_path.glob("*.h5"))


def test_params_refuse_bad_values_naming_the_key():
    with pytest.raises(ConfigError, match="protocol"):
        parse_config(PreprocessConfig, {"things": {"protocol": "cross"}}, "preprocess")
    with pytest.raises(ConfigError, match="train_repetitions"):
        parse_config(PreprocessConfig, {"things": {"train_repetitions": "median"}}, "preprocess")
    with pytest.raises(ConfigError, match="things_eeg_dir"):
        parse_config(DownloadConfig, {"source": "things-local"}, "download")
    with pytest.raises(ConfigError, match="layout"):
        parse_config(DownloadConfig, {"twin": {"layout": "bids"}}, "download")


def test_things_local_checks_then_links_the_users_folder(tmp_path):
    user = write_twin(TWIN, 1, tmp_path / "user")
    config = DownloadConfig(source="things-local", things_eeg_dir=str(user / "preprocessed_data"),
                            things_images_dir=str(user / "image_set"), things_subjects=[2],
                            twin=dataclasses.replace(TWIN))
    with pytest.raises(DataError, match="published set|expected"):  # the real set's sizes, not the twin's
        download.run(config, download.DownloadPaths(raw=tmp_path / "raw"), 0, tmp_path)
    assert not (tmp_path / "raw").exists()  # nothing half-written


def test_things_local_refuses_a_missing_subject_naming_it(tmp_path, monkeypatch):
    import dreamdiffusion.download.things_source as source

    user = write_twin(TWIN, 1, tmp_path / "user")
    monkeypatch.setitem(source.LAYOUTS, "official", OFFICIAL.with_counts(TWIN.counts))  # the twin's sizes
    config = DownloadConfig(source="things-local", things_eeg_dir=str(user / "preprocessed_data"),
                            things_images_dir=str(user / "image_set"), things_subjects=[3])
    with pytest.raises(DataError, match="sub-03 not found"):
        download.run(config, download.DownloadPaths(raw=tmp_path / "raw"), 0, tmp_path)
    config = dataclasses.replace(config, things_subjects=[2])
    download.run(config, download.DownloadPaths(raw=tmp_path / "raw"), 0, tmp_path)
    linked = tmp_path / "raw/things/preprocessed_data/sub-02/preprocessed_eeg_training.npy"
    assert linked.is_symlink() and linked.resolve() == (user / "preprocessed_data/sub-02/preprocessed_eeg_training.npy")
    assert not (tmp_path / "raw/things/preprocessed_data/sub-01").exists()
    assert json.loads((tmp_path / "raw/manifest.json").read_text())["things"]["subjects"] == [2]


@pytest.mark.parametrize("channels, samples, patch", [(17, 100, 4), (63, 250, 5)])
def test_the_mae_and_the_conditioner_take_things_shapes(channels, samples, patch):
    import torch

    from dreamdiffusion.finetune.model import ConditionerConfig, EEGConditioner
    from dreamdiffusion.pretrain.model import MAEConfig, MaskedAutoencoder

    config = MAEConfig(channels=channels, samples=samples, patch=patch, width=16, depth=1, heads=2, decoder_width=8,
                       decoder_depth=1, decoder_heads=2)
    eeg = torch.randn(3, channels, samples)  # (B, C, T)
    loss, pred, mask = MaskedAutoencoder(config)(eeg)
    assert pred.shape == (3, samples // patch, channels * patch) and mask.shape == (3, samples // patch)
    assert torch.isfinite(loss)
    out = EEGConditioner(ConditionerConfig(encoder=dataclasses.asdict(config), cond_tokens=7, cond_width=12,
                                           clip_dim=10, time_dim=8))(eeg)
    assert out.condition.shape == (3, 7, 12) and out.clip.shape == (3, 10) and out.time_vector.shape == (3, 8)
    with pytest.raises(ValueError, match=f"expected \\(B, {channels}, {samples}\\)"):
        MaskedAutoencoder(config)(torch.randn(3, 128, 512))


def test_250_samples_need_a_patch_that_divides_them():
    from dreamdiffusion.pretrain.model import MAEConfig

    with pytest.raises(ConfigError, match=r"samples \(250\) must be a multiple of patch \(4\)"):
        parse_config(MAEConfig, {"channels": 63, "samples": 250, "patch": 4}, "pretrain.model")
