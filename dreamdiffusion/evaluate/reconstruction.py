"""The reconstruction suite of MindEye (Scotti et al., NeurIPS 2023), as ATM (Li et al. 2024) applies it to
THINGS-EEG2, with the extractor, layer, resize and distance of every number recorded.

Always computed: PixCorr (RGB) and SSIM (grey) at the generated size; 2-way identification on the foundation
CLIP's image embedding (cosine) and on its judge's penultimate features (correlation). With
`evaluate.suite_mindeye_pixels`, PixCorr and SSIM also as MindEye computes them: both sets resized to 256 x 256,
then 425 x 425 (bilinear). The ImageNet extractors (AlexNet layers 2 and 5 and Inception-v3, 2-way
identification; EfficientNet-B1 and SwAV ResNet-50, correlation distance of each image to its own ground truth)
run as MindEye runs them (evaluate/extractors.py) from local weight files, `evaluate.suite_weights`; one without
a file is listed under `not_computed` with the reason, never replaced by another network under its name.

Images are streamed: the unique ground truths once (their pixels kept as uint8, their features as float64),
then the generated images a batch at a time, each scored against its own ground truth `own[i]`.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from dreamdiffusion.evaluate.extractors import MINDEYE_SIZE, Extractor, load_extractors, mindeye_resize
from dreamdiffusion.evaluate.identification import (SSIM_CHUNK, correlation_distance, pixcorr, ssim,
                                                    two_way_identification)

PIXEL_SIZE = 425  # MindEye / ATM: PixCorr and SSIM on 425 x 425 images (bilinear from 256 x 256)
SCORES = {"2way": "2-way identification among the test images (chance 0.5; higher is better)",
          "distance": "mean correlation distance (1 - Pearson r) to its own ground truth (0: identical; lower is "
                      "better)"}


@dataclasses.dataclass
class SuiteSetup:
    """What the suite computes besides the foundation's own extractors (CLIP, judge)."""

    extractors: list[Extractor]  # the ImageNet extractors with a weight file
    not_computed: dict[str, str]  # suite entry -> why it is not computed
    mindeye_pixels: bool  # PixCorr and SSIM also at 425 x 425
    batch: int  # images per ImageNet-extractor forward pass
    antialias: bool = True  # antialiased bilinear resizes (ATM's torchvision 0.20); false: MindEye's (0.14)

    def resize(self, sizes: str) -> str:
        """How the images were resized to `sizes`, for the report."""
        return f"{sizes}, bilinear ({'antialiased' if self.antialias else 'not antialiased'}, torchvision Resize)"


def suite_setup(cfg, device, root: str | Path | None = None) -> SuiteSetup:
    """Check and load the configured weight files (before any image is scored: a bad file fails fast)."""
    extractors, missing = load_extractors(cfg.suite_weights, device, root)
    if not cfg.suite_mindeye_pixels:
        missing.update(dict.fromkeys(("pixcorr_425", "ssim_425"), "evaluate.suite_mindeye_pixels is false"))
    return SuiteSetup(extractors, missing, cfg.suite_mindeye_pixels, cfg.suite_batch_size, cfg.suite_antialias)


@torch.no_grad()
def judge_features(foundation, images: torch.Tensor) -> torch.Tensor | None:
    """The judge's penultimate features (B, F) of images (B, 3, H, W), or None when the judge has no `features`."""
    judge = foundation.judge
    if not callable(getattr(judge, "features", None)):
        return None
    device = next(judge.parameters()).device
    return judge.features(foundation.judge_transform(images).to(device)).float().cpu()


@dataclasses.dataclass
class Truth:
    """The unique ground truths as the suite compares them."""

    pixels: torch.Tensor  # (U, 3, H, W) uint8 at the generated size (exact: they are k / 255)
    features: dict[str, torch.Tensor]  # suite entry -> (U, D) float64
    judge: torch.Tensor | None  # (U, F) judge penultimate features


