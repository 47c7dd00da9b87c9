"""Paired preprocessing and the pretraining corpus on small real-schema sets."""
import dataclasses
from types import SimpleNamespace

import h5py
import mne
import numpy as np
import pytest
import torch

from dreamdiffusion.core.config import ConfigError, parse_config
from dreamdiffusion.preprocess.corpus import PAIRED_TRAIN, build_corpus
from dreamdiffusion.preprocess.config import PreprocessConfig
from dreamdiffusion.preprocess.run import ProcessedPaths, corpus_settings, run_preprocess
from dreamdiffusion.preprocess.processed import SPLIT_CODES
from dreamdiffusion.download.raw import RawManifest
from dreamdiffusion.core.fileio import DataError

from realschema import (make_real_schema_set, read_eeg_file, read_splits_file, write_eeg_file,
                        write_jpeg, write_splits_file)

CFG = PreprocessConfig(pretrain_sources=[], image_size=16, figure_trials=2)


def read_all(path) -> dict:
    """Every dataset of an HDF5 file, strings decoded."""
    with h5py.File(path, "r") as h5:
        return {key: [v.decode() for v in h5[key][()]] if h5[key].dtype.kind == "O" else h5[key][()] for key in h5}


def preprocess(raw_dir, cfg):
    """run_preprocess into files next to the raw set; the files read back whole for the assertions."""
    paths = ProcessedPaths(images=raw_dir / "images.h5", eeg=raw_dir / "eeg.h5", corpus=raw_dir / "corpus.h5")
    result = run_preprocess(raw_dir, cfg, paths)
    return SimpleNamespace(report=result.report, examples=result.examples, eeg=read_all(paths.eeg),
                           images=read_all(paths.images), corpus=read_all(paths.corpus))


def corpus_of(corpus_root, sources, settings, out):
    """build_corpus into `out`, read back whole."""
    build_corpus(corpus_root, sources, None, settings, out)
    return read_all(out)


def corpus_with(**changes):
    """The corpus settings of the default `preprocess` params, with `changes`."""
    return dataclasses.replace(corpus_settings(PreprocessConfig()), **changes)


def raw_set(root, **kwargs):
    """A real-schema set under root with its manifest, as `download` leaves it."""
    paths = make_real_schema_set(root, **kwargs)
    RawManifest("local", paths["eeg_file"].name, paths["splits_file"].name, "images").write(root)
    return paths


def test_paired_output_shapes_labels_and_split_by_image(tmp_path):
    paths = raw_set(tmp_path, classes=3, images_per_class=4, subjects=2)
    out = preprocess(tmp_path, CFG)
    payload = read_eeg_file(paths["eeg_file"])
    eeg = out.eeg
    assert eeg["eeg"].shape == (24, 128, 512) and eeg["eeg"].dtype == np.float32
    for row, trial in enumerate(eeg["trial"]):
        source = payload["dataset"][trial]
        assert (eeg["label"][row], eeg["image_index"][row], eeg["subject"][row]) == (
            source["label"], source["image"], source["subject"])
    # official processing: crop 20:460 then linear interpolation to 512, end points kept
    first = payload["dataset"][eeg["trial"][0]]["eeg"].numpy()
    np.testing.assert_allclose(eeg["eeg"][0][:, 0], first[:, 20], atol=1e-6)
    np.testing.assert_allclose(eeg["eeg"][0][:, -1], first[:, 459], atol=1e-6)
    # images follow the split of their trials; images.h5 rows are in the EEG file's order
    images = out.images
    assert images["images"].shape == (12, 16, 16, 3) and images["images"].dtype == np.uint8
    for image, code in zip(eeg["image_index"], eeg["split"]):
        assert images["split"][image] == code
    assert out.report["trials_per_split"] == {"train": 12, "val": 6, "test": 6}
    assert out.report["trials_per_subject"] == {"1": 12, "2": 12}


def test_length_filter_and_subject_selection_report_reasons(tmp_path):
    paths = raw_set(tmp_path, classes=2, images_per_class=3, subjects=3)
    payload = read_eeg_file(paths["eeg_file"])
    payload["dataset"][0]["eeg"] = torch.zeros(128, 449)
    payload["dataset"][1]["eeg"] = torch.zeros(128, 601)
    payload["dataset"][2]["eeg"] = torch.zeros(128, 600)  # inclusive bounds: kept
    payload["dataset"][3]["eeg"] = torch.arange(450.0).repeat(128, 1)  # kept, cropped to 20:450
    write_eeg_file(paths["eeg_file"], payload)
    out = preprocess(tmp_path, dataclasses.replace(CFG, subjects=[1, 2]))
    assert out.report["dropped"] == {"too_short": 1, "too_long": 1, "subject_not_selected": 6}
    assert out.report["trials_shorter_than_crop"] == 1
    short = out.eeg["eeg"][list(out.eeg["trial"]).index(3)]
    assert short[0, 0] == 20 and short[0, -1] == 449
    assert set(out.eeg["subject"]) == {1, 2}
    assert 2 in out.eeg["trial"] and 0 not in out.eeg["trial"]


