"""`source: pretrained`: resolve the real models (hub id/tag or local copy) and snapshot them.

Every resolver fails fast with a message that says how to supply a local copy when the
source cannot be reached; every snapshot is written in the same layout as the demo models.
"""
from __future__ import annotations

import json
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

import torch

from dreamdiffusion.core.fileio import DataError, atomic_path, safe_torch_load
from dreamdiffusion.foundation.config import PretrainedConfig
from dreamdiffusion.foundation.judge import IMAGENET_MEAN, IMAGENET_STD, build_judge, load_state_checked, save_judge

SD_ALLOW = ["model_index.json", "scheduler/*.json", "unet/*.json", "vae/*.json", "text_encoder/*.json",
            "tokenizer/*", "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
            "text_encoder/model.safetensors"]
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
SD_PARTS = ("unet", "vae", "scheduler", "text_encoder", "tokenizer")


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", ".", "~")) or Path(spec).exists()


@contextmanager
def _socket_timeout(seconds: float):
    """Bound every blocking socket operation (downloads through urllib/torch.hub) to `seconds`."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def resolve_stable_diffusion(cfg: PretrainedConfig) -> tuple[Path, dict]:
    """A local diffusers folder for `cfg.stable_diffusion` (downloaded if a hub id) + provenance."""
    spec = cfg.stable_diffusion
    if _looks_like_path(spec):
        folder = Path(spec).expanduser()
        if not (folder / "model_index.json").is_file():
            raise DataError(f"{folder}: not a diffusers folder (model_index.json missing)")
        return folder, {"source": str(folder), "revision": "local"}
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(spec, revision=cfg.revision, endpoint=cfg.hub_endpoint, allow_patterns=SD_ALLOW,
                                 etag_timeout=10)
    except Exception as err:  # connection refused, offline mode, unknown repo, ...
        raise DataError(
            f"foundation.pretrained.stable_diffusion: cannot fetch hub id {spec!r} (revision {cfg.revision!r}): "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. Supply a local copy instead: on a "
            f"machine with access run `hf download {spec} --local-dir DIR` (diffusers layout: model_index.json, "
            f"unet/, vae/, scheduler/, text_encoder/, tokenizer/) and set foundation.pretrained.stable_diffusion: DIR"
        ) from None
    return Path(path), {"source": spec, "revision": Path(path).name}


def _load_sd_part(folder: Path, part: str):
    """One component of a diffusers SD folder, with an error naming the subfolder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if not (folder / part).is_dir():
        raise DataError(f"{folder / part}: missing subfolder (a Stable Diffusion folder needs {', '.join(SD_PARTS)})")
    try:
        if part == "scheduler":
            import diffusers

            name = json.loads((folder / part / "scheduler_config.json").read_text())["_class_name"]
            return getattr(diffusers, name).from_pretrained(folder / part)
        loader = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
                  "tokenizer": CLIPTokenizer}[part]
        return loader.from_pretrained(folder / part)
    except (OSError, ValueError, RuntimeError, KeyError, AttributeError) as err:
        detail = " ".join(str(err).split())[:600]
        raise DataError(f"{folder / part}: cannot load {part} ({type(err).__name__}: {detail})") from None


def native_image_size(folder: Path) -> int:
    """The pixel size an SD folder generates: the UNet's latent `sample_size` x the VAE's downsampling."""
    configs = {}
    for part in ("unet", "vae"):
        if not (folder / part).is_dir():
            raise DataError(f"{folder / part}: missing subfolder (a Stable Diffusion folder needs {', '.join(SD_PARTS)})")
        path = folder / part / "config.json"
        try:
            configs[part] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"{path}: cannot read the {part} config ({err})") from None
    return int(configs["unet"]["sample_size"]) * 2 ** (len(configs["vae"]["block_out_channels"]) - 1)


def check_image_size(folder: Path, image_size: int) -> None:
    """Refuse processed images whose size is not the model's native size (no silent resizing)."""
    native = native_image_size(folder)
    if image_size != native:
        raise DataError(f"data/processed/images.h5 holds {image_size} px images, but the Stable Diffusion model in "
                        f"{folder} generates {native} px: set preprocess.image_size: {native} (the real preset does)")


@torch.no_grad()
def sd_prompt_embeds(text_encoder, tokenizer, captions: list[str]) -> torch.Tensor:
    """SD's condition for captions: the text encoder's last hidden states (N, 77, width), on the CPU."""
    tokens = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    device = next(text_encoder.parameters()).device
    return text_encoder(tokens.input_ids.to(device))[0].float().cpu()


