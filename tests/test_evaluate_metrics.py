"""The evaluation metrics on hand-made inputs with known answers (tiny arrays, CPU-light)."""
from math import comb

import numpy as np
import pytest

from dreamdiffusion.evaluate.identification import clip_similarity, pixcorr, ssim, two_way_identification
from dreamdiffusion.core.controls import derangement, derangement_by_group
from dreamdiffusion.core.nway import effective_n_way, expected_nway_topk, nway_topk, summarize_over_samples, true_classes_from


def ranked_probs(num_classes: int, true: int, rank: int) -> np.ndarray:
    """A probability row (C,) where class `true` has the given rank (0 = highest), all distinct."""
    others = [c for c in range(num_classes) if c != true]
    order = others[:rank] + [true] + others[rank:]  # classes from most to least probable
    probs = np.empty(num_classes)
    probs[order] = np.linspace(2.0, 1.0, num_classes)
    return probs / probs.sum()


# ---- n-way top-k -------------------------------------------------------------------------------

def test_true_classes_is_the_argmax_of_the_ground_truth_probabilities():
    gt = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    assert true_classes_from(gt).tolist() == [1, 0]


def test_perfect_generator_scores_one_and_worst_scores_zero():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 20, size=30)
    perfect = np.stack([ranked_probs(20, t, 0) for t in true])
    worst = np.stack([ranked_probs(20, t, 19) for t in true])
    assert np.all(nway_topk(perfect, true, n_way=5, k=1, draws=50, seed=0) == 1.0)
    assert np.all(nway_topk(worst, true, n_way=5, k=1, draws=50, seed=0) == 0.0)


@pytest.mark.parametrize("num_classes,n_way", [(10, 5), (40, 10), (12, 2)])
def test_second_ranked_true_class_matches_the_exact_probability(num_classes, n_way):
    # top-1 hit iff the one class above the true class is not among the n-1 distractors
    exact = comb(num_classes - 2, n_way - 1) / comb(num_classes - 1, n_way - 1)
    probs = np.stack([ranked_probs(num_classes, t % num_classes, 1) for t in range(8)])
    true = np.arange(8) % num_classes
    hits = nway_topk(probs, true, n_way=n_way, k=1, draws=4000, seed=1)
    assert abs(hits.mean() - exact) < 0.01  # 32000 draws: std ~0.003
    assert np.allclose(expected_nway_topk(probs, true, n_way, 1), exact)


def test_topk_counts_a_hit_when_fewer_than_k_distractors_outrank():
    # true class ranks 3rd of 10 (2 classes above it): top-3 of any 5-way draw is always a hit,
    # top-2 fails only when both higher classes are drawn: C(7,2)/C(9,4) = 21/126
    probs, true = ranked_probs(10, 4, 2)[None], np.array([4])
    assert nway_topk(probs, true, n_way=5, k=3, draws=200, seed=0)[0] == 1.0
    top2 = nway_topk(probs, true, n_way=5, k=2, draws=20000, seed=0)[0]
    assert abs(top2 - (1 - comb(7, 2) / comb(9, 4))) < 0.01


def test_ties_with_a_distractor_count_against_the_generator():
    uniform = np.full((3, 6), 1 / 6)  # every class tied with the true class
    assert np.all(nway_topk(uniform, np.array([0, 2, 5]), n_way=4, k=1, draws=100, seed=0) == 0.0)
    # true class tied with exactly one other class, all others lower: hit iff the twin is not drawn
    probs = np.array([[0.3, 0.3, 0.1, 0.1, 0.1, 0.1]])
    hits = nway_topk(probs, np.array([0]), n_way=3, k=1, draws=20000, seed=0)
    exact = comb(4, 2) / comb(5, 2)
    assert abs(hits[0] - exact) < 0.01
    assert np.isclose(expected_nway_topk(probs, np.array([0]), 3, 1)[0], exact)


def test_n_larger_than_the_classes_uses_all_classes():
    assert effective_n_way(50, 10) == 10 and effective_n_way(50, 100) == 50
    assert effective_n_way(50, 1000, distractor_pool=[3, 7, 7, 9]) == 3
    # with all 10 classes as candidates a 2nd-ranked true class never wins top-1
    probs = np.stack([ranked_probs(10, t, 1) for t in range(10)])
    assert np.all(nway_topk(probs, np.arange(10), n_way=50, k=1, draws=20, seed=0) == 0.0)
    with pytest.raises(ValueError, match="effective n = 10"):
        nway_topk(probs, np.arange(10), n_way=50, k=10, draws=20, seed=0)