def test_single_split_indexes_one_subjects_trials(tmp_path):
    paths = raw_set(tmp_path, classes=2, images_per_class=3, subjects=2)
    payload = read_eeg_file(paths["eeg_file"])
    subject2 = [i for i, t in enumerate(payload["dataset"]) if t["subject"] == 2]
    write_splits_file(paths["splits_file"], {"splits": [{"train": [0, 1], "val": [2], "test": [5]}]})
    cfg = dataclasses.replace(CFG, splits_index="single", subjects=[2])
    out = preprocess(tmp_path, cfg)
    assert list(out.eeg["trial"]) == [subject2[i] for i in (0, 1, 2, 5)]
    write_splits_file(paths["splits_file"], {"splits": [{"train": [0, 1], "val": [2], "test": [6]}]})
    with pytest.raises(DataError, match=r"'test' has indices \[6\] outside the 6 trials of subject 2"):
        preprocess(tmp_path, cfg)


def test_all_split_with_out_of_range_index_suggests_single(tmp_path):
    paths = raw_set(tmp_path, classes=2, images_per_class=3, subjects=1)
    write_splits_file(paths["splits_file"], {"splits": [{"train": [0, 99], "val": [1], "test": [2]}]})
    with pytest.raises(DataError, match="splits_index='all'"):
        preprocess(tmp_path, CFG)
    with pytest.raises(DataError, match="split 3 requested but the file has 1 split"):
        preprocess(tmp_path, dataclasses.replace(CFG, split=3))


def test_config_cross_checks():
    with pytest.raises(ConfigError, match="crop_start 460 must be < crop_end 460"):
        parse_config(PreprocessConfig, {"crop_start": 460}, "preprocess")
    with pytest.raises(ConfigError, match="needs exactly one subject"):
        parse_config(PreprocessConfig, {"splits_index": "single"}, "preprocess")
    with pytest.raises(ConfigError, match="expected \\[\\] or \\[low, high\\]"):
        parse_config(PreprocessConfig, {"bandpass": [40.0, 5.0]}, "preprocess")


def test_channel_normalisation_and_fourier_option(tmp_path):
    raw_set(tmp_path, classes=2, images_per_class=3, subjects=1)
    out = preprocess(tmp_path, dataclasses.replace(CFG, normalize="channel", resample="fourier",
                                                       bandpass=[5.0, 95.0], notch=[50.0]))
    np.testing.assert_allclose(out.eeg["eeg"].mean(-1), 0, atol=1e-4)
    np.testing.assert_allclose(out.eeg["eeg"].std(-1), 1, atol=1e-3)


def test_extra_images_get_the_extra_split(tmp_path):
    paths = raw_set(tmp_path, classes=2, images_per_class=3, subjects=1)
    payload = read_eeg_file(paths["eeg_file"])
    wnid = payload["labels"][1]
    write_jpeg(paths["images_dir"] / wnid / f"{wnid}_x1.JPEG", np.random.default_rng(0))
    images = preprocess(tmp_path, CFG).images
    assert images["image_names"][-1] == f"{wnid}_x1"
    assert images["split"][-1] == SPLIT_CODES["extra"] and images["labels"][-1] == 1
    stimulus_only = preprocess(tmp_path, dataclasses.replace(CFG, extra_images=False)).images
    assert stimulus_only["image_names"] == images["image_names"][:-1]  # the class folders' other images unread
    assert (stimulus_only["split"] != SPLIT_CODES["extra"]).all()


