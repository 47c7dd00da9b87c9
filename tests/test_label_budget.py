"""finetune.train_fraction: a seeded, per-class, nested subset of the train trials; val and test untouched."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from dreamdiffusion.core.config import ConfigError, parse_config
from dreamdiffusion.finetune.budget import budget_rows, kept_per_class
from dreamdiffusion.finetune.config import FinetuneConfig

# 3 classes with 130, 40 and 7 train trials; trial ids shuffled, not in label order
COUNTS = {0: 130, 1: 40, 2: 7}
LABELS = np.random.default_rng(5).permutation(np.repeat(list(COUNTS), list(COUNTS.values())))
TRIALS = np.random.default_rng(6).permutation(np.arange(1000, 1000 + len(LABELS)) * 3)


def kept(fraction: float, seed: int = 0) -> np.ndarray:
    return TRIALS[budget_rows(LABELS, TRIALS, fraction, seed)]


@pytest.mark.parametrize("fraction, expected", [(0.1, {0: 13, 1: 4, 2: 1}), (0.25, {0: 33, 1: 10, 2: 2}),
                                                (0.5, {0: 65, 1: 20, 2: 4}), (1.0, COUNTS), (0.001, {0: 1, 1: 1, 2: 1})])
def test_each_class_keeps_its_share_and_at_least_one(fraction, expected):
    rows = budget_rows(LABELS, TRIALS, fraction, seed=3)
    assert np.all(np.diff(rows) > 0)  # ascending positions, no repeats
    labels, counts = np.unique(LABELS[rows], return_counts=True)
    assert dict(zip(labels.tolist(), counts.tolist())) == expected


def test_ceil_share_by_hand():
    assert [kept_per_class(130, f) for f in (0.1, 0.25, 0.5, 1.0)] == [13, 33, 65, 130]
    assert kept_per_class(7, 0.1) == 1 and kept_per_class(1, 0.5) == 1 and kept_per_class(3, 0.34) == 2


def test_the_subset_is_fixed_by_the_seed_and_differs_between_seeds():
    assert np.array_equal(kept(0.25, seed=4), kept(0.25, seed=4))
    assert not np.array_equal(kept(0.25, seed=4), kept(0.25, seed=5))
    # the order the trials arrive in does not matter: the same trial ids are kept
    order = np.random.default_rng(9).permutation(len(TRIALS))
    again = TRIALS[order][budget_rows(LABELS[order], TRIALS[order], 0.25, 4)]
    assert set(again) == set(kept(0.25, seed=4))


def test_smaller_budgets_are_nested_in_larger_ones():
    for seed in range(3):
        subsets = [set(kept(f, seed)) for f in (0.1, 0.25, 0.5, 1.0)]
        assert all(small < large for small, large in zip(subsets, subsets[1:]))
        assert subsets[-1] == set(TRIALS)


def test_full_budget_is_every_trial_in_its_order():
    assert np.array_equal(budget_rows(LABELS, TRIALS, 1.0, 7), np.arange(len(TRIALS)))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_fractions_outside_zero_one_are_refused(fraction):
    with pytest.raises(ValueError, match=r"finetune.train_fraction: expected a fraction in \(0, 1\]"):
        budget_rows(LABELS, TRIALS, fraction, 0)


@pytest.mark.parametrize("value, message", [(0.0, r"finetune.train_fraction: expected a fraction in \(0, 1\], got 0.0"),
                                            (1.2, "train_fraction"), ("half", "train_fraction")])
def test_config_refuses_bad_fractions_naming_the_key(value, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(FinetuneConfig, {"train_fraction": value}, "finetune")


def test_finetune_data_subsamples_train_only(monkeypatch):
    """finetune_data gets the budget of the train split; the val trials (and the test split, never read) stay."""
    import dreamdiffusion.finetune.dataset as dataset
    from dreamdiffusion.preprocess.processed import SPLIT_CODES

    split = np.array([SPLIT_CODES[s] for s in ["train"] * 40 + ["val"] * 10 + ["test"] * 10])
    paired = SimpleNamespace(eeg=np.zeros((60, 2, 4), np.float32), trial=np.arange(60) + 100,
                             label=np.tile(np.arange(5), 12), image_index=np.arange(60), split=split,
                             subset=lambda name: np.flatnonzero(split == SPLIT_CODES[name]))
    made = []
    monkeypatch.setattr(dataset, "load_features", lambda path, preload_mib: None)
    monkeypatch.setattr(dataset, "PairedTrials", lambda eeg, trial, *rest: made.append(trial) or trial)
    monkeypatch.setattr(dataset, "to_float_images", lambda images: images)
    monkeypatch.setattr("dreamdiffusion.foundation.judge.predict", lambda *a: SimpleNamespace(numpy=lambda: np.eye(5)))
    monkeypatch.setattr("dreamdiffusion.core.nway.true_classes_from", lambda logits: logits.argmax(1))
    config = SimpleNamespace(train_fraction=0.25, val_trials=5, val_batch_size=4)
    image_set = SimpleNamespace(images=np.zeros((60, 1)))
    foundation = SimpleNamespace(judge=None, judge_transform=None)
    data = dataset.finetune_data(paired, None, image_set, foundation, config, 0, seed=2)
    train_ids, val_ids = made
    assert len(train_ids) == 5 * 2 and set(train_ids) <= set(range(100, 140))  # ceil(0.25 x 8) per class
    assert list(val_ids) == list(range(140, 150)) and data.val is val_ids
    assert set(train_ids) == set((np.arange(40) + 100)[budget_rows(paired.label[:40], np.arange(40) + 100, 0.25, 2)])
