"""Zero-shot retrieval in another CLIP's image space through a linear read-out: ridge regression.

The read-out of brain-decoding baselines (Takagi & Nishimoto, CVPR 2023; Ozcelik & VanRullen, Brain-Diffuser,
Sci. Rep. 2023: L2-regularised linear maps from brain features to CLIP embeddings): each trial's EEG features
-> the target CLIP's image embedding of its image, fit in closed form (float64) on the TRAIN trials only, the
features standardised with train statistics and the targets centred on their train mean, one map per penalty
alpha. The alpha kept is the one whose val trials retrieve their own image best among the val images (top-1;
ties: the larger alpha). Only then is the test split read (`load_test`), and scored once with that alpha by
`retrieval_metrics` (evaluate/retrieval.py: top-1/top-5 over the test images, k-way, shuffled control).

The train trials enter as float64 sums (`ridge_stats`), a batch at a time: memory holds (E, E) and (E, D)
sums, never every train trial.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import numpy as np
import torch

from dreamdiffusion.evaluate.retrieval import cosine_scores, per_group, retrieval_metrics, topk_hits


@dataclasses.dataclass
class RidgeStats:
    """Float64 sums over the train trials: all a closed-form ridge fit needs."""

    count: int
    feature_sum: torch.Tensor  # (E,)
    target_sum: torch.Tensor  # (D,)
    gram: torch.Tensor  # (E, E) sum of x x^T
    cross: torch.Tensor  # (E, D) sum of x y^T


def ridge_stats(batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> RidgeStats:
    """The sums of train batches (eeg_features (B, E), clip_targets (B, D)), accumulated in float64."""
    total = None
    for eeg_features, clip_targets in batches:
        x, y = eeg_features.double(), clip_targets.double()
        part = (len(x), x.sum(0), y.sum(0), x.T @ x, x.T @ y)
        total = part if total is None else tuple(a + b for a, b in zip(total, part))
    if total is None or total[0] < 2:
        raise ValueError("the ridge read-out needs at least 2 train trials")
    return RidgeStats(*total)


@dataclasses.dataclass
class RidgeReadout:
    """Ridge maps from standardised EEG features to target CLIP embeddings, one per penalty alpha."""

    feature_mean: torch.Tensor  # (E,) train mean
    feature_std: torch.Tensor  # (E,) train std (1 where a feature is constant)
    target_mean: torch.Tensor  # (D,) train mean of the targets
    weights: dict[float, torch.Tensor]  # alpha -> (E, D)

    def predict(self, eeg_features: torch.Tensor, alpha: float) -> torch.Tensor:
        """Predicted target embeddings (N, D) of features (N, E) with the map of penalty `alpha`."""
        standardised = (eeg_features.double() - self.feature_mean) / self.feature_std  # (N, E)
        return standardised @ self.weights[alpha] + self.target_mean


def fit_ridge(stats: RidgeStats, alphas: list[float]) -> RidgeReadout:
    """Closed-form ridge W = (X^T X + alpha I)^-1 X^T Y on standardised X and centred Y, for every alpha at once."""
    n = stats.count
    mean, target_mean = stats.feature_sum / n, stats.target_sum / n  # (E,), (D,)
    std = (torch.diagonal(stats.gram) / n - mean**2).clamp_min(0).sqrt()  # (E,) population std
    std = torch.where(std > 1e-12, std, torch.ones_like(std))  # a constant feature: 0 once centred
    gram = (stats.gram - n * torch.outer(mean, mean)) / torch.outer(std, std)  # (E, E) X^T X
    cross = (stats.cross - n * torch.outer(mean, target_mean)) / std[:, None]  # (E, D) X^T Y
    eigvals, eigvecs = torch.linalg.eigh(gram)  # X^T X = V diag(s) V^T
    rotated = eigvecs.T @ cross  # (E, D)
    weights = {alpha: eigvecs @ (rotated / (eigvals.clamp_min(0) + alpha)[:, None]) for alpha in alphas}
    return RidgeReadout(mean, std, target_mean, weights)


@dataclasses.dataclass
class ReadoutSplit:
    """One val or test split as the read-out scores it."""

    eeg_features: torch.Tensor  # (N, E) per trial
    own: np.ndarray  # (N,) row in `clip_image_embeds` of each trial's image
    clip_image_embeds: torch.Tensor  # (G, D) unit-norm embeddings of the split's images: the gallery
    subject: np.ndarray  # (N,)


def top1(predicted: torch.Tensor, split: ReadoutSplit) -> float:
    """Top-1 retrieval of each trial's own image among the split's gallery from its predicted embedding (N, D)."""
    return float(topk_hits(cosine_scores(predicted, split.clip_image_embeds), split.own, 1).mean())


def choose_alpha(readout: RidgeReadout, val: ReadoutSplit) -> tuple[float, list[dict]]:
    """The alpha of the best val top-1 (ties: the larger alpha), and every alpha's val top-1 (ascending alpha)."""
    scores = [{"alpha": alpha, "top1": top1(readout.predict(val.eeg_features, alpha), val)}
              for alpha in sorted(readout.weights)]
    best = max(scores, key=lambda entry: (entry["top1"], entry["alpha"]))
    return best["alpha"], scores


def readout_retrieval(stats: RidgeStats, val: ReadoutSplit, load_test: Callable[[], ReadoutSplit],
                      alphas: list[float], ways: list[int], draws: int, shuffles: int, seed: int) -> dict:
    """Fit on train (`stats`), choose alpha on `val`, then load the test split and score it once."""
    if not len(val.own):
        raise ValueError("the read-out chooses its alpha on val trials: the val split has none")
    readout = fit_ridge(stats, alphas)
    alpha, val_scores = choose_alpha(readout, val)
    test = load_test()  # read only now: nothing above depends on it
    queries = readout.predict(test.eeg_features, alpha)  # (Q, D)
    found = retrieval_metrics(queries, test.own, test.clip_image_embeds, ways, draws, shuffles, seed)
    fit = {"method": "ridge regression, closed form (float64), fit on the train trials only; features "
                     "standardised with train statistics, targets centred on their train mean",
           "train_trials": stats.count, "alphas": sorted(readout.weights), "val_top1": val_scores,
           "val_trials": len(val.own), "val_gallery": len(val.clip_image_embeds),
           "val_chance_top1": 1.0 / len(val.clip_image_embeds),
           "alpha": alpha, "alpha_chosen_by": "best val top-1 over the val images (ties: the larger alpha)"}
    return {**found, "per_subject": per_group(queries, test.own, test.clip_image_embeds, test.subject),
            "readout": fit}
