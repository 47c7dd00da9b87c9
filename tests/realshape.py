"""Local copies of the real foundation models: random weights, exact real shapes and file layouts.

    sources = build_real_shape_sources(tmp_path)   # {'stable_diffusion', 'clip', 'judge', 'inception'}

What a user of `foundation.source: pretrained` supplies offline, without the downloads:
  sd15/                   diffusers Stable Diffusion 1.5 folder (unet, vae, text_encoder, tokenizer, scheduler)
  ViT-L-14.safetensors    open_clip ViT-L-14 (QuickGELU, as OpenAI trained it), a plain state dict
  vit_h_14.pth            torchvision ViT-H/14 state dict (the ImageNet judge)
  weights-inception-...   torch-fidelity's `inception-v3-compat` state dict (FID/IS/KID)
About 8.6 GB of float32 weights: built in a subprocess, one model at a time, and cached under
`root/<sha256 of this file + arguments>/` (`complete.json`, written last, marks a finished build).
"""
from __future__ import annotations

import gc
import gzip
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dreamdiffusion.foundation.shapes import SD15_SCHEDULE, sd15_text_config, sd15_unet_config, sd15_vae_config

SEED = 0
MARKER = "complete.json"
SD_DIR, CLIP_FILE, JUDGE_FILE = "sd15", "ViT-L-14.safetensors", "vit_h_14.pth"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # the name torch-fidelity downloads it under
SOURCE_NAMES = {"stable_diffusion": SD_DIR, "clip": CLIP_FILE, "judge": JUDGE_FILE, "inception": INCEPTION_FILE}
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def param_count(model: torch.nn.Module) -> int:
    """Number of parameters (weights only, no buffers)."""
    return sum(p.numel() for p in model.parameters())


