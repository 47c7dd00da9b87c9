"""Zero-shot retrieval in another CLIP's space (evaluate.retrieval_clip): the ridge read-out (evaluate/readout.py)
recovers a linear map, chooses alpha on val alone; the open_clip weights are checked before they are read
(evaluate/retrieval_clip.py), and a miniature open_clip CLIP saved to files runs the evaluation's path."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from test_evaluate_metrics import _Stub

from dreamdiffusion.core.config import ConfigError, parse_config
from dreamdiffusion.core.fileio import DataError, cpu_state_dict, finite_metrics, sha256_file
from dreamdiffusion.evaluate import readout, retrieval_clip
from dreamdiffusion.evaluate.config import EvaluateConfig, RetrievalCLIP
from dreamdiffusion.evaluate.metrics import clip_retrieval, evaluate_generated, gallery_embeds
from dreamdiffusion.evaluate.readout import ReadoutSplit, choose_alpha, fit_ridge, readout_retrieval, ridge_stats
from dreamdiffusion.evaluate.retrieval_clip import load_retrieval_clip, retrieval_clip_setup
from dreamdiffusion.foundation.clip_mini import DEMO_MODEL_NAME, create_demo_clip, preprocess_cfg, save_clip
from dreamdiffusion.foundation.config import CLIPConfig
from dreamdiffusion.preprocess.processed import ImageSet, PairedEEG

pytestmark = pytest.mark.usefixtures("one_thread")
CLIP_DIM, EEG_DIM = 16, 24  # target CLIP embedding, EEG feature widths of the synthetic read-out
SIZE = 16  # the miniature CLIP's image size (the stored images are 24 px: resized on the way in)


def unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    """Random unit-norm embeddings (rows, dim), float64."""
    draw = torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return F.normalize(draw, dim=-1)


def synthetic_split(images: int, per_image: int, mapping: torch.Tensor, seed: int, noise: float = 0.01) -> ReadoutSplit:
    """A split whose EEG features are a linear map (CLIP_DIM, EEG_DIM) of its images' embeddings plus noise."""
    gallery = unit(images, CLIP_DIM, seed)
    own = np.repeat(np.arange(images), per_image)
    noise_draw = torch.randn(len(own), EEG_DIM, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return ReadoutSplit(gallery[own] @ mapping + noise * noise_draw, own, gallery, own % 2)


def stats_of(train: ReadoutSplit) -> readout.RidgeStats:
    """Ridge sums of a split's trials (their own image's embedding as target), in batches of 7."""
    targets = train.clip_image_embeds[train.own]
    return ridge_stats((train.eeg_features[i:i + 7], targets[i:i + 7]) for i in range(0, len(train.own), 7))


MAPPING = torch.randn(CLIP_DIM, EEG_DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
ALPHAS = [1e-3, 1.0, 1e9]
SCORING = {"ways": [2, 10], "draws": 5, "shuffles": 20, "seed": 0}


def test_the_ridge_readout_recovers_an_exact_linear_map_and_the_shuffled_control_sits_at_chance():
    train, val, test = (synthetic_split(n, 3, MAPPING, seed) for n, seed in ((120, 1), (40, 3), (50, 5)))
    found = readout_retrieval(stats_of(train), val, lambda: test, ALPHAS, **SCORING)
    assert found["top1"] >= 0.98 and found["top5"] == 1.0 and found["10way_top1"] >= 0.98
    assert found["gallery"] == 50 and found["queries"] == 150 and found["chance_top1"] == 1 / 50
    assert found["shuffled"]["top1"] < 0.08  # chance 0.02
    assert found["readout"]["alpha"] in (1e-3, 1.0) and found["readout"]["train_trials"] == 360
    assert [entry["alpha"] for entry in found["readout"]["val_top1"]] == ALPHAS
    assert set(found["per_subject"]["groups"]) == {"0", "1"} and found["per_subject"]["top1_mean"] >= 0.98
    # the closed form with batched sums is the textbook solve on standardised features
    x = train.eeg_features
    standardised = (x - x.mean(0)) / x.std(0, unbiased=False)
    y = train.clip_image_embeds[train.own]
    direct = torch.linalg.solve(standardised.T @ standardised + torch.eye(EEG_DIM, dtype=torch.float64),
                                standardised.T @ (y - y.mean(0)))
    assert torch.allclose(fit_ridge(stats_of(train), [1.0]).weights[1.0], direct, atol=1e-9)


def test_alpha_is_chosen_on_val_and_the_test_split_is_read_only_after(monkeypatch):
    train, val = synthetic_split(120, 3, MAPPING, 1), synthetic_split(40, 3, -MAPPING, 3)  # val: the map negated
    test = synthetic_split(50, 3, MAPPING, 5)
    stats = stats_of(train)
    # on val the fitted map ranks the own image last: only the near-constant prediction of alpha 1e9 beats 0;
    # on test the small alphas retrieve almost every image: a choice that read test would pick them
    assert choose_alpha(fit_ridge(stats, ALPHAS), val)[0] == 1e9
    assert choose_alpha(fit_ridge(stats, ALPHAS), test)[0] in (1e-3, 1.0)
    events = []
    chooser = readout.choose_alpha
    monkeypatch.setattr(readout, "choose_alpha", lambda *args: events.append("alpha chosen") or chooser(*args))

    def load_test(split: ReadoutSplit):
        events.append("test read")
        return split

    found = readout_retrieval(stats, val, lambda: load_test(test), ALPHAS, **SCORING)
    assert events == ["alpha chosen", "test read"]
    assert found["readout"]["alpha"] == 1e9 and found["top1"] < 0.5  # the val winner, poor on test
    other_test = synthetic_split(30, 2, torch.randn_like(MAPPING), 9)  # other test images and features
    again = readout_retrieval(stats, val, lambda: other_test, ALPHAS, **SCORING)
    assert again["readout"] == found["readout"] and again["gallery"] == 30


def test_ties_on_val_keep_the_larger_alpha():
    train, val = synthetic_split(60, 2, MAPPING, 1), synthetic_split(20, 2, MAPPING, 3, noise=0.0)
    alpha, scores = choose_alpha(fit_ridge(stats_of(train), [1e-3, 1e-2]), val)
    assert [entry["top1"] for entry in scores] == [1.0, 1.0] and alpha == 1e-2


# ---- the params -----------------------------------------------------------------------------------------------

def parsed(**retrieval_clip) -> EvaluateConfig:
    return parse_config(EvaluateConfig, {"retrieval_clip": retrieval_clip}, "evaluate")


def test_the_default_is_the_foundation_clip_alone():
    assert parsed().retrieval_clip == RetrievalCLIP() and RetrievalCLIP().source == "foundation"
    assert retrieval_clip_setup(EvaluateConfig(), "cpu") is None
    open_clip_off = EvaluateConfig(retrieval=False, retrieval_clip=RetrievalCLIP("open_clip", "RN50", "w", "0" * 64))
    assert retrieval_clip_setup(open_clip_off, "cpu") is None  # retrieval off: no CLIP loaded


@pytest.mark.parametrize("values,message", [
    ({"source": "open_clip", "model": "RN50", "sha256": "0" * 64}, "weights: required with source open_clip"),
    ({"source": "open_clip", "weights": "w.safetensors", "sha256": "0" * 64}, "model: required with source"),
    ({"source": "open_clip", "model": "RN50", "weights": "w.pt"}, "sha256: required with source open_clip"),
    ({"source": "clip"}, r"source: value 'clip' is not one of \['foundation', 'open_clip'\]"),
    ({"model": "/etc/x"}, "model: value '/etc/x' is not allowed"),
    ({"sha256": "ABC"}, "sha256: value 'ABC' is not allowed"),
    ({"ridge_alphas": []}, "ridge_alphas: expected 1 to 64 distinct penalties"),
    ({"ridge_alphas": [1, 1]}, "ridge_alphas: expected 1 to 64 distinct penalties"),
    ({"ridge_alphas": [-1]}, r"ridge_alphas: value -1.0 is below the minimum"),
    ({"ridge_alphas": list(range(1, 100))}, "ridge_alphas: 99 items, above the maximum 64"),
])
def test_the_params_refuse_what_they_cannot_use_naming_the_key(values, message):
    with pytest.raises(ConfigError, match=rf"evaluate.retrieval_clip.{message}"):
        parsed(**values)


# ---- the miniature open_clip CLIP ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A repository with two miniature CLIPs of one architecture (different random weights) in open_clip's
    folder layout, and the first's weights also as a lone safetensors file of the registered architecture."""
    root = tmp_path_factory.mktemp("repo")
    cfg = CLIPConfig(embed_dim=CLIP_DIM, vision="vit", vision_width=64, vision_layers=1, patch_size=4,
                     text_width=64, text_heads=2, text_layers=1)
    for seed, name in ((0, "clip_a"), (1, "clip_b")):
        torch.manual_seed(seed)
        model, model_cfg = create_demo_clip(cfg, SIZE)
        save_clip(model.eval(), model_cfg, preprocess_cfg(SIZE), root / name)
    (root / "weights").mkdir()
    save_file(cpu_state_dict(create_demo_clip(cfg, SIZE)[0]), str(root / "weights/other.safetensors"))
    return root


def clip_params(root: Path, model: str, weights: str, **changes) -> RetrievalCLIP:
    return RetrievalCLIP("open_clip", model, weights, sha256_file(root / weights), **changes)


def folder_clip(root: Path, name: str) -> RetrievalCLIP:
    return clip_params(root, name, f"{name}/open_clip_model.safetensors")


def test_a_wrong_sha256_is_refused_before_the_file_is_read_or_a_tower_built(repo, monkeypatch):
    def never(*args):
        raise AssertionError("read or built before the sha256 was checked")

    monkeypatch.setattr(retrieval_clip, "read_state", never)
    monkeypatch.setattr(retrieval_clip, "image_tower", never)
    wrong = dataclasses.replace(folder_clip(repo, "clip_a"), sha256="0" * 64)
    with pytest.raises(DataError, match=r"open_clip_model.safetensors: sha256 [0-9a-f]{64} differs from "
                                        r"evaluate.retrieval_clip.sha256 0{64}"):
        load_retrieval_clip(wrong, "cpu", root=repo)


def test_a_weights_path_outside_the_repository_is_refused(repo, tmp_path):
    outside = tmp_path / "clip.safetensors"
    outside.write_bytes((repo / "clip_a/open_clip_model.safetensors").read_bytes())
    os.symlink(outside, repo / "weights/link.safetensors")
    for path in ("../" * 8 + str(outside).lstrip("/"), str(outside), "weights/link.safetensors"):
        escaping = RetrievalCLIP("open_clip", "clip_a", path, sha256_file(outside))
        with pytest.raises(DataError, match="evaluate.retrieval_clip.weights: .* leads outside the repository"):
            load_retrieval_clip(escaping, "cpu", root=repo)
    os.symlink(repo / "clip_a", repo / "weights/linked_clip")  # a folder link out of the repository `weights`
    linked = dataclasses.replace(folder_clip(repo, "clip_a"), model="linked_clip", weights="other.safetensors",
                                 sha256=sha256_file(repo / "weights/other.safetensors"))
    with pytest.raises(DataError, match="evaluate.retrieval_clip.model: .* leads outside the repository"):
        load_retrieval_clip(linked, "cpu", root=repo / "weights")


def test_an_unknown_model_and_weights_of_another_architecture_are_refused(repo):
    unknown = dataclasses.replace(folder_clip(repo, "clip_a"), model="ViT-Q-99")
    with pytest.raises(ConfigError, match=r"evaluate.retrieval_clip.model: 'ViT-Q-99' is neither an open_clip "
                                          r"architecture \(open_clip.list_models\(\)"):
        load_retrieval_clip(unknown, "cpu", root=repo)
    other = dataclasses.replace(folder_clip(repo, "clip_a"), model="RN50")  # shapes checked on the meta device
    with pytest.raises(DataError, match=r"open_clip_model.safetensors: not the image tower of open_clip RN50 .*"
                                        r"missing: .*wrong shape: conv1.weight"):
        load_retrieval_clip(other, "cpu", root=repo)


def tiny_world() -> tuple[ImageSet, PairedEEG]:
    """24 px images (train 12, val 6, test 6) and 2 subjects x 2 trials of each, whose EEG is its image's pixels
    plus noise."""
    rng = np.random.default_rng(0)
    split = np.repeat(np.array([0, 1, 2], np.int8), [12, 6, 6])
    images = rng.integers(0, 256, (24, 24, 24, 3), dtype=np.uint8)
    image_set = ImageSet(images, [f"i{i}" for i in range(24)], np.arange(24) % 3, split, ["a", "b", "c"], ["", "", ""])
    image_index = np.repeat(np.arange(24), 4)
    eeg = images[image_index, :8, :8, 0].reshape(-1, 4, 16) / 255.0 + 0.05 * rng.normal(size=(96, 4, 16))
    paired = PairedEEG(eeg.astype(np.float32), image_index % 3, image_index, np.tile([0, 0, 1, 1], 24),
                       np.arange(96), split[image_index], ["a", "b", "c"])
    return image_set, paired


class PixelConditioner:
    """Stands in for the fine-tuned generator: a fixed projection of the EEG (N, 4, 16) as its CLIP-head output."""

    def __init__(self, width: int = 32):
        self.projection = torch.randn(64, width, generator=torch.Generator().manual_seed(7))

    def clip_embeds(self, eeg: torch.Tensor) -> torch.Tensor:
        return F.normalize(eeg.flatten(1) @ self.projection, dim=-1)


def splits_of(paired: PairedEEG, *codes: int) -> PairedEEG:
    """The trials of some splits, as load_paired_eeg(splits=...) reads them."""
    rows = np.flatnonzero(np.isin(paired.split, codes))
    return PairedEEG(*(getattr(paired, f.name)[rows] for f in dataclasses.fields(PairedEEG)[:-1]), paired.class_names)


def test_the_evaluation_path_loads_the_configured_weights_and_reports_the_readout(repo):
    image_set, paired = tiny_world()
    fit_eeg, test = splits_of(paired, 0, 1), splits_of(paired, 2)
    cfg = EvaluateConfig(batch_size=5, retrieval_draws=3, retrieval_shuffles=3,
                         retrieval_clip=dataclasses.replace(folder_clip(repo, "clip_a"), ridge_alphas=[0.1, 10.0]))
    clip_a = retrieval_clip_setup(cfg, "cpu", root=repo)
    state = cpu_state_dict(clip_a.clip.visual)
    saved = load_file(repo / "clip_a/open_clip_model.safetensors")
    assert all(torch.equal(value, saved[f"visual.{key}"]) for key, value in state.items())
    found = clip_retrieval(PixelConditioner(), clip_a, image_set, fit_eeg, test, cfg, seed=0)
    assert found["clip"] == {"source": "open_clip", "model": "clip_a", "weights": {
        "file": "clip_a/open_clip_model.safetensors", "sha256": cfg.retrieval_clip.sha256}, "image_size": SIZE,
        "mean": pytest.approx(preprocess_cfg(SIZE)["mean"]), "std": pytest.approx(preprocess_cfg(SIZE)["std"]),
        "resize": found["clip"]["resize"], "embed_dim": CLIP_DIM}
    fit = found["readout"]
    assert fit["train_trials"] == 48 and fit["val_trials"] == 24 and fit["val_gallery"] == 6
    assert fit["alphas"] == [0.1, 10.0] and fit["alpha"] in (0.1, 10.0) and len(fit["val_top1"]) == 2
    assert found["gallery"] == 6 and found["queries"] == 24 and found["chance_top1"] == 1 / 6
    assert {"top1", "top5", "2way_top1", "4way_top1", "shuffled", "per_subject"} <= set(found)
    # two weight files of one architecture: two galleries (the weights are read, not a fresh initialisation)
    clip_b = load_retrieval_clip(folder_clip(repo, "clip_b"), "cpu", root=repo)
    rows = image_set.subset("test")
    gallery_a, gallery_b = (gallery_embeds(clip, image_set, rows, 4) for clip in (clip_a, clip_b))
    assert gallery_a.shape == (6, CLIP_DIM) and not torch.allclose(gallery_a, gallery_b, atol=1e-3)
    assert torch.allclose(gallery_a, gallery_embeds(clip_a, image_set, rows, 6))  # deterministic, batch-free
    # a registered architecture by name, its weights as a lone file
    named = load_retrieval_clip(clip_params(repo, DEMO_MODEL_NAME, "weights/other.safetensors"), "cpu", root=repo)
    assert named.report["model"] == DEMO_MODEL_NAME and named.image_size == SIZE
    assert not torch.allclose(gallery_embeds(named, image_set, rows, 6), gallery_a, atol=1e-3)


class MeanColourFoundation(_Stub):
    """The foundation as evaluate_generated reads it: judge and CLIP of the images' mean colour (3-wide)."""

    image_size = 24
    judge_config = {"arch": "mean colour"}

    def __init__(self):
        super().__init__()
        self.clip.visual = SimpleNamespace(image_size=24)


def test_evaluate_generated_adds_retrieval_clip_beside_an_unchanged_retrieval(repo, tmp_path, monkeypatch):
    image_set, paired = tiny_world()
    fit_eeg, test = splits_of(paired, 0, 1), splits_of(paired, 2)
    rows = []
    for trial, image in enumerate(test.image_index):  # generated images: the ground truths themselves
        Image.fromarray(image_set.images[image]).save(tmp_path / f"{trial}.png")
        rows.append({"kind": "eeg", "trial": trial, "sample": 0, "image": int(image), "label": int(test.label[trial]),
                     "file": f"{trial}.png"})
    monkeypatch.setattr(retrieval_clip, "REPO_ROOT", repo)
    base = EvaluateConfig(fidelity=False, nway_draws=3, retrieval_draws=3, retrieval_shuffles=3)
    runs = {source: evaluate_generated(rows, tmp_path, image_set, test, PixelConditioner(3), MeanColourFoundation(),
                                       dataclasses.replace(base, retrieval_clip=clip), 0, fit_eeg=fit_eeg)[0]
            for source, clip in (("foundation", RetrievalCLIP()), ("open_clip", folder_clip(repo, "clip_a")))}
    assert "retrieval_clip" not in runs["foundation"] and runs["foundation"]["retrieval"]["gallery"] == 6
    assert {k: v for k, v in runs["open_clip"].items() if k != "retrieval_clip"} == runs["foundation"]
    found = finite_metrics(json.loads(json.dumps(runs["open_clip"])))["retrieval_clip"]  # JSON as written
    assert found["clip"]["weights"]["file"] == "clip_a/open_clip_model.safetensors" and found["gallery"] == 6
    assert found["readout"]["train_trials"] == 48 and len(found["readout"]["val_top1"]) == 5
    with pytest.raises(ValueError, match="the train and val trials"):
        evaluate_generated(rows, tmp_path, image_set, test, PixelConditioner(3), MeanColourFoundation(),
                           dataclasses.replace(base, retrieval_clip=folder_clip(repo, "clip_a")), 0)
