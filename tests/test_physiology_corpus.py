"""The synthetic-physiology corpus: the paired subjects' unlabeled EEG, in the corpus format, never a paired trial."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import mne
import numpy as np
import pytest
import torch

from dreamdiffusion.download import synthetic_eeg as sim
from dreamdiffusion.download.synthetic import EEG_FILE, SPLITS_FILE, SyntheticConfig, generate_world
from dreamdiffusion.download.synthetic_physiology import PHYSIOLOGY_SOURCE, other_concepts, paired_subject
from dreamdiffusion.preprocess.config import PreprocessConfig
from dreamdiffusion.preprocess.corpus import PAIRED_TRAIN
from dreamdiffusion.preprocess.processed import SPLIT_CODES
from dreamdiffusion.preprocess.run import ProcessedPaths, run_preprocess

TINY = SyntheticConfig(classes=3, shapes=3, images_per_class=5, extra_images_per_class=2, subjects=2, image_size=32,
                       length_outliers=0.0, val_fraction=0.2, test_fraction=0.2, corpus_recordings=1,
                       corpus_min_seconds=2.0, corpus_max_seconds=2.0, corpus_channels=[22],
                       corpus_sample_rates=[250.0])
PHYSIO = dataclasses.replace(TINY, physiology_blocks=3, physiology_block_seconds=6.0, physiology_concepts=7,
                             physiology_rest_fraction=0.3)
# the preprocessing the label-budget rows give the corpus (tools/ablation: PHYSIOLOGY_CORPUS)
CORPUS_CFG = PreprocessConfig(pretrain_sources=[PHYSIOLOGY_SOURCE, PAIRED_TRAIN], image_size=16, figure_trials=0,
                              corpus_bandpass=[], corpus_max_windows=0, corpus_sample_rate=1000.0 * 512 / 440)


def make_world(root: Path, config: SyntheticConfig) -> Path:
    """generate_world into `root`, with the manifest `download` writes."""
    root.mkdir()
    generate_world(config, 0, root).write(root)
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return make_world(tmp_path_factory.mktemp("physio") / "raw", PHYSIO)


def read_fif(path: Path) -> mne.io.Raw:
    return mne.io.read_raw_fif(path, preload=True, verbose="error")


def test_default_world_writes_no_physiology_corpus_and_the_paired_eeg_does_not_depend_on_it(world, tmp_path):
    plain = make_world(tmp_path / "plain", TINY)
    assert sorted(p.name for p in (plain / "corpus").iterdir()) == ["synthetic"]
    assert SyntheticConfig().physiology_blocks == 0  # off by default
    a, b = (torch.load(root / EEG_FILE, weights_only=True)["dataset"] for root in (plain, world))
    assert all(torch.equal(x["eeg"], y["eeg"]) for x, y in zip(a, b, strict=True))
    assert (plain / SPLITS_FILE).read_bytes() == (world / SPLITS_FILE).read_bytes()


def test_blocks_are_fif_recordings_of_the_paired_montage_per_subject(world):
    files = sorted((world / "corpus" / PHYSIOLOGY_SOURCE).iterdir())
    assert [f.name for f in files] == [f"sub{s:02d}_block{b:03d}_raw.fif" for s in (1, 2) for b in range(3)]
    montage = mne.channels.make_standard_montage("biosemi128")
    for path in files:
        raw = read_fif(path)
        assert raw.info["sfreq"] == 1000.0 and raw.ch_names == montage.ch_names
        assert raw.get_channel_types() == ["eeg"] * 128 and raw.n_times == 6000
        volts = raw.get_data()
        assert np.isfinite(volts).all() and 2e-6 < volts.std() < 5e-5


def line_profile(recordings: list[np.ndarray]) -> np.ndarray:
    """Per channel, log of the share of its power at 48-52 Hz (the subject's line pickup), over (C, T) recordings;
    a share, so the paired data's per-channel z-scoring leaves it unchanged."""
    shares = []
    for eeg in recordings:
        power = np.abs(np.fft.rfft(eeg - eeg.mean(axis=1, keepdims=True), axis=1)) ** 2
        freqs = np.fft.rfftfreq(eeg.shape[1], 1 / sim.SFREQ)
        shares.append(power[:, (freqs > 48) & (freqs < 52)].sum(axis=1) / power.sum(axis=1))
    return np.log(np.mean(shares, axis=0))


def test_blocks_come_from_the_paired_subjects(world):
    """Each subject's corpus blocks carry that subject's channel pattern of line-noise pickup (its Subject's
    line gains), not the other subject's: a corpus drawn from new subjects would match neither."""
    dataset = torch.load(world / EEG_FILE, weights_only=True)["dataset"]
    paired = {s: line_profile([t["eeg"].numpy() for t in dataset if t["subject"] == s]) for s in (1, 2)}
    folder = world / "corpus" / PHYSIOLOGY_SOURCE
    corpus = {s: line_profile([read_fif(p).get_data() for p in folder.glob(f"sub{s:02d}_*")]) for s in (1, 2)}
    similarity = {(a, b): np.corrcoef(corpus[a], paired[b])[0, 1] for a in (1, 2) for b in (1, 2)}
    for s, other in ((1, 2), (2, 1)):
        assert similarity[s, s] > 0.8 and similarity[s, other] < 0.5, similarity


def test_the_subjects_are_those_of_the_paired_sessions():
    positions = sim.channel_positions()
    for number in (1, 2):
        paired = sim.make_subject(sim.stream(0, "eeg-subject", number), positions)  # what simulate_session draws
        mine = paired_subject(0, number, positions)
        assert np.array_equal(mine.noise_leadfield, paired.noise_leadfield) and mine.alpha_freq == paired.alpha_freq


def test_other_concepts_share_the_visual_components_and_none_is_a_paired_class():
    paired = sim.class_templates(np.random.default_rng(1), 4)
    other = other_concepts(np.random.default_rng(2), paired, 6)
    assert other.latency.shape == (6, sim.SHARED + sim.PER_CLASS) and other.centres.shape == (6, 7, 3)
    for field in dataclasses.fields(sim.ClassTemplates):
        mine, theirs = getattr(other, field.name), getattr(paired, field.name)
        assert np.array_equal(mine[:, : sim.SHARED], np.broadcast_to(theirs[:1, : sim.SHARED], mine[:, : sim.SHARED].shape))
    for k in range(6):
        for c in range(4):
            assert not np.allclose(other.centres[k, sim.SHARED:], paired.centres[c, sim.SHARED:])


def test_corpus_h5_holds_the_blocks_and_paired_train_and_no_val_or_test_trial(world):
    paths = ProcessedPaths(images=world / "images.h5", eeg=world / "eeg.h5", corpus=world / "corpus.h5")
    report = run_preprocess(world, CORPUS_CFG, paths).report
    with h5py.File(paths.corpus) as h5:
        windows, sources = h5["eeg"][()], [s.decode() for s in h5["sources"][()]]
        recording = h5["recording"][()]
    with h5py.File(paths.eeg) as h5:
        paired, split, trial = h5["eeg"][()], h5["split"][()], h5["trial"][()]
    per_source = report["corpus_windows_per_source"]
    # 6 s at 1163.6 Hz = 6981 samples -> 13 windows of 512 per block, 6 blocks
    assert per_source == {PHYSIOLOGY_SOURCE: 6 * 13, PAIRED_TRAIN: int((split == SPLIT_CODES["train"]).sum())}
    assert windows.shape[1:] == (128, 512) and np.isfinite(windows).all()
    physio = windows[np.array(sources)[recording] == PHYSIOLOGY_SOURCE]

    def best_match(trials, pool):
        """Per trial, the highest correlation with any window of `pool` (each channel z-scored, as the corpus is)."""
        z = lambda x: ((x - x.mean(axis=2, keepdims=True)) / x.std(axis=2, keepdims=True)).reshape(len(x), -1)
        return np.abs(z(trials) @ z(pool).T / z(trials).shape[1]).max(axis=1)

    held_out = paired[split != SPLIT_CODES["train"]]
    assert len(held_out) > 0
    # a copy of a trial correlates ~1 with it (the train trials below); shared slow drifts and evoked
    # responses leave unrelated windows around 0.3-0.5
    assert best_match(held_out, windows).max() < 0.8  # no val/test trial in the corpus, in any source
    assert best_match(held_out, physio).max() < 0.8
    assert best_match(paired[split == SPLIT_CODES["train"]], windows).min() > 0.999  # train ones are (paired-train)