def clip_bpe() -> tuple[list[str], list[str]]:
    """CLIP's 49,408 tokens and 48,894 merges from open_clip's bundled BPE file, as CLIP's SimpleTokenizer has them."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]  # line 0: version
    chars = list(bytes_to_unicode().values())  # 256 byte-level characters
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    return tokens, merges


def write_clip_tokenizer(folder: Path) -> None:
    """SD 1.5's tokenizer/ layout: vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json."""
    tokens, merges = clip_bpe()
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {**special, "add_prefix_space": False, "do_lower_case": True, "errors": "replace",
              "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def sd15_unet(resolution: int):
    """SD 1.5's UNet (859,520,964 parameters); sample_size (a config value) = resolution // 8."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**sd15_unet_config(resolution))  # latents (B, 4, r/8, r/8), text (B, 77, 768)


def sd15_vae(resolution: int):
    """SD 1.5's VAE (83,653,863 parameters): images (B, 3, r, r) <-> latents (B, 4, r/8, r/8)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**sd15_vae_config(resolution))


def sd15_text_encoder():
    """CLIP ViT-L/14's text tower as SD 1.5 ships it (123,060,480 parameters): ids (B, 77) -> (B, 77, 768)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**sd15_text_config()))


def sd15_scheduler():
    """SD 1.5's PNDM scheduler (stable-diffusion-v1-5 scheduler/scheduler_config.json)."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(**SD15_SCHEDULE, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)


def build_sd15(folder: Path, resolution: int) -> dict[str, int]:
    """Write the SD 1.5 folder with `save_pretrained`; returns parameter counts per model."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    tokens, merges = clip_bpe()
    tokenizer = CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[tuple(m.split()) for m in merges],
                              model_max_length=77)
    pipe = StableDiffusionPipeline(
        unet=sd15_unet(resolution), vae=sd15_vae(resolution), text_encoder=sd15_text_encoder(), tokenizer=tokenizer,
        scheduler=sd15_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    shutil.rmtree(folder / "tokenizer")  # transformers 5 writes tokenizer.json; SD 1.5 ships vocab.json + merges.txt
    write_clip_tokenizer(folder / "tokenizer")
    return {name: param_count(getattr(pipe, name)) for name in ("unet", "vae", "text_encoder")}


def build_clip(path: Path) -> dict[str, int]:
    """open_clip ViT-L-14 with QuickGELU as a safetensors state dict (what `create_model(pretrained=path)` loads)."""
    import open_clip
    from safetensors.torch import save_file

    model = open_clip.create_model("ViT-L-14", force_quick_gelu=True)  # images (B, 3, 224, 224), text (B, 77) -> 768
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return {"clip": param_count(model)}


def build_judge(path: Path, image_size: int) -> dict[str, int]:
    """torchvision ViT-H/14 state dict; only the position embedding (1, (size/14)**2 + 1, 1280) depends on the size."""
    import torchvision

    model = torchvision.models.vit_h_14(image_size=image_size)  # 1000 ImageNet classes
    torch.save(model.state_dict(), path)
    return {"judge": param_count(model)}


def build_inception(path: Path) -> dict[str, int]:
    """A state dict in exactly the format torch-fidelity's `inception-v3-compat` loads (strictly) from a file."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class RandomInception(FeatureExtractorInceptionV3):
        """torch-fidelity's InceptionV3 module tree, left at PyTorch's random init."""

        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None  # skip the constructor's load: there are no weights yet

    torch.save({}, path)  # a placeholder for the constructor's torch.load, overwritten below
    model = RandomInception("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
        torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")  # He et al. 2015: features do not vanish
    torch.save(model.state_dict(), path)  # uint8 (B, 3, H, W) -> 2048 pool features, 1008 logits
    return {"inception": param_count(model)}


def build_all(folder: Path, resolution: int, judge_image_size: int) -> None:
    """Build every source into `folder`, one model at a time; write `complete.json` last (atomically)."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    folder.mkdir(parents=True)
    steps = {"stable_diffusion": lambda: build_sd15(folder / SD_DIR, resolution),
             "clip": lambda: build_clip(folder / CLIP_FILE),
             "judge": lambda: build_judge(folder / JUDGE_FILE, judge_image_size),
             "inception": lambda: build_inception(folder / INCEPTION_FILE)}
    parts = {}
    for name, step in steps.items():
        torch.manual_seed(SEED)
        start = time.perf_counter()
        params = step()
        gc.collect()
        path = folder / SOURCE_NAMES[name]
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        parts[name] = {"params": params, "seconds": round(time.perf_counter() - start, 1),
                       "bytes": sum(p.stat().st_size for p in files),
                       "process_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    marker = {"source_sha256": source_sha256(), "resolution": resolution, "judge_image_size": judge_image_size,
              "seed": SEED, "parts": parts}
    (folder / f".{MARKER}.tmp").write_text(json.dumps(marker, indent=2))
    os.replace(folder / f".{MARKER}.tmp", folder / MARKER)


def source_sha256() -> str:
    """sha256 of the code that decides what is built: this module and the shapes it builds from."""
    from dreamdiffusion.foundation import shapes

    return hashlib.sha256(Path(__file__).read_bytes() + Path(shapes.__file__).read_bytes()).hexdigest()


def build_real_shape_sources(root: Path, resolution: int = 64, judge_image_size: int = 224) -> dict[str, Path]:
    """Paths {'stable_diffusion', 'clip', 'judge', 'inception'} of the sources, built in a subprocess if not cached."""
    args = {"resolution": resolution, "judge_image_size": judge_image_size}
    key = hashlib.sha256((source_sha256() + json.dumps(args, sort_keys=True)).encode()).hexdigest()[:16]
    root, folder = Path(root), Path(root) / key
    if not (folder / MARKER).is_file():
        remove_stale_builds(root)
        code = "import sys; sys.path.insert(0, sys.argv[1]); import realshape; realshape.main(sys.argv[2:])"
        subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(folder), str(resolution),
                        str(judge_image_size)], check=True)
    return {name: folder / entry for name, entry in SOURCE_NAMES.items()}


def remove_stale_builds(root: Path) -> None:
    """Delete unfinished builds and builds by another version of this module (each is ~8.6 GB)."""
    for folder in (f for f in (root.iterdir() if root.is_dir() else []) if f.is_dir()):
        marker = folder / MARKER
        if not marker.is_file() or json.loads(marker.read_text()).get("source_sha256") != source_sha256():
            shutil.rmtree(folder)


def main(argv: list[str]) -> None:
    """Subprocess entry: build_all(folder, resolution, judge_image_size)."""
    build_all(Path(argv[0]), int(argv[1]), int(argv[2]))


@pytest.fixture(scope="session")
def real_shape_sources(request) -> dict[str, Path]:
    """The real-shape sources, cached across pytest runs in `.pytest_cache/d/real-shape-sources`."""
    return build_real_shape_sources(request.config.cache.mkdir("real-shape-sources"))
