"""CLIP through open_clip: the demo's miniature model, its training, and the shared folder layout.

A CLIP folder is open_clip's own layout (`open_clip_config.json` with `model_cfg` and
`preprocess_cfg`, plus `open_clip_model.safetensors`), loadable with the `local-dir:` schema.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from safetensors.torch import save_file

from dreamdiffusion.core.fileio import DataError, atomic_path, cpu_state_dict
from dreamdiffusion.core.progress import progress
from dreamdiffusion.foundation.config import CLIPConfig
from dreamdiffusion.foundation.images import augment, descend, one_cycle, resize_normalize, to_float_images

DEMO_MODEL_NAME = "dreamdiffusion-clip-mini"
CONFIG_NAME, WEIGHTS_NAME = "open_clip_config.json", "open_clip_model.safetensors"


def demo_model_cfg(cfg: CLIPConfig, image_size: int) -> dict:
    """open_clip `model_cfg` (embed_dim, vision_cfg, text_cfg) of the miniature CLIP."""
    if cfg.vision == "resnet":  # open_clip builds ModifiedResNet when `layers` is a list of 4
        vision_cfg = {"image_size": image_size, "layers": [cfg.vision_layers] * 4, "width": cfg.vision_width}
    else:
        vision_cfg = {"image_size": image_size, "layers": cfg.vision_layers, "width": cfg.vision_width,
                      "patch_size": cfg.patch_size}
    return {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": vision_cfg,
        "text_cfg": {"context_length": cfg.context_length, "vocab_size": 49408, "width": cfg.text_width,
                     "heads": cfg.text_heads, "layers": cfg.text_layers},
    }


def preprocess_cfg(image_size: int) -> dict:
    """open_clip preprocess config (OpenAI normalisation) for square images of `image_size`."""
    return {"size": image_size, "mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD),
            "interpolation": "bicubic", "resize_mode": "shortest"}


def create_demo_clip(cfg: CLIPConfig, image_size: int) -> tuple[torch.nn.Module, dict]:
    """Register the miniature config with open_clip (`add_model_config`) and build it."""
    model_cfg = demo_model_cfg(cfg, image_size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{DEMO_MODEL_NAME}.json"
        path.write_text(json.dumps(model_cfg))
        open_clip.add_model_config(path)
    logging.getLogger().disabled = True  # open_clip warns that no pretrained weights were loaded: intended
    try:
        return open_clip.create_model(DEMO_MODEL_NAME, pretrained=None), model_cfg
    finally:
        logging.getLogger().disabled = False


def clip_tensor_transform(pre_cfg: dict):
    """Images (B, 3, H, W) float in [0, 1] -> CLIP image input (resized, normalized)."""
    size = pre_cfg["size"] if isinstance(pre_cfg["size"], int) else pre_cfg["size"][0]
    return resize_normalize(size, pre_cfg["mean"], pre_cfg["std"], "bicubic", clamp=True)


def text_token_states(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Per-token text states after the final LayerNorm (B, context_length, width): SD's condition."""
    if not hasattr(model, "token_embedding"):
        raise TypeError(f"{type(model).__name__}: per-token text states need an open_clip CLIP text tower")
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding.to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask)
    return model.ln_final(x)  # (B, T, width)


def contrastive_loss(image_features, text_features, labels, logit_scale) -> torch.Tensor:
    """CLIP loss against the bank of class captions; text->image targets every image of the class."""
    logits = logit_scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T  # (B, C)
    loss_image = F.cross_entropy(logits, labels)
    targets = F.one_hot(labels, text_features.shape[0]).T.float()  # (C, B)
    present = targets.sum(1) > 0
    targets = targets[present] / targets[present].sum(1, keepdim=True)
    loss_text = -(targets * logits.T[present].log_softmax(dim=1)).sum(1).mean()
    return (loss_image + loss_text) / 2


def train_clip(images: np.ndarray, labels: np.ndarray, captions: list[str], cfg: CLIPConfig,
               device: str = "cpu") -> tuple[torch.nn.Module, dict, dict]:
    """Train the miniature CLIP on (image, class caption) pairs; returns (model, model_cfg, preprocess_cfg)."""
    image_size = int(images.shape[1])
    model, model_cfg = create_demo_clip(cfg, image_size)
    model, pre_cfg = model.to(device).train(), preprocess_cfg(image_size)
    transform, tokens = clip_tensor_transform(pre_cfg), open_clip.get_tokenizer(DEMO_MODEL_NAME)(captions).to(device)
    x, y = to_float_images(images), torch.from_numpy(labels).long()
    optimizer, schedule = one_cycle(model.parameters(), cfg.lr, cfg.steps, weight_decay=0.05, pct_start=0.1)
    for _ in progress(range(cfg.steps), desc="clip", mininterval=2):
        idx = torch.randint(0, len(x), (cfg.batch_size,))
        image_features = model.encode_image(transform(augment(x[idx])).to(device))
        loss = contrastive_loss(image_features, model.encode_text(tokens), y[idx].to(device), model.logit_scale.exp())
        descend(loss, optimizer, schedule)
    return model.eval(), model_cfg, pre_cfg


def save_clip(model: torch.nn.Module, model_cfg: dict, pre_cfg: dict, out_dir: str | Path, extra: dict | None = None) -> None:
    """Write an open_clip `local-dir:` folder (config json + safetensors), atomically."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        config = {"model_cfg": model_cfg, "preprocess_cfg": pre_cfg, **(extra or {})}
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        state = cpu_state_dict(model)
        save_file(state, str(tmp / WEIGHTS_NAME))


def load_clip(clip_dir: str | Path, device: str = "cpu"):
    """Load a CLIP folder -> (model, preprocess (PIL), tokenizer, preprocess_cfg)."""
    clip_dir = Path(clip_dir)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (clip_dir / name).is_file():
            raise DataError(f"{clip_dir / name}: missing (a CLIP folder holds {CONFIG_NAME} + {WEIGHTS_NAME})")
    spec = f"local-dir:{clip_dir.resolve()}"
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(spec)
    except (RuntimeError, ValueError) as err:
        detail = " ".join(str(err).split())[:600]
        raise DataError(f"{clip_dir / WEIGHTS_NAME}: weights do not match {CONFIG_NAME}: {detail}") from None
    pre_cfg = json.loads((clip_dir / CONFIG_NAME).read_text()).get("preprocess_cfg", {})
    return model.to(device).eval(), preprocess, open_clip.get_tokenizer(spec), pre_cfg
