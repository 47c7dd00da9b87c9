"""Typed config of the `foundation` params section (one nested dataclass per part)."""
from __future__ import annotations

from dataclasses import dataclass, field

from dreamdiffusion.core.config import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_IMAGE_SIZE,
    MAX_LAYERS,
    MAX_SAMPLING_STEPS,
    MAX_STEPS,
    MAX_WIDTH,
    PRECISIONS,
    ConfigError,
    param,
)


def check_groups(norm_num_groups: int, block_out_channels: list[int]) -> None:
    """GroupNorm needs `norm_num_groups` to divide every block's channel count."""
    if any(channels % norm_num_groups for channels in block_out_channels):
        raise ConfigError(f"norm_num_groups: {norm_num_groups} must divide every entry of block_out_channels "
                          f"{block_out_channels} (GroupNorm splits each block's channels into equal groups)")


@dataclass(frozen=True)
class JudgeConfig:
    """Demo judge: a small CNN classifier of the synthetic classes."""

    channels: list[int] = param([16, 32, 64], min=1, max=MAX_WIDTH, max_items=8,
                                help="conv widths, one stride-2 stage each")
    feature_dim: int = param(64, min=2, max=MAX_WIDTH, help="penultimate features (FID/KID space)")
    epochs: int = param(8, min=1, max=MAX_EPOCHS)
    batch_size: int = param(64, min=1, max=MAX_BATCH)
    lr: float = param(2e-3, min=0.0)


@dataclass(frozen=True)
class VAEConfig:
    """Demo `AutoencoderKL` (len(block_out_channels)-1 downsamplings)."""

    block_out_channels: list[int] = param([16, 32, 32], min=1, max=MAX_WIDTH, max_items=8)
    layers_per_block: int = param(1, min=1, max=MAX_LAYERS)
    latent_channels: int = param(4, min=1, max=64)
    norm_num_groups: int = param(4, min=1, max=MAX_WIDTH, help="GroupNorm groups (keep >= 4 channels per group)")
    steps: int = param(600, min=1, max=MAX_STEPS)
    batch_size: int = param(32, min=1, max=MAX_BATCH)
    lr: float = param(2e-3, min=0.0)
    kl_weight: float = param(1e-6, min=0.0)
    init_logvar: float = param(-6.0, max=0.0, help="initial posterior log-variance (bias of quant_conv)")
    loss: str = param("l1", choices=["l1", "mse"], help="reconstruction loss (l1 keeps edges sharper)")

    def __post_init__(self):
        check_groups(self.norm_num_groups, self.block_out_channels)


@dataclass(frozen=True)
class CLIPConfig:
    """Demo open_clip model (custom config, bundled OpenAI BPE tokenizer)."""

    embed_dim: int = param(64, min=1, max=MAX_WIDTH)
    vision: str = param("resnet", choices=["resnet", "vit"], help="image tower: CLIP's ModifiedResNet or a ViT")
    vision_width: int = param(16, min=8, max=MAX_WIDTH,
                              help="resnet: stem width (x32 at the output); vit: multiple of 64")
    vision_layers: int = param(1, min=1, max=MAX_LAYERS,
                               help="resnet: blocks per stage (4 stages); vit: transformer layers")
    patch_size: int = param(4, min=1, max=MAX_IMAGE_SIZE, help="vit only")
    text_width: int = param(64, min=64, max=MAX_WIDTH, help="also the UNet cross-attention width")
    text_heads: int = param(2, min=1, max=MAX_LAYERS)
    text_layers: int = param(2, min=1, max=MAX_LAYERS)
    context_length: int = param(77, min=8, max=1024, help="tokens per caption = conditioning sequence length")
    steps: int = param(400, min=1, max=MAX_STEPS)
    batch_size: int = param(64, min=1, max=MAX_BATCH)
    lr: float = param(1e-3, min=0.0)

    def __post_init__(self):
        if self.text_width % self.text_heads:
            raise ConfigError(f"text_heads: {self.text_heads} must divide text_width {self.text_width}")