def write_model_index(out_dir: Path, scheduler_class: str) -> None:
    """model_index.json of a StableDiffusionPipeline without text encoder, tokenizer or safety checker."""
    import diffusers

    absent = [None, None]
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
             "feature_extractor": absent, "image_encoder": absent, "requires_safety_checker": False,
             "safety_checker": absent, "scheduler": ["diffusers", scheduler_class], "text_encoder": absent,
             "tokenizer": absent, "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def snapshot_stable_diffusion(folder: Path, out_dir: Path, captions: list[str], device: str = "cpu"):
    """Save unet/vae/scheduler as a diffusers folder (no text encoder), one part in memory at a time;
    return the (caption, null) text-encoder states computed on `device`."""
    text_encoder = _load_sd_part(folder, "text_encoder").to(device).eval()
    tokenizer = _load_sd_part(folder, "tokenizer")
    caption_embeds = sd_prompt_embeds(text_encoder, tokenizer, captions)
    null_embeds = sd_prompt_embeds(text_encoder, tokenizer, [""])
    del text_encoder
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for part in ("unet", "vae", "scheduler"):
            model = _load_sd_part(folder, part)
            model.save_pretrained(tmp / part, **({} if part == "scheduler" else {"safe_serialization": True}))
            scheduler_class = type(model).__name__
            del model
        write_model_index(tmp, scheduler_class)
    return caption_embeds, null_embeds


def snapshot_clip(cfg: PretrainedConfig, out_dir: Path) -> dict:
    """open_clip model by tag or local file -> a `local-dir:` CLIP folder; returns provenance."""
    import open_clip
    from open_clip.model import get_model_preprocess_cfg

    from dreamdiffusion.foundation.clip_mini import save_clip

    name, spec = cfg.clip_model, cfg.clip_pretrained
    if _looks_like_path(spec):
        if not Path(spec).expanduser().is_file():
            raise DataError(f"foundation.pretrained.clip_pretrained: file {spec} not found")
        spec = str(Path(spec).expanduser())
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise DataError(f"foundation.pretrained.clip_model: {name!r} is not an open_clip model; "
                        f"choose one of open_clip.list_models()")
    if cfg.clip_quickgelu:  # OpenAI weights were trained with QuickGELU (the '-quickgelu' variants)
        model_cfg["quick_gelu"] = True
    try:
        model = open_clip.create_model(name, pretrained=spec, force_quick_gelu=cfg.clip_quickgelu)
    except Exception as err:
        detail = " ".join(str(err).split())[:600]
        raise DataError(
            f"foundation.pretrained: cannot load open_clip {name!r} with pretrained={spec!r} ({type(err).__name__}: "
            f"{detail}). Supply a local copy: set foundation.pretrained.clip_pretrained to a weights file "
            f"(safetensors or state dict; OpenAI weights use the -quickgelu variant, clip_quickgelu: true)"
        ) from None
    save_clip(model, model_cfg, get_model_preprocess_cfg(model), out_dir, {"model_name": name})
    return {"source": f"open_clip:{name}", "revision": spec}


def _torchvision_state(arch: str) -> tuple[dict, list[str] | None]:
    """Download the DEFAULT torchvision weights of `arch` (fails fast offline)."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        with _socket_timeout(20):
            state = weights.get_state_dict(progress=False)
    except Exception as err:
        raise DataError(
            f"foundation.pretrained.judge_weights: cannot download torchvision {arch} weights ({type(err).__name__}: "
            f"{err}). Supply a local copy: set judge_weights to a state dict file (torch.save(model.state_dict()))"
        ) from None
    return state, weights.meta.get("categories")


def snapshot_judge(cfg: PretrainedConfig, out_dir: Path) -> dict:
    """The ImageNet judge (torchvision arch, downloaded or local state dict) -> a judge folder."""
    categories = None
    if cfg.judge_weights == "torchvision":
        state, categories = _torchvision_state(cfg.judge_arch)
    else:
        state = safe_torch_load(Path(cfg.judge_weights).expanduser())
        state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
        if not isinstance(state, dict) or not state:
            raise DataError(f"{cfg.judge_weights}: expected a state dict of tensors")
    num_classes = int(list(state.values())[-1].shape[0])  # the classifier's bias comes last
    config = {"arch": cfg.judge_arch, "num_classes": num_classes, "class_names": categories,
              "image_size": cfg.judge_image_size, "interpolation": "bicubic", "mean": IMAGENET_MEAN,
              "std": IMAGENET_STD}
    model = build_judge(config)
    load_state_checked(model, state, Path(cfg.judge_weights))
    save_judge(model, config, out_dir)
    return {"source": f"torchvision:{cfg.judge_arch}", "revision": cfg.judge_weights}


def snapshot_inception(cfg: PretrainedConfig, out_dir: Path) -> dict:
    """torch-fidelity's Inception weights (downloaded or a local file) -> `inception/<file>`."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        if cfg.inception_weights == "download":
            try:
                with _socket_timeout(20):
                    torch.hub.download_url_to_file(URL_INCEPTION_V3, str(tmp / INCEPTION_FILE), progress=False)
            except Exception as err:
                raise DataError(
                    f"foundation.pretrained.inception_weights: cannot download {URL_INCEPTION_V3} ({err}). Supply a "
                    f"local copy: set inception_weights to the downloaded {INCEPTION_FILE}") from None
        else:
            source = Path(cfg.inception_weights).expanduser()
            safe_torch_load(source)  # refuses anything that is not a plain weights file
            shutil.copyfile(source, tmp / INCEPTION_FILE)
    return {"source": "torch-fidelity inception-v3-compat", "revision": cfg.inception_weights}
