"""The judge: an image classifier used for n-way accuracy and (demo) FID/IS/KID features.

Saved as `judge/config.json` + `judge/model.safetensors`. `arch` is `judge_cnn` (the demo's
small CNN) or a torchvision classifier name (e.g. `vit_h_14`, the ImageNet judge).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from dreamdiffusion.core.fileio import DataError, atomic_path, cpu_state_dict
from dreamdiffusion.core.progress import progress
from dreamdiffusion.foundation.config import JudgeConfig
from dreamdiffusion.foundation.images import augment, descend, one_cycle, resize_normalize, to_float_images

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


class JudgeCNN(nn.Module):
    """Conv stages (two 3x3 convs + BN + ReLU, then 2x pooling) -> pooled features -> logits."""

    def __init__(self, channels: list[int], feature_dim: int, num_classes: int):
        super().__init__()
        layers, width = [], 3
        for out in channels:
            layers += [nn.Conv2d(width, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(),
                       nn.Conv2d(out, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
            width = out
        self.body = nn.Sequential(*layers)
        self.proj = nn.Sequential(nn.Linear(width, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized images (B, 3, H, W) -> penultimate features (B, feature_dim)."""
        return self.proj(self.body(x).mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes)


def build_judge(config: dict) -> nn.Module:
    """Instantiate the classifier a judge config describes (weights uninitialised/random)."""
    arch = config["arch"]
    if arch == "judge_cnn":
        return JudgeCNN(config["channels"], config["feature_dim"], config["num_classes"])
    import torchvision

    kwargs = {"image_size": config["image_size"]} if arch.startswith("vit_") else {}
    try:
        return torchvision.models.get_model(arch, weights=None, num_classes=config["num_classes"], **kwargs)
    except ValueError as err:
        raise DataError(f"judge arch {arch!r} is neither 'judge_cnn' nor a torchvision model ({err})") from None


def judge_transform(config: dict):
    """Images (B, 3, H, W) float in [0, 1] -> the judge's input (resized, normalized)."""
    return resize_normalize(config["image_size"], config["mean"], config["std"], config.get("interpolation", "bilinear"))


def train_judge(images: np.ndarray, labels: np.ndarray, class_names: list[str], cfg: JudgeConfig,
                device: str = "cpu") -> tuple[nn.Module, dict]:
    """Train the demo judge on uint8 images (N, H, W, 3); returns (model in eval mode, config)."""
    x = to_float_images(images)
    mean, std = x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()
    config = {"arch": "judge_cnn", "num_classes": len(class_names), "class_names": list(class_names),
              "image_size": int(images.shape[1]), "interpolation": "bilinear", "mean": mean, "std": std,
              "channels": list(cfg.channels), "feature_dim": cfg.feature_dim}
    model, transform = build_judge(config).to(device), judge_transform(config)
    y = torch.from_numpy(labels).long()
    steps = cfg.epochs * max(1, len(x) // cfg.batch_size)
    optimizer, schedule = one_cycle(model.parameters(), cfg.lr, steps, weight_decay=1e-4)
    model.train()
    for _ in progress(range(steps), desc="judge", mininterval=2):
        idx = torch.randint(0, len(x), (cfg.batch_size,))
        loss = F.cross_entropy(model(transform(augment(x[idx])).to(device)), y[idx].to(device))
        descend(loss, optimizer, schedule)
    return model.eval(), config


@torch.no_grad()
def predict(model: nn.Module, transform, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Class logits (N, num_classes) of float images (N, 3, H, W) in [0, 1]."""
    device = next(model.parameters()).device
    out = [model(transform(images[i : i + batch_size]).to(device)).float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def save_judge(model: nn.Module, config: dict, out_dir: str | Path) -> None:
    """Write `config.json` + `model.safetensors` into a new folder `out_dir`, atomically."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        state = cpu_state_dict(model)
        save_file(state, str(tmp / WEIGHTS_NAME))


def load_judge(judge_dir: str | Path, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Load a judge folder; a missing file or a config/weights mismatch raises DataError."""
    judge_dir = Path(judge_dir)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (judge_dir / name).is_file():
            raise DataError(f"{judge_dir / name}: missing (a judge folder holds {CONFIG_NAME} + {WEIGHTS_NAME})")
    config = json.loads((judge_dir / CONFIG_NAME).read_text())
    model = build_judge(config)
    load_state_checked(model, load_file(str(judge_dir / WEIGHTS_NAME)), judge_dir / WEIGHTS_NAME)
    return model.to(device).eval(), config


def load_state_checked(model: nn.Module, state: dict, path: Path) -> None:
    """`load_state_dict(strict=True)` with an error that names the file and the mismatch."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:600]
        raise DataError(f"{path}: weights do not match the config's architecture: {detail}") from None
