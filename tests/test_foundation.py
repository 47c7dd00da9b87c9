"""Stage `foundation`, demo mode: every part trains a few steps and round-trips through load_foundation."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dreamdiffusion.core.config import ConfigError, parse_config
from dreamdiffusion.preprocess.processed import SPLIT_CODES, ImageSet, load_images, write_h5
from dreamdiffusion.foundation.config import FoundationConfig
from dreamdiffusion.foundation.load import load_foundation
from dreamdiffusion.foundation.demo import Timer, build_demo, caption_states
from dreamdiffusion.foundation.run import build_foundation
from dreamdiffusion.foundation.clip_mini import clip_tensor_transform, load_clip, save_clip, text_token_states, train_clip
from dreamdiffusion.foundation.images import to_float_images
from dreamdiffusion.foundation.judge import predict
from dreamdiffusion.foundation.judge_extractor import JUDGE_EXTRACTOR, register_judge_extractor
from dreamdiffusion.foundation.text_to_image import images_from_captions
from dreamdiffusion.core.fileio import DataError, sha256_file

ROOT = Path(__file__).resolve().parents[1]
COLOURS = np.array([[220, 40, 40], [40, 200, 40], [40, 60, 220]])
# Miniature everything: a few training steps per part.
TINY = {
    "source": "demo",  # trained here: the shipped release fits only the default world
    "judge": {"channels": [8, 16], "feature_dim": 16, "epochs": 10, "batch_size": 16},
    "clip": {"embed_dim": 16, "vision": "vit", "vision_width": 64, "vision_layers": 1, "patch_size": 8, "text_layers": 1, "context_length": 16,
             "steps": 3, "batch_size": 16},
    "vae": {"block_out_channels": [8, 16, 16], "norm_num_groups": 8, "steps": 3, "batch_size": 8},
    "unet": {"block_out_channels": [16, 32], "norm_num_groups": 8, "attention_head_dim": 4, "steps": 3,
             "batch_size": 8},
    "sample": {"per_class": 2, "inference_steps": 2, "grid_per_class": 2},
}


def tiny_config(**override) -> FoundationConfig:
    return parse_config(FoundationConfig, {**TINY, **override}, "foundation")


def make_image_set(seed: int = 0, size: int = 16, test_value: int | None = None) -> ImageSet:
    """3 classes (a red/green/blue square at a random place on grey); split codes of every kind."""
    rng = np.random.default_rng(seed)
    per_split = {"train": 6, "val": 3, "test": 2, "extra": 6}
    images, labels, split = [], [], []
    for label, colour in enumerate(COLOURS):
        for name, count in per_split.items():
            for _ in range(count):
                image = np.full((size, size, 3), rng.integers(90, 160), np.uint8)
                y, x = rng.integers(0, size // 2, 2)
                image[y : y + size // 2, x : x + size // 2] = colour
                if name == "test" and test_value is not None:
                    image[:] = test_value
                images.append(image)
                labels.append(label)
                split.append(SPLIT_CODES[name])
    return ImageSet(np.stack(images), [f"img{i}" for i in range(len(images))], np.array(labels),
                    np.array(split, np.int8), ["n0", "n1", "n2"], ["a red square", "a green square", "a blue square"])


@pytest.fixture(scope="module")
def images() -> ImageSet:
    return make_image_set()


@pytest.fixture(scope="module")
def demo(tmp_path_factory, images):
    """Train the tiny demo parts once, keeping the in-memory models to compare with the reload."""
    out = tmp_path_factory.mktemp("foundation")
    models = build_demo(images, tiny_config(), 0, out, Timer())
    return out, models


def test_demo_layout_and_manifest(demo):
    out, _ = demo
    for name in ["stable_diffusion/model_index.json", "stable_diffusion/unet/config.json",
                 "stable_diffusion/unet/diffusion_pytorch_model.safetensors",
                 "stable_diffusion/vae/diffusion_pytorch_model.safetensors",
                 "stable_diffusion/scheduler/scheduler_config.json", "clip/open_clip_config.json",
                 "clip/open_clip_model.safetensors", "judge/config.json", "judge/model.safetensors",
                 "conditioning/config.json", "conditioning/embeds.safetensors"]:
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == "demo"
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert sorted(manifest["files"]) == files
    assert all(sha256_file(out / name) == digest for name, digest in manifest["files"].items())
    index = json.loads((out / "stable_diffusion/model_index.json").read_text())
    assert index["text_encoder"] == [None, None] and index["unet"] == ["diffusers", "UNet2DConditionModel"]


def test_round_trip_gives_equal_outputs(demo, images):
    out, models = demo
    found = load_foundation(out)
    x = to_float_images(images.images[:6])
    assert torch.equal(predict(models["judge"], found.judge_transform, x), predict(found.judge, found.judge_transform, x))
    tokens = found.clip_tokenizer(found.captions)
    with torch.no_grad():
        assert torch.equal(models["clip"].encode_image(found.clip_transform(x)), found.clip.encode_image(found.clip_transform(x)))
        assert torch.equal(text_token_states(models["clip"], tokens), text_token_states(found.clip, tokens))
        latents = torch.randn(2, 4, 4, 4)
        assert torch.equal(models["vae"].decode(latents).sample, found.vae.decode(latents).sample)
        t = torch.tensor([10, 500])
        cond = found.caption_embeds[:2]
        assert torch.equal(models["unet"](latents, t, cond).sample, found.unet(latents, t, cond).sample)
    assert found.vae.config.scaling_factor == models["vae"].config.scaling_factor != 0.18215
    caption_embeds, null_embeds = caption_states(models["clip"], found.clip_tokenizer, images.captions)
    assert torch.equal(found.caption_embeds, caption_embeds) and torch.equal(found.null_embeds, null_embeds)
    assert (found.cond_seq_len, found.cond_width) == (16, 64) == tuple(found.caption_embeds.shape[1:])
    assert found.clip_embed_dim == 16
    assert found.captions == images.captions and found.image_size == 16


def test_pipeline_generates_deterministically(demo):
    found = load_foundation(demo[0], parts=("stable_diffusion",))
    assert found.judge is None and found.clip is None
    embeds = found.caption_embeds[[0, 1]]
    first = images_from_captions(found.pipeline(), embeds, found.null_embeds, 3.0, 2, seed=5)
    again = images_from_captions(found.pipeline(), embeds, found.null_embeds, 3.0, 2, seed=5)
    other = images_from_captions(found.pipeline(), embeds, found.null_embeds, 3.0, 2, seed=6)
    assert first.shape == (2, 3, 16, 16) and 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, again) and not torch.equal(first, other)


def _write_pngs(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return folder


def test_judge_fidelity_extractor(demo, images, tmp_path):
    import torch_fidelity

    found = load_foundation(demo[0], parts=())
    kwargs = found.fidelity_kwargs()
    assert kwargs["feature_extractor"] == JUDGE_EXTRACTOR == register_judge_extractor()  # second call: no error
    red = _write_pngs(tmp_path / "red", images.images[images.labels == 0])
    blue = _write_pngs(tmp_path / "blue", images.images[images.labels == 2])
    common = dict(cuda=False, save_cpu_ram=True, verbose=False, cache=False, **kwargs)
    same = torch_fidelity.calculate_metrics(input1=str(red), input2=str(red), fid=True, **common)
    other = torch_fidelity.calculate_metrics(input1=str(red), input2=str(blue), fid=True, isc=True, kid=True,
                                             kid_subset_size=10, **common)
    assert abs(same["frechet_inception_distance"]) < 1e-3
    assert other["frechet_inception_distance"] > 100 * max(abs(same["frechet_inception_distance"]), 1e-3)
    assert other["inception_score_mean"] >= 1.0 and np.isfinite(other["kernel_inception_distance_mean"])


def test_test_images_never_influence_the_models(tmp_path):
    """Replacing every TEST image changes nothing the stage writes (same seed)."""
    outs = []
    for value in (0, 255):
        out = tmp_path / f"run{value}"
        out.mkdir()
        build_demo(make_image_set(test_value=value), tiny_config(judge={"epochs": 1, "channels": [8]}), 0, out, Timer())
        outs.append(json.loads((out / "manifest.json").read_text())["files"])
    assert outs[0] == outs[1]


def test_build_foundation_metrics_and_figures(images, tmp_path):
    metrics, figures = build_foundation(images, tiny_config(), 0, tmp_path)
    for key in ("judge_val_acc", "judge_recon_acc", "clip_zeroshot_acc", "caption_to_image_acc"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["chance"] == pytest.approx(1 / 3) and metrics["caption_images"] == 6
    assert metrics["vae_psnr"] > 0 and metrics["val_images"] == 9
    for part in ("judge", "clip", "vae", "unet", "evaluate", "total"):
        assert metrics[f"seconds_{part}"] >= 0
    assert figures["captions"].height > 3 * 16 and figures["recon"].width >= 6 * 16


def test_sampling_precision_changes_caption_images_and_fp16_on_the_cpu_is_refused(demo, images, tmp_path):
    """foundation.sample.mixed_precision is applied to the caption-to-image sampling (bf16 images differ
    from fp32 ones, slightly), and fp16 on the CPU is refused with the key named."""
    import dataclasses

    from dreamdiffusion.core.compute import ComputeConfig
    from dreamdiffusion.foundation.run import FoundationPaths, run
    from dreamdiffusion.foundation.measure import measure_foundation

    foundation, cfg = load_foundation(demo[0]), tiny_config().sample
    figures = [measure_foundation(foundation, images, dataclasses.replace(cfg, mixed_precision=mp), 0)[1]["captions"]
               for mp in ("fp32", "bf16", "fp32")]
    pixels = [np.asarray(f, dtype=np.int16) for f in figures]
    assert np.array_equal(pixels[0], pixels[2]) and not np.array_equal(pixels[0], pixels[1])
    assert np.abs(pixels[0] - pixels[1]).mean() < 20  # the same images, at a lower precision
    config = dataclasses.replace(tiny_config(), sample=dataclasses.replace(cfg, mixed_precision="fp16"))
    paths = FoundationPaths(*(tmp_path / name for name in ("images.h5", "models", "m.json", "r.png", "c.png")))
    with pytest.raises(ConfigError, match="foundation.sample.mixed_precision: fp16 needs a GPU"):
        run(config, paths, 0, ComputeConfig(device="cpu"))


def test_resnet_clip_round_trip(tmp_path):
    """The default image tower (CLIP's ModifiedResNet) trains, saves and reloads identically."""
    cfg = tiny_config(clip={**TINY["clip"], "vision": "resnet", "vision_width": 8}).clip
    images = make_image_set(size=32)
    clip, model_cfg, pre_cfg = train_clip(images.images, images.labels, images.captions, cfg)
    save_clip(clip, model_cfg, pre_cfg, tmp_path / "clip")
    loaded, _, tokenizer, loaded_pre = load_clip(tmp_path / "clip")
    x = clip_tensor_transform(loaded_pre)(to_float_images(images.images[:4]))
    with torch.no_grad():
        assert torch.equal(clip.encode_image(x), loaded.encode_image(x))
        assert torch.equal(clip.encode_text(tokenizer(images.captions)), loaded.encode_text(tokenizer(images.captions)))
    assert type(loaded.visual).__name__ == "ModifiedResNet" and loaded.visual.output_dim == 16


def test_config_rejects_unknown_nested_key():
    with pytest.raises(ConfigError, match="foundation.vae: unknown key.*stepz"):
        parse_config(FoundationConfig, {"vae": {"stepz": 3}}, "foundation")
    with pytest.raises(ConfigError, match="foundation.source"):
        parse_config(FoundationConfig, {"source": "hub"}, "foundation")


def test_params_yaml_defaults_match_the_dataclass():
    document = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert parse_config(FoundationConfig, document["foundation"], "foundation") == FoundationConfig()


def test_load_errors_name_the_missing_piece(demo, tmp_path):
    with pytest.raises(DataError, match="manifest.json: missing"):
        load_foundation(tmp_path)
    clip_dir = tmp_path / "clip"
    clip_dir.mkdir()
    config = json.loads((demo[0] / "clip/open_clip_config.json").read_text())
    config["model_cfg"]["embed_dim"] = 24
    (clip_dir / "open_clip_config.json").write_text(json.dumps(config))
    (clip_dir / "open_clip_model.safetensors").write_bytes((demo[0] / "clip/open_clip_model.safetensors").read_bytes())
    with pytest.raises(DataError, match="do not match"):
        load_clip(clip_dir)


def test_stage_script_writes_its_outputs(images, tmp_path):
    (tmp_path / "data/processed").mkdir(parents=True)
    arrays = {"images": images.images, "image_names": images.image_names, "labels": images.labels,
              "split": images.split, "class_names": images.class_names, "captions": images.captions}
    write_h5(tmp_path / "data/processed/images.h5", arrays)
    params = {"seed": 0, "tracking": {"enabled": False}, "foundation": TINY}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, str(ROOT / "stages/foundation.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[foundation] unet:" in proc.stdout
    metrics = json.loads((tmp_path / "metrics/foundation_details.json").read_text())
    assert {"vae_psnr", "judge_val_acc", "clip_zeroshot_acc", "caption_to_image_acc", "chance"} <= set(metrics)
    assert (tmp_path / "metrics/foundation_recon.png").is_file()
    assert (tmp_path / "metrics/foundation_captions.png").is_file()
    assert load_foundation(tmp_path / "models/foundation").captions == images.captions
    assert load_images(tmp_path / "data/processed/images.h5").captions == images.captions
