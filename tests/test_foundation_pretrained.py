"""Stage `foundation`, pretrained mode, offline: local folders/files in the real layouts (tiny models)."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import open_clip
import pytest
import torch
import torchvision
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from dreamdiffusion.core.config import parse_config
from dreamdiffusion.foundation.config import FoundationConfig
from dreamdiffusion.foundation.load import load_foundation
from dreamdiffusion.foundation.run import build_foundation
from dreamdiffusion.foundation.pretrained import INCEPTION_FILE
from dreamdiffusion.core.fileio import DataError, sha256_file

from test_foundation import TINY, make_image_set

CLIP_NAME = "dreamdiffusion-test-openclip"


def byte_chars() -> list[str]:
    """GPT-2/CLIP byte-level alphabet (one printable character per byte)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, extra = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return [chr(c) for c in cs]


def tiny_sd_folder(folder: Path) -> StableDiffusionPipeline:
    """A real-layout SD folder (save_pretrained) of tiny random models, text encoder + tokenizer included."""
    chars = byte_chars()
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=16, bos_token_id=512, eos_token_id=513, pad_token_id=513))
    unet = UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(16, 32), layers_per_block=1,
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        block_out_channels=(8, 16, 16), latent_channels=4, norm_num_groups=8, sample_size=16)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return pipe


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Local copies of every pretrained source, as a user would supply them."""
    root = tmp_path_factory.mktemp("sources")
    torch.manual_seed(0)
    pipe = tiny_sd_folder(root / "sd")
    (root / f"{CLIP_NAME}.json").write_text(json.dumps({
        "embed_dim": 16, "vision_cfg": {"image_size": 16, "layers": 1, "width": 64, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}}))
    open_clip.add_model_config(root / f"{CLIP_NAME}.json")
    clip = open_clip.create_model(CLIP_NAME).eval()
    torch.save(clip.state_dict(), root / "clip.pt")
    judge = torchvision.models.mobilenet_v3_small(num_classes=5).eval()
    torch.save(judge.state_dict(), root / "judge.pth")
    torch.save({"conv.weight": torch.randn(3, 3)}, root / INCEPTION_FILE)
    return root, pipe, clip, judge


def pretrained_config(root: Path, **override) -> FoundationConfig:
    pretrained = {"stable_diffusion": str(root / "sd"), "clip_model": CLIP_NAME, "clip_pretrained": str(root / "clip.pt"),
                  "clip_quickgelu": False, "judge_arch": "mobilenet_v3_small", "judge_weights": str(root / "judge.pth"),
                  "judge_image_size": 32, "inception_weights": str(root / INCEPTION_FILE), "release": None, **override}
    return parse_config(FoundationConfig, {**TINY, "source": "pretrained", "pretrained": pretrained}, "foundation")


@pytest.fixture(scope="module")
def snapshot(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("snapshot")
    images = make_image_set()
    metrics, figures = build_foundation(images, pretrained_config(sources[0]), 0, out)
    return out, metrics, figures, images


def test_snapshot_layout_manifest_and_metrics(sources, snapshot):
    out, metrics, figures, _ = snapshot
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == "pretrained"
    assert manifest["components"]["stable_diffusion"] == {"source": str(sources[0] / "sd"), "revision": "local"}
    assert manifest["components"]["clip"]["source"] == f"open_clip:{CLIP_NAME}"
    assert manifest["fidelity"] == {"feature_extractor": "inception-v3-compat", "weights": f"inception/{INCEPTION_FILE}"}
    assert manifest["files"][f"inception/{INCEPTION_FILE}"] == sha256_file(sources[0] / INCEPTION_FILE)
    assert all(sha256_file(out / name) == digest for name, digest in manifest["files"].items())
    assert not (out / "stable_diffusion/text_encoder").exists()
    assert "judge_val_acc" not in metrics and metrics["vae_psnr"] > 0 and metrics["seconds_stable_diffusion"] >= 0
    assert set(figures) == {"recon", "captions"}


def test_snapshot_reloads_with_the_source_outputs(sources, snapshot):
    _, pipe, clip, judge = sources
    out, _, _, images = snapshot
    found = load_foundation(out)
    tokens = pipe.tokenizer(images.captions + [""], padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        states = pipe.text_encoder(tokens.input_ids)[0]
        assert torch.allclose(found.caption_embeds, states[:-1]) and torch.allclose(found.null_embeds, states[-1:])
        latents, t = torch.randn(2, 4, 4, 4), torch.tensor([3, 700])
        assert torch.equal(found.unet(latents, t, states[:2]).sample, pipe.unet(latents, t, states[:2]).sample)
        assert torch.allclose(found.vae.decode(latents).sample, pipe.vae.decode(latents).sample, atol=1e-6)
        x = torch.rand(2, 3, 16, 16)
        assert torch.equal(found.clip.encode_image(found.clip_transform(x)), clip.encode_image(found.clip_transform(x)))
        assert torch.equal(found.judge(found.judge_transform(x)), judge(found.judge_transform(x)))
    assert type(found.scheduler).__name__ == "PNDMScheduler"
    assert (found.cond_seq_len, found.cond_width, found.clip_embed_dim) == (16, 32, 16)
    kwargs = found.fidelity_kwargs()
    assert kwargs["feature_extractor"] == "inception-v3-compat" and Path(kwargs["feature_extractor_weights_path"]).is_file()


def test_missing_subfolder_is_named(sources, tmp_path):
    shutil.copytree(sources[0] / "sd", tmp_path / "sd")
    shutil.rmtree(tmp_path / "sd/vae")
    cfg = pretrained_config(sources[0], stable_diffusion=str(tmp_path / "sd"))
    with pytest.raises(DataError, match=r"sd/vae: missing subfolder"):
        build_foundation(make_image_set(), cfg, 0, tmp_path / "out")


def test_images_of_another_size_than_the_model_generates_are_refused(sources, tmp_path):
    with pytest.raises(DataError, match=r"holds 32 px images.*generates 16 px: set preprocess.image_size: 16"):
        build_foundation(make_image_set(size=32), pretrained_config(sources[0]), 0, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_config_weights_mismatch_is_named(sources, tmp_path):
    shutil.copytree(sources[0] / "sd", tmp_path / "sd")
    config_file = tmp_path / "sd/unet/config.json"
    config = json.loads(config_file.read_text())
    config["block_out_channels"] = [16, 48]
    config_file.write_text(json.dumps(config))
    cfg = pretrained_config(sources[0], stable_diffusion=str(tmp_path / "sd"))
    with pytest.raises(DataError, match=r"sd/unet: cannot load unet"):
        build_foundation(make_image_set(), cfg, 0, tmp_path / "out")


def test_judge_weights_for_another_architecture_fail(sources, tmp_path):
    from dreamdiffusion.foundation.pretrained import snapshot_judge

    cfg = pretrained_config(sources[0], judge_arch="resnet18")
    with pytest.raises(DataError, match=r"judge.pth: weights do not match"):
        snapshot_judge(cfg.pretrained, tmp_path / "judge")
    assert not (tmp_path / "judge").exists()


def test_missing_clip_file_fails(sources, tmp_path):
    from dreamdiffusion.foundation.pretrained import snapshot_clip

    cfg = pretrained_config(sources[0], clip_pretrained=str(tmp_path / "nope.pt"))
    with pytest.raises(DataError, match="nope.pt not found"):
        snapshot_clip(cfg.pretrained, tmp_path / "clip")


def test_unreachable_hub_id_fails_fast_saying_how_to_supply_a_copy(sources, tmp_path):
    cfg = pretrained_config(sources[0], stable_diffusion="dreamdiffusion-test/no-such-model",
                            hub_endpoint="http://127.0.0.1:9")
    start = time.perf_counter()
    with pytest.raises(DataError, match="local copy"):
        build_foundation(make_image_set(), cfg, 0, tmp_path / "out")
    assert time.perf_counter() - start < 20


def test_quickgelu_is_kept_in_the_snapshot(sources, tmp_path):
    from open_clip.transformer import QuickGELU

    from dreamdiffusion.foundation.clip_mini import load_clip
    from dreamdiffusion.foundation.pretrained import snapshot_clip

    snapshot_clip(pretrained_config(sources[0], clip_quickgelu=True).pretrained, tmp_path / "clip")
    config = json.loads((tmp_path / "clip/open_clip_config.json").read_text())
    assert config["model_cfg"]["quick_gelu"] is True
    model = load_clip(tmp_path / "clip")[0]
    assert any(isinstance(module, QuickGELU) for module in model.modules())