def extractor_features(setup: SuiteSetup, small: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every loaded extractor's features (B, D) per suite entry of 256 x 256 images (B, 3, 256, 256)."""
    return {entry: feats for extractor in setup.extractors
            for entry, feats in extractor.features(small, setup.batch, setup.antialias).items()}


def truth_pass(foundation, setup: SuiteSetup, truth_batches) -> Truth:
    """Pixels, judge and extractor features of the unique ground truths (float (B, 3, H, W) batches in [0, 1])."""
    pixels, judge, features = [], [], defaultdict(list)
    for images in truth_batches:
        pixels.append((images * 255).round().to(torch.uint8))
        judge.append(judge_features(foundation, images))
        small = mindeye_resize(images, MINDEYE_SIZE, setup.antialias)  # (B, 3, 256, 256)
        for entry, feats in extractor_features(setup, small).items():
            features[entry].append(feats.double())
    return Truth(torch.cat(pixels), {entry: torch.cat(parts) for entry, parts in features.items()},
                 None if judge[0] is None else torch.cat(judge))


def mindeye_pixels(gen: torch.Tensor, truth: torch.Tensor, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    """PixCorr (RGB) and SSIM (grey) (B,) of 256 x 256 pairs (B, 3, 256, 256) resized to 425 x 425, as MindEye."""
    corr, sim = [], []
    for start in range(0, len(gen), SSIM_CHUNK):  # (c, 3, 425, 425) float64 inside: a chunk at a time
        g, t = (mindeye_resize(x[start:start + SSIM_CHUNK], PIXEL_SIZE, antialias).clamp(0, 1) for x in (gen, truth))
        corr.append(pixcorr(g.numpy(), t.numpy()))
        sim.append(ssim(g.permute(0, 2, 3, 1).numpy(), t.permute(0, 2, 3, 1).numpy()))
    return np.concatenate(corr), np.concatenate(sim)


def pair_scores(score: str, gen: torch.Tensor, truth: torch.Tensor, own: np.ndarray) -> np.ndarray:
    """Per generated image (B,): 2-way identification among all ground truths (U, D), or distance to its own."""
    if score == "2way":
        return two_way_identification(gen, truth, metric="correlation", own=own)
    return correlation_distance(gen, truth[torch.from_numpy(own)])


def generated_pass(foundation, setup: SuiteSetup, truth: Truth, own: np.ndarray, gen_batches) -> tuple[dict, list]:
    """Per-image scores of the generated images (float (B, 3, H, W) batches in [0, 1], generated i of ground truth
    own[i]) by suite entry, and their judge features."""
    scores, judge, start = defaultdict(list), [], 0
    kinds = {entry: extractor.spec.score for extractor in setup.extractors for entry in extractor.spec.nodes}
    for images in gen_batches:
        rows, start = own[start:start + len(images)], start + len(images)
        judge.append(judge_features(foundation, images))
        small = mindeye_resize(images, MINDEYE_SIZE, setup.antialias)  # (B, 3, 256, 256)
        if setup.mindeye_pixels:
            own_truth = mindeye_resize(truth.pixels[torch.from_numpy(rows)] / 255.0, MINDEYE_SIZE, setup.antialias)
            corr, sim = mindeye_pixels(small, own_truth, setup.antialias)
            scores["pixcorr_425"].append(corr)
            scores["ssim_425"].append(sim)
        for entry, feats in extractor_features(setup, small).items():
            scores[entry].append(pair_scores(kinds[entry], feats, truth.features[entry], rows))
    return {entry: np.concatenate(parts) for entry, parts in scores.items()}, judge


def extractor_entries(setup: SuiteSetup, scores: dict) -> dict:
    """The ImageNet-extractor numbers, each with its network, weights, layer, resize and distance."""
    out = {}
    for extractor in setup.extractors:
        spec = extractor.spec
        for entry, node in spec.nodes.items():
            out[entry] = {"value": float(scores[entry].mean()), "extractor": spec.architecture,
                          "weights": extractor.weights, "layer": node,
                          "resize": setup.resize(f"{MINDEYE_SIZE}x{MINDEYE_SIZE} then {spec.size}x{spec.size}")
                          + "; ImageNet mean/std", "distance": "correlation", "score": SCORES[spec.score]}
    return out


def pixel_entries(setup: SuiteSetup, scores: dict) -> dict:
    """PixCorr and SSIM at MindEye's 425 x 425, with their resize."""
    resize = setup.resize(f"{MINDEYE_SIZE}x{MINDEYE_SIZE} then {PIXEL_SIZE}x{PIXEL_SIZE}")
    return {"pixcorr_425": {"value": float(scores["pixcorr_425"].mean()), "extractor": "pixels (RGB)",
                            "resize": resize, "distance": "Pearson r"},
            "ssim_425": {"value": float(scores["ssim_425"].mean()),
                         "extractor": "pixels (grey, Gaussian window 11, sigma 1.5)", "resize": resize,
                         "distance": "SSIM"}}


def reconstruction_suite(metrics: dict, size: int, foundation, own: np.ndarray, gen_batches, truth_batches,
                         setup: SuiteSetup) -> dict:
    """The suite's numbers (from `metrics`, and from the generated and the unique ground-truth images, both float
    (B, 3, H, W) batches in [0, 1]; generated i shows ground truth own[i]), each with its extractor, layer and
    resize; `not_computed` names each entry left out and why."""
    clip_size = getattr(foundation.clip.visual, "image_size", None)
    suite = {
        "pixcorr": {"value": metrics["pixcorr"], "extractor": "pixels (RGB)", "resize": size},
        "ssim": {"value": metrics["ssim"], "extractor": "pixels (grey, Gaussian window 11, sigma 1.5)",
                 "resize": size},
        "clip_2way": {"value": metrics["clip_2way"], "extractor": "foundation CLIP image tower",
                      "layer": "image embedding", "resize": list(clip_size) if isinstance(clip_size, tuple)
                      else clip_size, "distance": "cosine"},
    }
    truth = truth_pass(foundation, setup, truth_batches)
    scores, gen_judge = generated_pass(foundation, setup, truth, own, gen_batches)
    if truth.judge is not None and gen_judge[0] is not None:
        suite["judge_2way"] = {"value": float(two_way_identification(torch.cat(gen_judge), truth.judge,
                                                                     metric="correlation", own=own).mean()),
                               "extractor": f"judge {foundation.judge_config.get('arch')}", "layer": "penultimate",
                               "resize": foundation.judge_config.get("image_size"), "distance": "correlation"}
    if setup.mindeye_pixels:
        suite.update(pixel_entries(setup, scores))
    suite.update(extractor_entries(setup, scores))
    return {**suite, "not_computed": dict(setup.not_computed)}
