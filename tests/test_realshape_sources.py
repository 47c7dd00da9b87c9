"""The real-shape sources (tests/realshape.py): exact sizes, loadable files, accepted by the pretrained snapshots.

Run with `pytest -m realscale tests/test_realshape_sources.py` (first run builds ~8.6 GB, then cached).
"""
from __future__ import annotations

import gc
import json
import shutil
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch_fidelity
from PIL import Image
from safetensors import safe_open

from dreamdiffusion.core.config import parse_config
from dreamdiffusion.foundation.config import PretrainedConfig
from dreamdiffusion.foundation.pretrained import resolve_stable_diffusion, snapshot_clip, snapshot_inception, snapshot_judge, snapshot_stable_diffusion

from realshape import (MARKER, build_real_shape_sources, real_shape_sources,  # noqa: F401 (pytest fixture)
                       remove_stale_builds, source_sha256)

pytestmark = pytest.mark.realscale

PARAMS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480,  # SD 1.5
          "clip": 427_616_513, "judge": 632_045_800, "inception": 23_850_960}  # ViT-L-14, ViT-H/14 @ 224, Inception
CAPTIONS = ["a photo of a dog", "An image of a Golden Retriever, running!", "naïve café 123 — x-ray", ""]


@pytest.fixture(scope="module", autouse=True)
def two_threads():
    """At most two intra-op threads (a 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    yield
    torch.set_num_threads(threads)


def pretrained_config(sources: dict[str, Path]) -> PretrainedConfig:
    """foundation.pretrained pointing at the local real-shape copies."""
    return parse_config(PretrainedConfig, {
        "stable_diffusion": str(sources["stable_diffusion"]), "clip_model": "ViT-L-14",
        "clip_pretrained": str(sources["clip"]), "clip_quickgelu": True, "judge_arch": "vit_h_14",
        "judge_weights": str(sources["judge"]), "judge_image_size": 224,
        "inception_weights": str(sources["inception"])}, "foundation.pretrained")


def safetensors_numel(path: Path) -> int:
    """Total number of values stored in a safetensors file (read from its header only)."""
    with safe_open(str(path), framework="pt") as handle:
        return sum(int(np.prod(handle.get_slice(key).get_shape())) for key in handle.keys())


@pytest.fixture
def scratch(tmp_path):
    """tmp_path, deleted after the test (snapshots are GBs; pytest keeps the last runs' tmp dirs)."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)
    gc.collect()  # one big model in memory at a time


def test_build_is_complete_and_cached(real_shape_sources):
    folder = real_shape_sources["clip"].parent
    marker = json.loads((folder / MARKER).read_text())
    counts = {name: n for part in marker["parts"].values() for name, n in part["params"].items()}
    assert counts == PARAMS and marker["source_sha256"] == source_sha256()
    start = time.perf_counter()
    assert build_real_shape_sources(folder.parent) == real_shape_sources
    assert time.perf_counter() - start < 5


def test_stale_and_unfinished_builds_are_removed(tmp_path):
    (tmp_path / "unfinished/sd15").mkdir(parents=True)
    for name, digest in {"old": "0" * 64, "current": source_sha256()}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / MARKER).write_text(json.dumps({"source_sha256": digest}))
    remove_stale_builds(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["current"]


def test_sd15_files_hold_the_exact_parameter_counts(real_shape_sources):
    sd = real_shape_sources["stable_diffusion"]
    assert safetensors_numel(sd / "unet/diffusion_pytorch_model.safetensors") == PARAMS["unet"]
    assert safetensors_numel(sd / "vae/diffusion_pytorch_model.safetensors") == PARAMS["vae"]
    assert safetensors_numel(sd / "text_encoder/model.safetensors") == PARAMS["text_encoder"]
    assert json.loads((sd / "unet/config.json").read_text())["sample_size"] == 8  # 64 px / 8
    assert json.loads((sd / "vae/config.json").read_text())["sample_size"] == 64
    assert sorted(p.name for p in (sd / "tokenizer").iterdir()) == [
        "merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]


def test_tokenizer_is_clips_and_agrees_with_open_clip(real_shape_sources):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(real_shape_sources["stable_diffusion"] / "tokenizer")
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    ids = tokenizer(CAPTIONS, padding="max_length", max_length=77, truncation=True).input_ids
    reference = open_clip.get_tokenizer("ViT-L-14")(CAPTIONS).tolist()  # zero-padded after <|endoftext|>
    for ours, theirs in zip(ids, reference):
        length = theirs.index(49407) + 1
        assert ours[:length] == theirs[:length] and set(ours[length:]) <= {49407}
    assert ids[0][:7] == [49406, 320, 1125, 539, 320, 1929, 49407]  # "a photo of a dog"


def test_weight_files_load_without_pickled_code(real_shape_sources):
    judge = torch.load(real_shape_sources["judge"], weights_only=True, mmap=True)
    assert judge["encoder.pos_embedding"].shape == (1, 16 * 16 + 1, 1280) and judge["heads.head.bias"].shape == (1000,)
    assert sum(v.numel() for v in judge.values()) == PARAMS["judge"]
    inception = torch.load(real_shape_sources["inception"], weights_only=True, mmap=True)
    assert inception["fc.weight"].shape == (1008, 2048)
    assert safetensors_numel(real_shape_sources["clip"]) == PARAMS["clip"]
    del judge, inception


def test_snapshot_stable_diffusion_accepts_the_folder(real_shape_sources, scratch):
    folder, provenance = resolve_stable_diffusion(pretrained_config(real_shape_sources))
    assert folder == real_shape_sources["stable_diffusion"] and provenance["revision"] == "local"
    caption_embeds, null_embeds = snapshot_stable_diffusion(folder, scratch / "sd", CAPTIONS)
    assert caption_embeds.shape == (len(CAPTIONS), 77, 768) and null_embeds.shape == (1, 77, 768)
    assert torch.isfinite(caption_embeds).all()
    assert (scratch / "sd/unet/diffusion_pytorch_model.safetensors").stat().st_size > 3e9


def test_snapshot_clip_accepts_the_file(real_shape_sources, scratch):
    from open_clip.transformer import QuickGELU

    from dreamdiffusion.foundation.clip_mini import load_clip

    assert snapshot_clip(pretrained_config(real_shape_sources), scratch / "clip")["source"] == "open_clip:ViT-L-14"
    model = load_clip(scratch / "clip")[0]
    assert sum(p.numel() for p in model.parameters()) == PARAMS["clip"]
    assert any(isinstance(module, QuickGELU) for module in model.modules())


def test_snapshot_judge_accepts_the_file(real_shape_sources, scratch):
    from dreamdiffusion.foundation.judge import load_judge

    snapshot_judge(pretrained_config(real_shape_sources), scratch / "judge")
    model, config = load_judge(scratch / "judge")
    assert (config["arch"], config["num_classes"], config["image_size"]) == ("vit_h_14", 1000, 224)
    assert sum(p.numel() for p in model.parameters()) == PARAMS["judge"]


def write_pngs(folder: Path, count: int, seed: int) -> Path:
    """`count` random 32x32 RGB PNGs."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_snapshot_inception_feeds_torch_fidelity_offline(real_shape_sources, scratch):
    from dreamdiffusion.foundation.pretrained import INCEPTION_FILE

    snapshot_inception(pretrained_config(real_shape_sources), scratch / "inception")
    metrics = torch_fidelity.calculate_metrics(
        input1=str(write_pngs(scratch / "a", 6, 0)), input2=str(write_pngs(scratch / "b", 6, 1)), isc=True, fid=True,
        isc_splits=2, feature_extractor="inception-v3-compat", cuda=False, save_cpu_ram=True, verbose=False,
        feature_extractor_weights_path=str(scratch / "inception" / INCEPTION_FILE))
    assert np.isfinite(metrics["inception_score_mean"]) and metrics["frechet_inception_distance"] > 0
