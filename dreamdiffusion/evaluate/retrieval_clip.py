"""The CLIP of `evaluate.retrieval_clip` (source open_clip): an open_clip image tower from a local weight file.

THINGS-EEG2 peers score 200-way retrieval in the space of open_clip ViT-H-14 (laion2b_s32b_b79k: ATM, UBP) or
RN50 (openai: NICE). The architecture is open_clip's own (`open_clip.list_models()`) or a folder inside the
repository in open_clip's layout (open_clip_config.json: `model_cfg`, `preprocess_cfg`; as
foundation/clip_mini.py writes it). The weights are a file inside the repository whose sha256 matches the params
before it is read (safetensors or weights-only torch, evaluate/extractors.py's reader), in open_clip's state-dict
layout (`visual.*`: what open_clip's own and its Hugging Face files hold; the text tower is not used). The tower's
shapes are first built on the meta device and compared with the file, so a config that does not match the
weights is refused before any memory is allocated for it. Images go through the CLIP's own preprocess: resized
(bicubic) to its image size, normalised by its mean / std; embeddings are unit-norm.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from dreamdiffusion.core.config import ConfigError
from dreamdiffusion.core.fileio import REPO_ROOT, DataError, repository_file
from dreamdiffusion.evaluate.extractors import checked_file, mismatch, read_state

KEY = "evaluate.retrieval_clip"
MAX_CONFIG_BYTES = 1 << 20  # open_clip_config.json is ~1 KiB; a larger one is refused unread


class ImageTower(nn.Module):
    """An open_clip image tower under the name the evaluation calls (`encode_image`)."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)  # (B, D), as open_clip's CLIP.encode_image (not normalised)


@dataclasses.dataclass
class RetrievalCLIPModel:
    """The loaded retrieval CLIP, shaped as the foundation's CLIP is read (`clip`, `clip_transform`, `image_size`)."""

    clip: ImageTower
    clip_transform: Callable  # float (B, 3, H, W) in [0, 1] -> the CLIP's input (its size, mean, std)
    image_size: int
    report: dict  # model, weights file and sha256, image size, mean, std


def open_clip_name(model: str, root: Path) -> str:
    """open_clip's name of `model`: a built-in architecture, or `local-dir:` of a repository folder in its layout."""
    import open_clip

    from dreamdiffusion.foundation.clip_mini import CONFIG_NAME

    if model in open_clip.list_models():
        return model
    if not (root / model / CONFIG_NAME).is_file():
        raise ConfigError(f"{KEY}.model: {model!r} is neither an open_clip architecture (open_clip.list_models(): "
                          f"ViT-H-14, RN50, ...) nor a folder inside the repository holding {CONFIG_NAME}")
    config = repository_file(f"{model}/{CONFIG_NAME}", f"{KEY}.model", root)
    if config.stat().st_size > MAX_CONFIG_BYTES:
        raise DataError(f"{config}: {config.stat().st_size:,} bytes, above the {MAX_CONFIG_BYTES:,} of an open_clip "
                        "config (refused unread)")
    return f"local-dir:{config.parent}"


def image_tower(name: str, device: str = "cpu") -> tuple[nn.Module, dict]:
    """The randomly initialised image tower of open_clip model `name` (nothing downloaded, no weights read) and
    its preprocess config; `device` "meta" inside `torch.device("meta")`: shapes only, no memory."""
    import open_clip

    logging.getLogger().disabled = True  # open_clip warns that no pretrained weights were loaded: intended
    try:
        model = open_clip.create_model(name, pretrained=None, load_weights=False, pretrained_text=False, device=device)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:  # a malformed local config
        raise DataError(f"{KEY}.model: open_clip cannot build {name!r} ({type(err).__name__}: "
                        f"{' '.join(str(err).split())[:300]})") from None
    finally:
        logging.getLogger().disabled = False
    return model.visual, open_clip.get_model_preprocess_cfg(model)


def load_retrieval_clip(cfg, device, root: str | Path | None = None) -> RetrievalCLIPModel:
    """The configured CLIP (`cfg`: evaluate.retrieval_clip): name checked, file checked (place, sha256) then read,
    matched to the tower's shapes (built on the meta device), loaded into the tower built for real."""
    from dreamdiffusion.foundation.clip_mini import clip_tensor_transform

    root = Path(root or REPO_ROOT).resolve()
    name = open_clip_name(cfg.model, root)
    target = checked_file(cfg.weights, cfg.sha256, f"{KEY}.weights", f"{KEY}.sha256", root)
    state = {key.removeprefix("visual."): value for key, value in read_state(target, f"open_clip {cfg.model}").items()
             if key.startswith("visual.")}
    with torch.device("meta"):
        shapes, _ = image_tower(name, "meta")
    if problems := mismatch(shapes, state):
        raise DataError(f"{target}: not the image tower of open_clip {cfg.model} that {KEY} expects (open_clip's "
                        f"state-dict layout, visual.*): {'; '.join(problems)}")
    visual, pre_cfg = image_tower(name)
    visual.load_state_dict(state, strict=False)  # all but BatchNorm counters, as `mismatch` checked
    size = pre_cfg["size"] if isinstance(pre_cfg["size"], int) else pre_cfg["size"][0]
    report = {"source": "open_clip", "model": cfg.model, "weights": {"file": target.relative_to(root).as_posix(),
              "sha256": cfg.sha256}, "image_size": size, "mean": list(pre_cfg["mean"]), "std": list(pre_cfg["std"]),
              "resize": "images.h5 images to image_size x image_size (PIL bicubic), then mean/std"}
    tower = ImageTower(visual).eval().requires_grad_(False).to(device)
    return RetrievalCLIPModel(tower, clip_tensor_transform(pre_cfg), size, report)


def retrieval_clip_setup(cfg, device, root: str | Path | None = None) -> RetrievalCLIPModel | None:
    """The retrieval CLIP when the params ask for one (retrieval on, source open_clip), loaded before any scoring."""
    if not cfg.retrieval_in_other_clip:
        return None
    return load_retrieval_clip(cfg.retrieval_clip, device, root)
