"""The reconstruction suite (MindEye, Scotti et al. NeurIPS 2023, as ATM applies it to THINGS-EEG2), with the
extractor, layer and resize of every number recorded: PixCorr and SSIM on pixels, 2-way identification on
the features of each extractor this foundation has (its CLIP image tower; its judge's penultimate layer).
The ImageNet extractors of the suite (AlexNet layers 2 and 5, Inception-v3, EfficientNet-B1, SwAV) need
their released weights; they are listed as not computed, never replaced by something else under their name.
"""
from __future__ import annotations

import numpy as np
import torch

from dreamdiffusion.evaluate.identification import two_way_identification

NOT_COMPUTED = {name: "needs torchvision/hub weights this offline foundation does not ship"
                for name in ("alexnet2_2way", "alexnet5_2way", "inception_2way", "effnet_b_distance", "swav_distance")}


@torch.no_grad()
def judge_features(foundation, batches) -> torch.Tensor | None:
    """The judge's penultimate features of image batches (N, F), or None when the judge has no `features`."""
    judge = foundation.judge
    if not callable(getattr(judge, "features", None)):
        return None
    device = next(judge.parameters()).device
    return torch.cat([judge.features(foundation.judge_transform(images).to(device)).float().cpu() for images in batches])


def reconstruction_suite(metrics: dict, size: int, foundation, own: np.ndarray, gen_batches, truth_batches) -> dict:
    """The suite's numbers (from `metrics` and the judge features of generated and ground-truth images, both
    as float (B, 3, H, W) batches), each with its extractor, layer and resize."""
    clip_size = getattr(foundation.clip.visual, "image_size", None)
    suite = {
        "pixcorr": {"value": metrics["pixcorr"], "extractor": "pixels (RGB)", "resize": size},
        "ssim": {"value": metrics["ssim"], "extractor": "pixels (grey, Gaussian window 11, sigma 1.5)",
                 "resize": size},
        "clip_2way": {"value": metrics["clip_2way"], "extractor": "foundation CLIP image tower",
                      "layer": "image embedding", "resize": list(clip_size) if isinstance(clip_size, tuple)
                      else clip_size, "distance": "cosine"},
    }
    gen, truth = judge_features(foundation, gen_batches), judge_features(foundation, truth_batches)
    if gen is not None and truth is not None:
        suite["judge_2way"] = {"value": float(two_way_identification(gen, truth, metric="correlation", own=own).mean()),
                               "extractor": f"judge {foundation.judge_config.get('arch')}", "layer": "penultimate",
                               "resize": foundation.judge_config.get("image_size"), "distance": "correlation"}
    return {**suite, "not_computed": NOT_COMPUTED}