def test_distractor_pool_restricts_the_candidates():
    # 1000-class judge; the true class ranks 2nd overall, its only superior is outside the pool
    num_classes, pool = 1000, np.arange(0, 40)
    true = np.arange(5, 10)
    probs = np.stack([ranked_probs(num_classes, t, 0) for t in true])
    probs[:, 500] = 1.0  # class 500 (not in the pool) outranks everything
    assert np.all(nway_topk(probs, true, 50, 1, 500, seed=0) < 1.0)  # all classes: sometimes drawn
    assert np.all(nway_topk(probs, true, 50, 1, 50, seed=0, distractor_pool=pool) == 1.0)
    # a superior inside the pool of 40 (n = 40, all drawn) always defeats the true class
    probs[:, 20] = 2.0
    assert np.all(nway_topk(probs, true, 50, 1, 50, seed=0, distractor_pool=pool) == 0.0)


def test_pool_without_the_true_class_draws_n_minus_one_from_the_pool():
    # true class 9 is outside the pool {0..4} and only class 0 outranks it: 2 distractors from 5
    probs = np.array([[0.5, 0.05, 0.05, 0.05, 0.05, 0, 0, 0, 0, 0.3]])
    pool, true = np.arange(5), np.array([9])
    hits = nway_topk(probs, true, n_way=3, k=1, draws=20000, seed=0, distractor_pool=pool)
    exact = comb(4, 2) / comb(5, 2)  # class 0 not among the 2 distractors drawn from 5
    assert abs(hits[0] - exact) < 0.01


def test_nway_is_deterministic_per_seed_and_matches_the_exact_expectation():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(30), size=40)
    true = rng.integers(0, 30, size=40)
    a = nway_topk(probs, true, 10, 1, 300, seed=7)
    assert np.array_equal(a, nway_topk(probs, true, 10, 1, 300, seed=7))
    assert not np.array_equal(a, nway_topk(probs, true, 10, 1, 300, seed=8))
    exact = expected_nway_topk(probs, true, 10, 1)
    assert np.abs(a - exact).max() < 0.12 and abs(a.mean() - exact.mean()) < 0.01


def test_nway_rejects_bad_input():
    probs = np.full((2, 5), 0.2)
    with pytest.raises(ValueError, match="true_classes"):
        nway_topk(probs, np.array([0, 5]), 3, 1, 10, 0)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        nway_topk(probs, np.array([0]), 3, 1, 10, 0)
    with pytest.raises(ValueError, match="distractor_pool"):
        nway_topk(probs, np.array([0, 1]), 3, 1, 10, 0, distractor_pool=[7, 8])


def test_summarize_reports_the_mean_and_the_std_over_samples_not_the_max():
    hits = np.array([[1.0, 0.0, 0.5], [1.0, 0.0, 0.5], [1.0, 1.0, 0.5], [1.0, 1.0, 0.5]])  # (trials, S)
    mean, std = summarize_over_samples(hits)
    assert mean == pytest.approx(hits.mean())  # 0.666..., not the best sample's 1.0
    assert std == pytest.approx(np.std([1.0, 0.5, 0.5], ddof=1))
    assert summarize_over_samples(np.ones((3, 1))) == (1.0, 0.0)
    with pytest.raises(ValueError):
        summarize_over_samples(np.ones(4))


# ---- identification, CLIP similarity, SSIM, pixel correlation ----------------------------------

def test_two_way_identification_perfect_shuffled_and_chance():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(60, 16))
    for metric in ("cosine", "correlation", "euclidean"):
        assert np.all(two_way_identification(gt + 0.01 * rng.normal(size=gt.shape), gt, metric) == 1.0)
    shuffled = two_way_identification(gt[rng.permutation(60)], gt)
    assert abs(shuffled.mean() - 0.5) < 0.1
    anti = two_way_identification(-gt, gt)  # every other ground truth is closer than the own one
    assert np.all(anti == 0.0)


def test_two_way_counts_other_ground_truths_only_and_ties_fail():
    gen = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    gt = np.array([[1.0, 0.1], [1.0, 0.0], [1.0, 1.0]])
    # gen0: own d=|(0,.1)|; others (1,0): d=0 (closer), (1,1): d=1 (further) -> 1/2
    # gen1: own (1,0) d=sqrt2; (1,.1) d=1.35 closer; (1,1) d=1 closer -> 0
    # gen2: own d=0; others both further -> 1
    assert two_way_identification(gen, gt, "euclidean").tolist() == [0.5, 0.0, 1.0]
    same = np.ones((3, 4))  # all distances tied
    assert np.all(two_way_identification(same, same) == 0.0)
    with pytest.raises(ValueError, match="metric"):
        two_way_identification(gen, gt, "manhattan")


def test_clip_similarity_is_the_cosine_of_matched_pairs():
    gen = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    gt = np.array([[2.0, 0.0], [-1.0, -1.0], [1.0, 0.0]])
    assert np.allclose(clip_similarity(gen, gt), [1.0, -1.0, 0.0])
    with pytest.raises(ValueError, match="same shape"):
        clip_similarity(gen, gt[:2])


