"""THE loading API of `models/foundation/` for every later stage (demo and pretrained alike).

Layout:
    stable_diffusion/   diffusers folder: model_index.json, unet/, vae/, scheduler/ (no text encoder)
    clip/               open_clip folder: open_clip_config.json + open_clip_model.safetensors
    judge/              config.json + model.safetensors (the n-way classifier)
    conditioning/       config.json + embeds.safetensors: each class caption's text states
                        `caption_embeds` (C, T, D) and the empty caption's `null_embeds` (1, T, D)
    inception/          (pretrained only) torch-fidelity's Inception weights
    manifest.json       sources, revisions, sha256 of every file, fidelity extractor (written last;
                        `load_foundation` checks every file against it)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dreamdiffusion.core.fileio import DataError, atomic_path, verify_manifest
from dreamdiffusion.foundation.clip_mini import clip_tensor_transform, load_clip
from dreamdiffusion.foundation.judge import judge_transform, load_judge
from dreamdiffusion.foundation.pretrained import _load_sd_part, native_image_size

PARTS = ("unet", "vae", "scheduler", "clip", "judge")
ALIASES = {"stable_diffusion": ("unet", "vae", "scheduler")}


@dataclass
class Foundation:
    """Loaded foundation models; parts not requested in `load_foundation(parts=...)` are None."""

    root: Path
    manifest: dict
    caption_embeds: torch.Tensor  # (C, T, D) text states of each class caption
    null_embeds: torch.Tensor  # (1, T, D) text states of the empty caption
    captions: list[str]
    unet: Any = None
    vae: Any = None
    scheduler: Any = None
    clip: Any = None
    clip_preprocess: Any = None  # PIL image -> CLIP input (open_clip's transform)
    clip_tokenizer: Any = None
    clip_transform: Any = None  # float (B, 3, H, W) in [0, 1] -> CLIP input
    judge: Any = None
    judge_config: dict = field(default_factory=dict)
    judge_transform: Any = None  # float (B, 3, H, W) in [0, 1] -> judge input

    @property
    def cond_seq_len(self) -> int:
        """Tokens of the UNet's cross-attention condition (77 for SD)."""
        return int(self.caption_embeds.shape[1])

    @property
    def cond_width(self) -> int:
        """Width of the condition (the UNet's cross_attention_dim: 768 for SD 1.x)."""
        return int(self.caption_embeds.shape[2])

    @property
    def clip_embed_dim(self) -> int:
        """Width of CLIP's projected image embedding (the alignment target), from its config."""
        from dreamdiffusion.foundation.clip_mini import CONFIG_NAME

        return int(json.loads((self.root / "clip" / CONFIG_NAME).read_text())["model_cfg"]["embed_dim"])

    @property
    def image_size(self) -> int:
        """Pixel size the pipeline generates (read from the UNet and VAE configs; no model needs loading)."""
        return native_image_size(self.root / "stable_diffusion")

    def pipeline(self, scheduler=None):
        """A StableDiffusionPipeline (no text encoder) that generates from `prompt_embeds`."""
        from dreamdiffusion.foundation.text_to_image import make_pipeline

        return make_pipeline(self.unet, self.vae, scheduler or self.scheduler)

    def fidelity_kwargs(self) -> dict:
        """kwargs for `torch_fidelity.calculate_metrics`: the feature extractor and its weights."""
        fidelity = self.manifest["fidelity"]
        if fidelity["feature_extractor"] != "inception-v3-compat":
            from dreamdiffusion.foundation.judge_extractor import register_judge_extractor

            register_judge_extractor()
        return {"feature_extractor": fidelity["feature_extractor"],
                "feature_extractor_weights_path": str(self.root / fidelity["weights"])}


def save_conditioning(caption_embeds: torch.Tensor, null_embeds: torch.Tensor, captions: list[str],
                      source: str, out_dir: str | Path) -> None:
    """Write `conditioning/` (config.json + embeds.safetensors), atomically."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        config = {"captions": list(captions), "seq_len": int(caption_embeds.shape[1]),
                  "width": int(caption_embeds.shape[2]), "source": source}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file({"caption_embeds": caption_embeds.float().contiguous(), "null_embeds": null_embeds.float().contiguous()},
                  str(tmp / "embeds.safetensors"))


def _load_conditioning(folder: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    for name in ("config.json", "embeds.safetensors"):
        if not (folder / name).is_file():
            raise DataError(f"{folder / name}: missing (conditioning/ holds config.json + embeds.safetensors)")
    config = json.loads((folder / "config.json").read_text())
    embeds = load_file(str(folder / "embeds.safetensors"))
    if "caption_embeds" not in embeds or "null_embeds" not in embeds:
        raise DataError(f"{folder / 'embeds.safetensors'}: expected tensors caption_embeds and null_embeds")
    if embeds["caption_embeds"].shape[0] != len(config["captions"]):
        raise DataError(f"{folder}: {embeds['caption_embeds'].shape[0]} caption embeddings for "
                        f"{len(config['captions'])} captions")
    return embeds["caption_embeds"], embeds["null_embeds"], config["captions"]


def load_foundation(root: str | Path, device: str | torch.device = "cpu", parts=PARTS) -> Foundation:
    """Load `models/foundation/` (only `parts`) after checking every file's sha256 against its manifest
    (see `verify_manifest` for the cost); a missing, changed or inconsistent piece raises DataError."""
    root = Path(root)
    manifest = verify_manifest(root, "foundation")
    parts = {p for part in parts for p in ALIASES.get(part, (part,))}
    unknown = parts - set(PARTS)
    if unknown:
        raise ValueError(f"unknown foundation parts {sorted(unknown)}; choose from {PARTS} or {list(ALIASES)}")
    caption_embeds, null_embeds, captions = _load_conditioning(root / "conditioning")
    found = Foundation(root, manifest, caption_embeds, null_embeds, captions)
    sd = root / "stable_diffusion"
    for part in ("unet", "vae"):
        if part in parts:
            setattr(found, part, _load_sd_part(sd, part).to(device).eval())
    if "scheduler" in parts:
        found.scheduler = _load_sd_part(sd, "scheduler")
    if "clip" in parts:
        found.clip, found.clip_preprocess, found.clip_tokenizer, pre_cfg = load_clip(root / "clip", device)
        found.clip_transform = clip_tensor_transform(pre_cfg)
    if "judge" in parts:
        found.judge, found.judge_config = load_judge(root / "judge", device)
        found.judge_transform = judge_transform(found.judge_config)
    return found
