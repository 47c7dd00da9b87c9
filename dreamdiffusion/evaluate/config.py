"""The `evaluate` params section: metrics, n-way draws, fidelity settings, the reconstruction suite's weights,
the CLIP of the zero-shot retrieval."""
from __future__ import annotations

import dataclasses

from dreamdiffusion.core.config import MAX_BATCH, MAX_DRAWS, ConfigError, param, shown

SHA256_HEX = r"[0-9a-f]{64}"
MAX_RIDGE_ALPHAS = 64


@dataclasses.dataclass(frozen=True)
class WeightFile:
    """One local weight file of a reconstruction-suite extractor (path null: that extractor is not computed)."""

    path: str | None = param(None, help="a file inside the repository (absolute or relative to its root): a torch "
                             "state dict (read weights-only) or safetensors")
    sha256: str | None = param(None, pattern=SHA256_HEX, help="the file's sha256, 64 lowercase hex digits, checked "
                               "before the file is loaded (sha256sum <file>)")

    def __post_init__(self):
        if self.path is not None and self.sha256 is None:
            raise ConfigError("sha256: required with a path (the file is checked against it before it is loaded)")


@dataclasses.dataclass(frozen=True)
class SuiteWeights:
    """The ImageNet extractors of the MindEye reconstruction suite, each from a local file (evaluate/extractors.py)."""

    alexnet: WeightFile = dataclasses.field(default_factory=WeightFile)  # torchvision alexnet (IMAGENET1K_V1)
    inception_v3: WeightFile = dataclasses.field(default_factory=WeightFile)  # torchvision inception_v3 (IMAGENET1K_V1)
    efficientnet_b1: WeightFile = dataclasses.field(default_factory=WeightFile)  # torchvision efficientnet_b1 (DEFAULT)
    swav_resnet50: WeightFile = dataclasses.field(default_factory=WeightFile)  # facebookresearch/swav resnet50


@dataclasses.dataclass(frozen=True)
class RetrievalCLIP:
    """The CLIP whose image space a second zero-shot retrieval is scored in (evaluate/readout.py): the foundation's
    only (`retrieval`), or also an open_clip model from a local file through a ridge read-out (`retrieval_clip`)."""

    source: str = param("foundation", choices=["foundation", "open_clip"],
                        help="foundation: the foundation CLIP's retrieval alone; open_clip: also retrieval in the "
                        "space of `model` with the weights `weights`, a ridge read-out fit on train")
    model: str | None = param(None, pattern=r"[A-Za-z0-9][A-Za-z0-9._+/-]{0,199}",
                              help="an open_clip architecture (open_clip.list_models(): ViT-H-14, RN50, ...) or "
                              "a folder inside the repository holding open_clip_config.json (up to 200 letters, "
                              "digits, '.', '_', '+', '/', '-')")
    weights: str | None = param(None, help="the model's weights: a file inside the repository (absolute or relative "
                                "to its root), open_clip's state dict as safetensors or a weights-only torch file")
    sha256: str | None = param(None, pattern=SHA256_HEX, help="the weights file's sha256, 64 lowercase hex digits, "
                               "checked before the file is loaded (sha256sum <file>)")
    ridge_alphas: list[float] = param([1.0, 10.0, 100.0, 1000.0, 10000.0], min=1e-6, max=1e12,
                                      max_items=MAX_RIDGE_ALPHAS, help="the ridge penalties tried; the one of the "
                                      "best val top-1 is kept (ties: the larger)")

    def __post_init__(self):
        if self.source == "open_clip":
            for key in ("model", "weights", "sha256"):
                if getattr(self, key) is None:
                    raise ConfigError(f"{key}: required with source open_clip (the CLIP's architecture, its local "
                                      "weights file and that file's sha256)")
        if not self.ridge_alphas or len(set(self.ridge_alphas)) != len(self.ridge_alphas):
            raise ConfigError(f"ridge_alphas: expected 1 to {MAX_RIDGE_ALPHAS} distinct penalties, got "
                              f"{shown(self.ridge_alphas)}")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """The `evaluate` params section."""

    nway: int = param(50, min=2, max=MAX_DRAWS, help="n of the n-way protocol (capped at the judge's classes)")
    nway_draws: int = param(50, min=1, max=MAX_DRAWS,
                            help="random distractor draws per image (DreamDiffusion 50, MinD-Vis 1000)")
    fidelity: bool = param(True, help="compute FID / IS / KID")
    kid_subset_size: int = param(100, min=2, max=MAX_DRAWS)
    batch_size: int = param(128, min=1, max=MAX_BATCH, help="images per judge / CLIP / SSIM batch")
    retrieval: bool = param(True, help="zero-shot retrieval: the EEG's CLIP-space embedding ranked against the "
                            "CLIP embeddings of every test image (evaluate/retrieval.py)")
    retrieval_ways: list[int] = param([2, 4, 10], min=2, max=MAX_DRAWS, help="k of the k-way retrieval variants "
                                      "(those above the gallery size are left out)")
    retrieval_draws: int = param(50, min=1, max=MAX_DRAWS, help="random distractor draws of each k-way variant")
    retrieval_shuffles: int = param(20, min=1, max=MAX_DRAWS, help="draws of the shuffled-EEG control")
    retrieval_clip: RetrievalCLIP = dataclasses.field(default_factory=RetrievalCLIP)
    fidelity_batch_size: int = param(64, min=1, max=MAX_BATCH,
                                     help="images per feature-extractor batch in FID / IS / KID")
    suite_mindeye_pixels: bool = param(False, help="PixCorr and SSIM also as MindEye/ATM compute them (256 x 256, "
                                       "then 425 x 425, bilinear), beside the numbers at the generated size")
    suite_antialias: bool = param(True, help="antialiased bilinear resizes in the suite: torchvision >= 0.17's "
                                  "default, that of ATM's environment (0.20); false: MindEye's (torchvision 0.14 did "
                                  "not antialias tensors)")
    suite_weights: SuiteWeights = dataclasses.field(default_factory=SuiteWeights)
    suite_batch_size: int = param(32, min=1, max=MAX_BATCH,
                                  help="images per ImageNet-extractor batch of the reconstruction suite")

    @property
    def retrieval_in_other_clip(self) -> bool:
        """Whether evaluate also retrieves in `retrieval_clip`'s space (its read-out fits on train, alpha on val)."""
        return self.retrieval and self.retrieval_clip.source == "open_clip"