def test_paired_train_corpus_never_takes_val_or_test(tmp_path):
    paths = raw_set(tmp_path, classes=3, images_per_class=4, subjects=2)
    payload = read_eeg_file(paths["eeg_file"])
    split = read_splits_file(paths["splits_file"])["splits"][0]
    for part, value in (("train", 1.0), ("val", 1000.0), ("test", 2000.0)):
        for i in split[part]:  # mark each trial with its part
            payload["dataset"][i]["eeg"] = torch.full((128, 500), value) + torch.randn(128, 500) * 1e-3
    write_eeg_file(paths["eeg_file"], payload)
    cfg = dataclasses.replace(CFG, pretrain_sources=[PAIRED_TRAIN], corpus_scale="none")
    out = preprocess(tmp_path, cfg)
    corpus = out.corpus
    assert len(corpus["eeg"]) == len(split["train"])
    assert np.abs(corpus["eeg"] - 1.0).max() < 0.01  # only train-marked trials got in
    assert set(corpus["sources"]) == {PAIRED_TRAIN}
    trials = {int(name.split("trial")[1]) for name in corpus["recordings"]}
    assert trials == set(split["train"])


def write_fif(path, channels, sfreq, seconds, seed=0):
    rng = np.random.default_rng(seed)
    info = mne.create_info([f"EEG{i:03d}" for i in range(channels)], sfreq, "eeg")
    raw = mne.io.RawArray(rng.standard_normal((channels, int(sfreq * seconds))) * 1e-5, info, verbose="error")
    path.parent.mkdir(parents=True, exist_ok=True)
    raw.save(path, verbose="error")


def test_fif_corpus_windows_channels_rates(tmp_path):
    write_fif(tmp_path / "corpus" / "demo" / "a_raw.fif", 22, 250.0, 8.0)
    write_fif(tmp_path / "corpus" / "demo" / "b_raw.fif", 130, 1000.0, 3.0, seed=1)
    settings = corpus_with(sample_rate=500.0, max_windows=0)
    corpus = corpus_of(tmp_path / "corpus", ["demo"], settings, tmp_path / "c1.h5")
    # a: 8 s at 500 Hz = 4000 samples -> 7 windows; b: 1500 samples -> 2 windows
    assert corpus["eeg"].shape == (9, 128, 512)
    assert list(np.bincount(corpus["recording"])) == [7, 2]
    assert np.allclose(corpus["eeg"][0][22], corpus["eeg"][0][0])  # tiled channels
    np.testing.assert_allclose(corpus["eeg"].std(-1), 1, atol=1e-3)  # z-scored windows
    limited = corpus_of(tmp_path / "corpus", ["demo"], dataclasses.replace(settings, max_windows=3), tmp_path / "c2.h5")
    assert list(np.bincount(limited["recording"])) == [3, 2]


def test_corpus_errors_name_the_problem(tmp_path):
    write_fif(tmp_path / "corpus" / "demo" / "a_raw.fif", 22, 250.0, 4.0)
    with pytest.raises(DataError, match="a_raw.fif: recording has 22 channels, expected 128"):
        build_corpus(tmp_path / "corpus", ["demo"], None, corpus_with(channel_mode="none"), tmp_path / "c.h5")
    with pytest.raises(DataError, match="pretrain source 'nope'.*available: \\['demo'\\]"):
        build_corpus(tmp_path / "corpus", ["nope"], None, corpus_with(), tmp_path / "c.h5")
    (tmp_path / "corpus" / "bad").mkdir()
    (tmp_path / "corpus" / "bad" / "x_raw.fif").write_bytes(b"not a fif")
    with pytest.raises(DataError, match="x_raw.fif: not a readable FIF"):
        build_corpus(tmp_path / "corpus", ["bad"], None, corpus_with(), tmp_path / "c.h5")
    with pytest.raises(DataError, match="no windows of 512 samples"):
        write_fif(tmp_path / "corpus" / "short" / "s_raw.fif", 4, 100.0, 0.4)  # 400 samples at 1 kHz
        build_corpus(tmp_path / "corpus", ["short"], None, corpus_with(bandpass=()), tmp_path / "c.h5")


@pytest.mark.parametrize("rows", [[0], [3, 4, 5], [0, 2, 3, 4, 9, 11], list(range(12))])
def test_read_rows_reads_runs_exactly_like_point_selection(tmp_path, rows):
    import h5py

    from dreamdiffusion.preprocess.processed import read_rows

    values = np.arange(12 * 2 * 3, dtype=np.float32).reshape(12, 2, 3)
    with h5py.File(tmp_path / "x.h5", "w") as h5:
        h5.create_dataset("eeg", data=values, chunks=(1, 2, 3))
    with h5py.File(tmp_path / "x.h5", "r") as h5:
        np.testing.assert_array_equal(read_rows(h5["eeg"], np.array(rows)), values[rows])
        assert read_rows(h5["eeg"], np.array([], dtype=int)).shape == (0, 2, 3)