def test_ssim_properties():
    rng = np.random.default_rng(0)
    images = rng.random((4, 24, 24, 3))
    assert np.allclose(ssim(images, images), 1.0) and np.allclose(ssim(images, images, gray=False), 1.0)
    noisy = np.clip(images + 0.2 * rng.normal(size=images.shape), 0, 1)
    noisier = np.clip(images + 0.5 * rng.normal(size=images.shape), 0, 1)
    s1, s2 = ssim(images, noisy), ssim(images, noisier)
    assert np.all(s1 < 0.99) and np.all(s2 < s1)
    assert np.allclose(s1, ssim(noisy, images))  # symmetric
    assert abs(ssim(images, rng.random(images.shape)).mean()) < 0.1  # independent noise ~0


def reference_ssim(gen, gt, size=11, sigma=1.5, c1=0.01**2, c2=0.03**2):
    """SSIM of grayscale pairs (N, H, W) straight from Wang et al. (2004): 2-D Gaussian window statistics."""
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    view = lambda a: np.lib.stride_tricks.sliding_window_view(a, (size, size), axis=(1, 2))  # noqa: E731
    mean = lambda a: (view(a) * window).sum((-2, -1))  # noqa: E731
    mu1, mu2 = mean(gen), mean(gt)
    var1, var2, cov = mean(gen * gen) - mu1**2, mean(gt * gt) - mu2**2, mean(gen * gt) - mu1 * mu2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * cov + c2)) / ((mu1**2 + mu2**2 + c1) * (var1 + var2 + c2))
    return ssim_map.mean((1, 2))


def test_ssim_equals_the_definition_with_the_2d_window_across_chunks():
    # the separable blur and the chunking (more pairs than one chunk) change nothing but memory
    rng = np.random.default_rng(3)
    gen = rng.random((11, 20, 23))
    gt = np.clip(gen + 0.3 * rng.normal(size=gen.shape), 0, 1)
    assert np.allclose(ssim(gen, gt), reference_ssim(gen, gt), rtol=0, atol=1e-12)


def test_ssim_of_constant_images_matches_the_closed_form():
    # constant images: no variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.2, 0.7, 0.01**2
    gen, gt = np.full((1, 16, 16), a), np.full((1, 16, 16), b)
    assert ssim(gen, gt)[0] == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ssim(gen * 255, gt)
    with pytest.raises(ValueError, match="window"):
        ssim(gen[:, :8, :8], gt[:, :8, :8])


def test_pixcorr_is_the_pearson_correlation_per_pair():
    rng = np.random.default_rng(1)
    gt = rng.random((5, 8, 8, 3))
    gen = rng.random((5, 8, 8, 3))
    expected = [np.corrcoef(g.ravel(), t.ravel())[0, 1] for g, t in zip(gen, gt)]
    assert np.allclose(pixcorr(gen, gt), expected)
    assert np.allclose(pixcorr(0.5 * gt + 0.1, gt), 1.0)  # invariant to brightness and contrast
    assert np.allclose(pixcorr(1 - gt, gt), -1.0)


# ---- the permutation control -------------------------------------------------------------------

def test_derangement_has_no_fixed_point_and_is_seeded():
    for n in (2, 3, 10, 257):
        perm = derangement(n, seed=n)
        assert sorted(perm.tolist()) == list(range(n)) and not np.any(perm == np.arange(n))
    assert derangement(2, 0).tolist() == [1, 0]
    assert np.array_equal(derangement(50, 3), derangement(50, 3))
    assert len({tuple(derangement(50, s)) for s in range(10)}) == 10
    with pytest.raises(ValueError, match="n >= 2"):
        derangement(1, 0)


def test_derangement_by_group_never_maps_into_the_same_group():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.array(["cat", "dog", "fish", "owl"]), [6, 6, 4, 2])
    groups = groups[rng.permutation(groups.size)]
    for seed in range(5):
        perm = derangement_by_group(groups, seed)
        assert sorted(perm.tolist()) == list(range(groups.size))
        assert np.all(groups[perm] != groups)
    assert np.array_equal(derangement_by_group(groups, 1), derangement_by_group(groups, 1))
    assert len({tuple(derangement_by_group(groups, s)) for s in range(10)}) == 10
    # the tightest feasible case: two groups of half each must swap entirely
    halves = np.array([0, 0, 0, 1, 1, 1])
    assert np.all(halves[derangement_by_group(halves, 0)] == 1 - halves)


