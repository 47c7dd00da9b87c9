"""Preprocessing math on signals with known answers."""
import numpy as np
import pytest

from dreamdiffusion.core import eeg_signal


def test_crop_bounds():
    eeg = np.arange(2 * 600, dtype=float).reshape(2, 600)
    out = eeg_signal.crop(eeg, 20, 460)
    assert out.shape == (2, 440)
    assert out[0, 0] == 20 and out[0, -1] == 459 and out[1, 0] == 620
    with pytest.raises(ValueError, match="does not fit a trial of 450 samples"):
        eeg_signal.crop(eeg[:, :450], 20, 460)


def test_linear_resample_matches_official_interp1d():
    from scipy.interpolate import interp1d

    rng = np.random.default_rng(0)
    eeg = rng.standard_normal((3, 440))
    expected = interp1d(np.linspace(0, 1, 440), eeg)(np.linspace(0, 1, 512))
    np.testing.assert_allclose(eeg_signal.resample_linear(eeg, 512), expected, atol=1e-12)


@pytest.mark.parametrize("method, tol", [("linear", 2e-3), ("fourier", 1e-9)])
def test_resampled_sinusoid(method, tol):
    # 10 Hz over 440 samples at 1 kHz (exactly 4.4 cycles would leak for FFT: use 4 cycles, periodic)
    n_in, n_out = 400, 512
    t_in = np.arange(n_in) / n_in
    eeg = np.sin(2 * np.pi * 4 * t_in)[None]
    out = eeg_signal.resample(eeg, n_out, method)
    t_out = np.linspace(0, (n_in - 1) / n_in, n_out) if method == "linear" else np.arange(n_out) / n_out
    np.testing.assert_allclose(out[0], np.sin(2 * np.pi * 4 * t_out), atol=tol)


def test_zscore_channels():
    rng = np.random.default_rng(1)
    eeg = rng.normal(5.0, 3.0, (4, 1000)) * np.arange(1, 5)[:, None]
    out = eeg_signal.zscore_channels(eeg)
    np.testing.assert_allclose(out.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(out.std(-1), 1, atol=1e-6)


def test_bandpass_keeps_passband_removes_stopband():
    sfreq = 1000.0
    t = np.arange(2000) / sfreq
    slow, mid, fast = (np.sin(2 * np.pi * f * t) for f in (1.0, 20.0, 200.0))
    out = eeg_signal.bandpass((slow + mid + fast)[None], sfreq, 5.0, 95.0)[0]
    core = slice(500, 1500)  # away from edge effects
    assert np.corrcoef(out[core], mid[core])[0, 1] > 0.99
    assert np.std(out[core] - mid[core]) < 0.1


def test_notch_removes_line_noise():
    sfreq = 1000.0
    t = np.arange(4000) / sfreq
    mid, line = np.sin(2 * np.pi * 20 * t), np.sin(2 * np.pi * 50 * t)
    out = eeg_signal.notch((mid + line)[None], sfreq, [50.0])[0]
    core = slice(1000, 3000)
    assert np.std(out[core] - mid[core]) < 0.05


def test_map_channels():
    eeg = np.arange(3 * 4, dtype=float).reshape(3, 4)
    tiled = eeg_signal.map_channels(eeg, 8, "tile")
    assert tiled.shape == (8, 4) and (tiled[3] == eeg[0]).all() and (tiled[7] == eeg[1]).all()
    zero = eeg_signal.map_channels(eeg, 5, "zero")
    assert (zero[:3] == eeg).all() and (zero[3:] == 0).all()
    assert eeg_signal.map_channels(np.ones((10, 4)), 8, "tile").shape == (8, 4)
    with pytest.raises(ValueError, match="3 channels, expected 8"):
        eeg_signal.map_channels(eeg, 8, "none")


def test_windows():
    eeg = np.arange(2 * 10, dtype=float).reshape(2, 10)
    cut = eeg_signal.windows(eeg, 4, 3)
    assert cut.shape == (3, 2, 4)
    assert (cut[1, 0] == [3, 4, 5, 6]).all()
    assert eeg_signal.windows(eeg, 11, 1).shape == (0, 2, 11)
