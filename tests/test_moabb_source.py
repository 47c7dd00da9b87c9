"""MOABB -> FIF export, offline through moabb's FakeDataset (the same code path as real datasets)."""
import mne
import numpy as np
import pytest

from dreamdiffusion.download.moabb_source import export_moabb, moabb_dataset
from dreamdiffusion.core.fileio import DataError

FAKE = dict(n_subjects=3, n_sessions=1, n_runs=2, duration=8, sfreq=128, seed=7)


def test_export_writes_one_fif_per_run_with_the_data(tmp_path):
    paths = export_moabb("FakeDataset", [1, 3], tmp_path / "fake", dataset_kwargs=FAKE)
    assert [p.name for p in paths] == ["1_0_0_raw.fif", "1_0_1_raw.fif", "3_0_0_raw.fif", "3_0_1_raw.fif"]
    original = moabb_dataset("FakeDataset", **FAKE).get_data([3])[3]["0"]["1"]
    saved = mne.io.read_raw_fif(tmp_path / "fake" / "3_0_1_raw.fif", preload=True, verbose="error")
    assert saved.ch_names == original.ch_names and saved.info["sfreq"] == 128
    np.testing.assert_allclose(saved.get_data(), original.get_data(), rtol=1e-6, atol=1e-12)
    assert sorted(p.name for p in (tmp_path / "fake").iterdir()) == sorted(p.name for p in paths)  # no temp left


def test_exported_recordings_window_into_the_corpus(tmp_path):
    from dreamdiffusion.preprocess.corpus import recording_windows
    from test_preprocess import corpus_with

    path, *_ = export_moabb("FakeDataset", [2], tmp_path, dataset_kwargs=FAKE)
    windows = recording_windows(path, corpus_with(sample_rate=256.0, bandpass=(5.0, 45.0), stride=512))
    assert windows.shape == (4, 128, 512) and np.isfinite(windows).all()  # 8 s at 256 Hz, 3 EEG channels tiled


def test_unknown_dataset_or_subject_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="MOABB dataset 'NoSuchSet' is unknown"):
        export_moabb("NoSuchSet", None, tmp_path)
    with pytest.raises(DataError, match=r"no subject\(s\) \[9\]"):
        export_moabb("FakeDataset", [1, 9], tmp_path, dataset_kwargs=FAKE)
    assert not list(tmp_path.iterdir())