def test_derangement_by_group_is_well_mixed():
    # a group's partners spread over several other groups (not one whole block onto another)
    groups = np.repeat(np.arange(5), 10)
    counts = np.zeros((5, 5))
    for seed in range(20):
        perm = derangement_by_group(groups, seed)
        assert all(len(np.unique(groups[perm][groups == g])) >= 2 for g in range(5))
        np.add.at(counts, (groups, groups[perm]), 1)
    off_diagonal = counts[~np.eye(5, dtype=bool)]
    assert np.all(np.diag(counts) == 0) and off_diagonal.min() > 0.5 * off_diagonal.mean()


def test_derangement_by_group_fails_clearly_when_impossible():
    with pytest.raises(ValueError, match="group 'a' holds 4 of 7"):
        derangement_by_group(["a", "a", "a", "a", "b", "c", "d"], 0)


def test_control_identification_drops_the_source_image_from_the_distractors():
    import torch

    gt = torch.eye(4, dtype=torch.float64)  # 4 distinct ground-truth images, orthogonal embeddings
    gen = torch.nn.functional.normalize(gt[2] + 0.5 * gt[0], dim=0)[None]  # drawn from image 2's EEG
    own, source = np.array([0]), np.array([2])
    assert two_way_identification(gen, gt, own=own).tolist() == [2 / 3]  # image 2 beats its own image 0
    assert two_way_identification(gen, gt, own=own, exclude=source).tolist() == [1.0]  # 1 and 3 only
    with pytest.raises(ValueError, match="distractor"):
        two_way_identification(gen, gt[:1], own=own)


def test_control_two_way_sits_at_chance_when_paired_by_image_and_below_when_by_class():
    """A perfect generator copies the image its EEG saw: scored against another trial's image, the
    control must give 0.5 (pairing by image, source excluded); pairing by class biases it low."""
    import torch

    rng = np.random.default_rng(0)
    images, classes, trials = 40, 10, 160
    image_class = np.arange(images) % classes
    centres = rng.normal(size=(classes, 32))
    gt = torch.nn.functional.normalize(torch.as_tensor(centres[image_class] + 0.7 * rng.normal(size=(images, 32))), dim=1)
    image = rng.permutation(np.arange(trials) % images)  # each image seen by 4 trials
    gen = torch.nn.functional.normalize(gt[image] + 0.3 * torch.as_tensor(rng.normal(size=(trials, 32))), dim=1)
    image_pairings = [derangement_by_group(image, s) for s in range(20)]
    by_image = [two_way_identification(gen[p], gt, own=image, exclude=image[p]).mean() for p in image_pairings]
    source_kept = [two_way_identification(gen[p], gt, own=image).mean() for p in image_pairings]
    by_class = [two_way_identification(gen[p], gt, own=image).mean()
                for p in (derangement_by_group(image_class[image], s) for s in range(20))]
    assert abs(np.mean(by_image) - 0.5) < 0.02
    assert np.mean(source_kept) < np.mean(by_image) - 0.01  # the source image is the nearest distractor
    assert np.mean(by_class) < np.mean(by_image) - 0.03
    assert two_way_identification(gen, gt, own=image).mean() > 0.9  # the matched (non-control) score


class _Stub:
    """A foundation whose judge and CLIP read the images' mean colour: enough to score PNGs."""

    def __init__(self):
        import torch

        self.judge = torch.nn.Linear(3, 4)
        self.judge_transform = lambda x: x.mean(dim=(2, 3))
        self.clip = type("Clip", (torch.nn.Module,), {"encode_image": lambda self, x: x.mean(dim=(2, 3)) + 0.1})()
        self.clip.dummy = torch.nn.Parameter(torch.zeros(1))
        self.clip_transform = lambda x: x


def test_a_control_metric_that_cannot_be_computed_is_reported_absent_with_its_reason(tmp_path):
    """Two test images: once the own and the source image are left out, no 2-way distractor remains."""
    import torch
    from PIL import Image

    from dreamdiffusion.evaluate.config import EvaluateConfig
    from dreamdiffusion.evaluate.metrics import Scores, control_metrics

    (tmp_path / "control").mkdir()
    rows = []
    for trial, image in ((0, 0), (1, 1)):
        Image.fromarray(np.full((8, 8, 3), 60 * (trial + 1), np.uint8)).save(tmp_path / f"control/{trial}.png")
        rows.append({"kind": "control", "trial": trial, "eeg_trial": 1 - trial, "image": image, "sample": 0,
                     "file": f"control/{trial}.png"})
    truth = Scores(np.full((2, 4), 0.25), torch.nn.functional.normalize(torch.rand(2, 3), dim=-1))
    out = control_metrics(rows, tmp_path, {0: 0, 1: 1}, {0: 0, 1: 1}, truth, np.array([0, 1]), _Stub(),
                          EvaluateConfig(nway_draws=3), 0)
    assert 0 <= out["nway_top1"] <= 1
    assert "clip_2way" not in out and "distractor" in out["skipped"]["clip_2way"]
