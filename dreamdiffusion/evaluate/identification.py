"""Pairwise comparisons of generated images with their ground truths.

2-way identification (MindEye style, chance 0.5), CLIP cosine similarity and correlation distance of matched
pairs, SSIM and pixel correlation. Every function returns one score per pair (N,) as a float64 numpy array.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray (ITU-R BT.709), as MindEye uses
SSIM_CHUNK = 8  # pairs per SSIM convolution: bounds its float64 intermediates whatever the batch


def _as_tensor(x, name: str, ndim: tuple[int, ...]) -> torch.Tensor:
    """numpy or torch -> float64 CPU tensor, checking the number of dimensions."""
    t = torch.as_tensor(np.asarray(x.detach().cpu() if torch.is_tensor(x) else x), dtype=torch.float64)
    if t.dim() not in ndim:
        raise ValueError(f"{name}: expected {' or '.join(f'{d}-d' for d in ndim)} input, got shape {tuple(t.shape)}")
    return t


def _check_pairs(gen: torch.Tensor, gt: torch.Tensor) -> None:
    if gen.shape != gt.shape:
        raise ValueError(f"generated {tuple(gen.shape)} and ground truth {tuple(gt.shape)} must have the same shape")


def _distances(gen: torch.Tensor, gt: torch.Tensor, metric: str) -> torch.Tensor:
    """Distance matrix (N, N): entry [i, j] = distance(generated i, ground truth j)."""
    if metric == "cosine":
        return 1 - F.normalize(gen, dim=1) @ F.normalize(gt, dim=1).T
    if metric == "correlation":  # 1 - Pearson r, MindEye's default feature comparison
        gen, gt = gen - gen.mean(1, keepdim=True), gt - gt.mean(1, keepdim=True)
        return 1 - F.normalize(gen, dim=1) @ F.normalize(gt, dim=1).T
    if metric == "euclidean":
        return torch.cdist(gen, gt)
    raise ValueError(f"metric must be 'cosine', 'correlation' or 'euclidean', got {metric!r}")


def two_way_identification(gen_feats, gt_feats, metric: str = "cosine", own=None, exclude=None) -> np.ndarray:
    """Per generated image (N,): the fraction of OTHER ground truths strictly further from it than
    its own (ties count as failures; chance 0.5). Paired inputs (N, D) by default; with `own` (N,),
    generated i belongs to ground truth own[i] of gt_feats (U, D), and `exclude` (N,) drops one more
    ground truth per row from the distractors (a control's source image)."""
    gen, gt = _as_tensor(gen_feats, "gen_feats", (2,)), _as_tensor(gt_feats, "gt_feats", (2,))
    if own is None:
        _check_pairs(gen, gt)
        own = np.arange(gen.shape[0])
    rows = np.arange(gen.shape[0])
    others = np.ones((gen.shape[0], gt.shape[0]), dtype=bool)
    others[rows, own] = False
    if exclude is not None:
        others[rows, exclude] = False
    if gen.shape[0] == 0 or others.sum(1).min() == 0:
        raise ValueError(f"2-way identification needs at least one distractor per image: "
                         f"{gen.shape[0]} generated, {gt.shape[0]} ground truths")
    dist = _distances(gen, gt, metric).numpy()  # (N, U)
    further = (dist > dist[rows, own][:, None]) & others
    return further.sum(1) / others.sum(1)


def clip_similarity(gen_embeds, gt_embeds) -> np.ndarray:
    """Cosine similarity (N,) of matched (generated i, ground truth i) embedding pairs (N, D)."""
    gen, gt = _as_tensor(gen_embeds, "gen_embeds", (2,)), _as_tensor(gt_embeds, "gt_embeds", (2,))
    _check_pairs(gen, gt)
    return F.cosine_similarity(gen, gt, dim=1).numpy()


def correlation_distance(gen_feats, gt_feats) -> np.ndarray:
    """1 - Pearson r (N,) of matched (generated i, ground truth i) feature pairs (N, D): scipy's correlation
    distance, MindEye's EfficientNet-B1 and SwAV score (0 for identical features)."""
    gen, gt = _as_tensor(gen_feats, "gen_feats", (2,)), _as_tensor(gt_feats, "gt_feats", (2,))
    _check_pairs(gen, gt)
    gen, gt = gen - gen.mean(1, keepdim=True), gt - gt.mean(1, keepdim=True)
    norms = (gen.norm(dim=1) * gt.norm(dim=1)).clamp_min(torch.finfo(torch.float64).tiny)  # scale-free; 0 if constant
    return (1 - (gen * gt).sum(1) / norms).numpy()


def _images(x, name: str, gray: bool) -> torch.Tensor:
    """Images (N, H, W, 3) or (N, H, W) in [0, 1] -> (N, C, H, W) float64; C = 1 when gray."""
    t = _as_tensor(x, name, (3, 4))
    if t.dim() == 4 and t.shape[-1] != 3:
        raise ValueError(f"{name}: expected (N, H, W, 3) or (N, H, W) images, got shape {tuple(t.shape)}")
    if t.numel() and (t.min() < 0 or t.max() > 1):
        raise ValueError(f"{name}: pixel values must lie in [0, 1], got [{t.min():.3g}, {t.max():.3g}]")
    if t.dim() == 3:
        return t[:, None]
    if gray:
        return (t * t.new_tensor(GRAY_WEIGHTS)).sum(-1)[:, None]
    return t.permute(0, 3, 1, 2)


def _gaussian_1d(size: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian kernel (size,); the 2-D window is its outer product."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(gen, gt, gray: bool = True, win_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """Standard SSIM (Wang et al. 2004) per pair (N,): Gaussian window (11, sigma 1.5), data range 1,
    population statistics, averaged over the valid region (and channels when gray=False).

    Images are float in [0, 1], (N, H, W, 3) or grayscale (N, H, W); gray=True converts RGB to luma
    first (MindEye's setting, equal to skimage's structural_similarity(gaussian_weights=True)).
    """
    gen, gt = _images(gen, "gen", gray), _images(gt, "gt", gray)  # (N, C, H, W)
    _check_pairs(gen, gt)
    if min(gen.shape[-2:]) < win_size:
        raise ValueError(f"SSIM window {win_size} is larger than the images {tuple(gen.shape[-2:])}")
    g = _gaussian_1d(win_size, sigma)
    if len(gen) == 0:
        return np.empty(0)
    return torch.cat([_ssim_chunk(gen[i : i + SSIM_CHUNK], gt[i : i + SSIM_CHUNK], g, k1, k2)
                      for i in range(0, len(gen), SSIM_CHUNK)]).numpy()


def _ssim_chunk(gen: torch.Tensor, gt: torch.Tensor, g: torch.Tensor, k1: float, k2: float) -> torch.Tensor:
    """SSIM (N,) of float64 (N, C, H, W) pairs; the Gaussian blur is separable (two 1-D passes), so
    a float64 convolution's unfolded input is win_size times smaller than with the 2-D window."""
    channels, size = gen.shape[1], len(g)
    rows, cols = g.view(1, 1, size, 1).expand(channels, 1, size, 1), g.view(1, 1, 1, size).expand(channels, 1, 1, size)

    def blur(x):  # local weighted mean over the window, valid region only
        return F.conv2d(F.conv2d(x, rows, groups=channels), cols, groups=channels)

    mu1, mu2 = blur(gen), blur(gt)
    var1, var2 = blur(gen * gen) - mu1**2, blur(gt * gt) - mu2**2
    cov = blur(gen * gt) - mu1 * mu2
    c1, c2 = k1**2, k2**2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * cov + c2)) / ((mu1**2 + mu2**2 + c1) * (var1 + var2 + c2))
    return ssim_map.mean(dim=(1, 2, 3))


def pixcorr(gen, gt) -> np.ndarray:
    """Pearson correlation (N,) of the flattened pixels of each (generated, ground truth) pair."""
    gen, gt = _as_tensor(gen, "gen", (3, 4)), _as_tensor(gt, "gt", (3, 4))
    _check_pairs(gen, gt)
    gen, gt = gen.flatten(1), gt.flatten(1)  # (N, H*W*C)
    gen, gt = gen - gen.mean(1, keepdim=True), gt - gt.mean(1, keepdim=True)
    return F.cosine_similarity(gen, gt, dim=1).numpy()
