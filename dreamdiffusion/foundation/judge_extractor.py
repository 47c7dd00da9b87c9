"""The judge as a torch-fidelity feature extractor (features for FID/KID, logits for IS).

torch-fidelity builds extractors by registered name and passes `feature_extractor_weights_path`
through: here that is the judge folder. Registration happens once per process (guarded).
"""
from __future__ import annotations

import torch
import torch_fidelity
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from dreamdiffusion.core.fileio import DataError
from dreamdiffusion.foundation.judge import JudgeCNN, judge_transform, load_judge

JUDGE_EXTRACTOR = "dreamdiffusion-judge"
INCEPTION_EXTRACTOR = "inception-v3-compat"


class FeaturesAndLogits(FeatureExtractorBase):
    """A torch-fidelity extractor providing 'features' (FID, KID, PRC) and 'logits' (IS)."""

    @staticmethod
    def get_provided_features_list():
        return "features", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

    @staticmethod
    def can_be_compiled():
        return False


class JudgeFeatureExtractor(FeaturesAndLogits):
    """uint8 images (B, 3, H, W) -> ('features' (B, feature_dim), 'logits' (B, classes))."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise DataError(f"{name}: pass feature_extractor_weights_path=<judge folder>")
        self.model, config = load_judge(feature_extractor_weights_path)
        if not isinstance(self.model, JudgeCNN):
            raise DataError(f"{feature_extractor_weights_path}: the judge extractor needs a judge_cnn judge")
        self.transform = judge_transform(config)
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor):
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise DataError(f"{self.name}: expected uint8 images (B, 3, H, W), got {x.dtype} {tuple(x.shape)}")
        device = next(self.model.parameters()).device
        features = self.model.features(self.transform(x.float().to(device) / 255.0))
        out = {"features": features.float(), "logits": self.model.head(features).float()}
        return tuple(out[name] for name in self.features_list)

    @staticmethod
    def get_dummy_input_for_compile():
        return (torch.rand([1, 3, 4, 4]) * 255).to(torch.uint8)


def register_judge_extractor() -> str:
    """Register the judge extractor with torch-fidelity (a no-op when already registered)."""
    if JUDGE_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(JUDGE_EXTRACTOR, JudgeFeatureExtractor)
    return JUDGE_EXTRACTOR
