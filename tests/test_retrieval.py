"""Zero-shot retrieval (evaluate/retrieval.py) on constructed embeddings: perfect, constant, shuffled, k-way math."""
from __future__ import annotations

from math import comb

import numpy as np
import pytest
import torch

from dreamdiffusion.evaluate.retrieval import (kway_top1, other_image_partner, per_group, retrieval_metrics,
                                               topk_hits)


def gallery(size: int = 20, dim: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(size, dim)))


def test_perfect_embeddings_retrieve_every_image_and_the_shuffled_control_sits_at_chance():
    images = gallery(20)
    own = np.repeat(np.arange(20), 10)  # 10 trials per image
    found = retrieval_metrics(images[own], own, images, [2, 4, 10], draws=20, shuffles=30, seed=0)
    assert found["top1"] == 1.0 and found["top5"] == 1.0 and found["gallery"] == 20 and found["queries"] == 200
    assert found["2way_top1"] == found["10way_top1"] == 1.0 and found["10way_top1_std"] == 0.0
    assert found["chance_top1"] == pytest.approx(0.05) and found["chance_top5"] == pytest.approx(0.25)
    # another image's EEG: its own image is never ranked first among 20, so the control is near (just below)
    # chance: the own image cannot be the partner's (top) image
    assert found["shuffled"]["top1"] < 0.12 and found["shuffled"]["top5"] < 0.4


def test_a_constant_embedding_scores_exactly_chance_never_one():
    images = gallery(20)
    own = np.arange(20)  # one query per image: a constant embedding ranks the images in one fixed order
    found = retrieval_metrics(torch.ones(20, 32, dtype=torch.float64), own, images, [2, 4], draws=5, shuffles=2,
                              seed=0)
    assert found["top1"] == pytest.approx(1 / 20) and found["top5"] == pytest.approx(5 / 20)
    tied = np.zeros((3, 5))  # every item tied: each of the 5 equally likely first
    assert topk_hits(tied, np.array([0, 2, 4]), 1) == pytest.approx([0.2] * 3)
    assert topk_hits(tied, np.array([0, 2, 4]), 5) == pytest.approx([1.0] * 3)


def test_topk_counts_the_items_above_the_own_one():
    scores = np.array([[0.9, 0.1, 0.5, 0.3],   # own 2 is second
                       [0.1, 0.2, 0.3, 0.4]])  # own 0 is last
    assert topk_hits(scores, np.array([2, 0]), 1).tolist() == [0.0, 0.0]
    assert topk_hits(scores, np.array([2, 0]), 2).tolist() == [1.0, 0.0]
    assert topk_hits(scores, np.array([2, 0]), 4).tolist() == [1.0, 1.0]


def test_kway_top1_matches_the_combinatorial_expectation():
    size, rank = 20, 5  # the own item has 5 items above it
    scores = np.tile(-np.arange(size, dtype=float), (400, 1))  # item j scores -j: item 5 has 5 above it
    own = np.full(400, rank)
    for ways in (2, 4, 10):
        expected = comb(size - 1 - rank, ways - 1) / comb(size - 1, ways - 1)  # every distractor below it
        draws = kway_top1(scores, own, ways, 30, np.random.default_rng(0))
        assert draws.mean() == pytest.approx(expected, abs=0.03), ways
    with pytest.raises(ValueError, match="21-way"):
        kway_top1(scores, own, 21, 1, np.random.default_rng(0))


def test_random_embeddings_score_chance_on_every_measure():
    images = gallery(20, seed=1)
    own = np.repeat(np.arange(20), 50)
    queries = torch.from_numpy(np.random.default_rng(2).normal(size=(1000, 32)))
    found = retrieval_metrics(queries, own, images, [2, 4, 10], draws=20, shuffles=5, seed=0)
    assert found["top1"] == pytest.approx(0.05, abs=0.03) and found["top5"] == pytest.approx(0.25, abs=0.06)
    for ways in (2, 4, 10):
        assert found[f"{ways}way_top1"] == pytest.approx(1 / ways, abs=0.05)
    assert found["shuffled"]["top1"] == pytest.approx(0.05, abs=0.03)


def test_the_control_partner_always_saw_another_image():
    own = np.array([0, 0, 1, 1, 2, 2, 2])
    partner = other_image_partner(own, np.random.default_rng(0))
    assert (own[partner] != own).all()
    with pytest.raises(ValueError, match="at least two different"):
        other_image_partner(np.zeros(4, np.int64), np.random.default_rng(0))


def test_per_subject_figures_and_their_spread():
    images = gallery(10)
    own = np.tile(np.arange(10), 2)
    queries = torch.cat([images, -images])  # subject 1 perfect, subject 2 inverted (own image last)
    found = per_group(queries, own, images, np.repeat([1, 2], 10))
    assert found["groups"]["1"]["top1"] == 1.0 and found["groups"]["2"]["top1"] == 0.0
    assert found["top1_mean"] == 0.5 and found["top1_std"] == 0.5


def test_val_selection_retrieval_groups_the_trials_of_one_image():
    from dreamdiffusion.core.retrieval import gallery_top1
    from dreamdiffusion.finetune.train import is_better

    images = gallery(5).float()
    targets = images[np.repeat(np.arange(5), 3)]  # 3 trials per image share its target vector
    assert gallery_top1(targets + 0.01 * torch.randn_like(targets), targets) == 1.0
    assert gallery_top1(-targets, targets) == 0.0  # each trial's own image ranked last of 5
    assert gallery_top1(torch.ones_like(targets), targets) == pytest.approx(1 / 5)  # constant: chance
    assert is_better(0.4, {"score": 0.3}, "val_retrieval_top1") and not is_better(0.4, {"score": 0.3}, "val_loss")