@dataclass(frozen=True)
class UNetConfig:
    """Demo `UNet2DConditionModel` on VAE latents, cross-attending to CLIP text states."""

    block_out_channels: list[int] = param([48, 96], min=1, max=MAX_WIDTH, max_items=8)
    layers_per_block: int = param(1, min=1, max=MAX_LAYERS)
    attention_head_dim: int = param(8, min=1, max=MAX_WIDTH)
    norm_num_groups: int = param(8, min=1, max=MAX_WIDTH)
    steps: int = param(800, min=1, max=MAX_STEPS)
    batch_size: int = param(48, min=1, max=MAX_BATCH)
    lr: float = param(2e-3, min=0.0)
    caption_dropout: float = param(0.1, min=0.0, max=1.0, help="fraction trained on the empty caption")

    def __post_init__(self):
        check_groups(self.norm_num_groups, self.block_out_channels)


@dataclass(frozen=True)
class SampleConfig:
    """How the demo is measured: caption-to-image generation."""

    guidance_scale: float = param(3.0, min=1.0)
    inference_steps: int = param(6, min=1, max=MAX_SAMPLING_STEPS, help="DDIM steps")
    per_class: int = param(10, min=1, max=10_000, help="images generated per class caption")
    grid_per_class: int = param(4, min=1, max=100, help="images per class in the PNG grids")
    batch_size: int = param(100, min=1, max=MAX_BATCH,
                            help="images per UNet/VAE/judge/CLIP batch in the self-evaluation")
    mixed_precision: str = param("fp32", choices=PRECISIONS,
                                 help="autocast dtype of the caption-to-image sampling (auto: bf16 where native; fp16: GPU)")


@dataclass(frozen=True)
class PretrainedConfig:
    """Where `source: pretrained` finds the real models (hub id/tag or a local path)."""

    stable_diffusion: str = param("stable-diffusion-v1-5/stable-diffusion-v1-5",
                                  help="diffusers hub id or local diffusers folder")
    revision: str = param("main", help="hub revision (ignored for a local folder)")
    hub_endpoint: str | None = param(None, help="hub URL (null: HF_ENDPOINT or huggingface.co)")
    clip_model: str = param("ViT-L-14", help="open_clip model name")
    clip_pretrained: str = param("openai", help="open_clip pretrained tag or local weights file")
    clip_quickgelu: bool = param(True, help="QuickGELU activations (what OpenAI weights were trained with)")
    judge_arch: str = param("vit_h_14", help="torchvision classifier architecture")
    judge_weights: str = param("torchvision", help="'torchvision' (download) or a local state dict file")
    judge_image_size: int = param(518, min=16, max=MAX_IMAGE_SIZE, help="input size (ViT_H_14 DEFAULT weights: 518)")
    inception_weights: str = param("download", help="'download' or a local torch-fidelity Inception file")
    release: str | None = param("models/release", help="a released miniature foundation folder (release.json; "
                                "python -m dreamdiffusion.foundation.release): replaces every other field")


@dataclass(frozen=True)
class FoundationConfig:
    """The `foundation` params section."""

    source: str = param("pretrained", choices=["demo", "pretrained"])
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    clip: CLIPConfig = field(default_factory=CLIPConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    pretrained: PretrainedConfig = field(default_factory=PretrainedConfig)


def check_demo_image_size(cfg: FoundationConfig, image_size: int) -> None:
    """Refuse an image size the demo models cannot divide: the VAE's and the UNet's downsampling
    together, the judge's pooling stages and CLIP's ResNet (32x) must all fit in `image_size`."""
    vae, unet = (2 ** (len(part.block_out_channels) - 1) for part in (cfg.vae, cfg.unet))
    held = f"data/processed/images.h5 holds {image_size} px images (preprocess.image_size)"
    if image_size % (vae * unet):
        raise ConfigError(f"{held}, but the demo models need a multiple of {vae * unet} px: "
                          f"foundation.vae.block_out_channels {cfg.vae.block_out_channels} downsample {vae}x and "
                          f"foundation.unet.block_out_channels {cfg.unet.block_out_channels} another {unet}x")
    if 2 ** len(cfg.judge.channels) > image_size:
        raise ConfigError(f"{held}, but foundation.judge.channels {cfg.judge.channels} halves them "
                          f"{len(cfg.judge.channels)} times: at most {image_size.bit_length() - 1} stages")
    if cfg.clip.vision == "resnet" and image_size < 32:
        raise ConfigError(f"{held}, but foundation.clip.vision 'resnet' downsamples 32x: "
                          f"use images of at least 32 px or foundation.clip.vision: vit")
