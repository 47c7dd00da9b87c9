"""The MindEye reconstruction suite (evaluate/reconstruction.py, evaluate/extractors.py) with random-init
torchvision networks of the real architectures saved in the released layouts: identical sets score 2-way 1.0 and
distance 0, a shuffled pairing does not; weight files are checked (place, sha256, architecture) before use."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

from dreamdiffusion.core.config import ConfigError, parse_config
from dreamdiffusion.core.fileio import DataError, cpu_state_dict, sha256_file
from dreamdiffusion.evaluate import extractors
from dreamdiffusion.evaluate.config import EvaluateConfig, SuiteWeights, WeightFile
from dreamdiffusion.evaluate.reconstruction import (extractor_entries, generated_pass, pair_scores, pixel_entries,
                                                    reconstruction_suite, suite_setup, truth_pass)

IMAGES = 3  # unique ground truths (Inception runs at 342 px: a handful keeps the file fast)
EXTRACTOR_ENTRIES = ("alexnet2_2way", "alexnet5_2way", "inception_2way", "effnet_b_distance", "swav_distance")


def swav_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A resnet50 state dict as facebookresearch/swav releases it: 'module.' prefixes, no fc, its heads added."""
    state = {f"module.{k}": v for k, v in cpu_state_dict(model).items() if not k.startswith("fc.")}
    heads = {"projection_head.0.weight": (2048, 2048), "projection_head.0.bias": (2048,),
             "projection_head.1.weight": (2048,), "projection_head.1.bias": (2048,),
             "projection_head.3.weight": (128, 2048), "projection_head.3.bias": (128,),
             "prototypes.weight": (3000, 128)}
    return {**state, **{f"module.{k}": torch.randn(shape) for k, shape in heads.items()}}


@pytest.fixture(scope="module", autouse=True)
def one_thread_here():
    """One intra-op thread: on a shared 2-core machine two threads mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A repository folder holding random-init weights of the four networks (real shapes, released layouts)."""
    root = tmp_path_factory.mktemp("repo")
    (root / "weights").mkdir()
    torch.manual_seed(0)
    tv = torchvision.models
    torch.save(cpu_state_dict(tv.alexnet()), root / "weights/alexnet.pth")
    torch.save(cpu_state_dict(tv.inception_v3(aux_logits=True, init_weights=False)), root / "weights/inception.pth")
    save_file(cpu_state_dict(tv.efficientnet_b1()), str(root / "weights/effnet.safetensors"))
    torch.save(swav_layout(tv.resnet50()), root / "weights/swav_800ep_pretrain.pth.tar")
    return root


def weight(root: Path, name: str) -> WeightFile:
    """A WeightFile entry for repository file `weights/<name>`, with its true sha256."""
    return WeightFile(path=f"weights/{name}", sha256=sha256_file(root / "weights" / name))


def configured(root: Path, **changes) -> EvaluateConfig:
    """The evaluate config with every suite weight file of `repo` set (and `changes` to EvaluateConfig)."""
    weights = SuiteWeights(alexnet=weight(root, "alexnet.pth"), inception_v3=weight(root, "inception.pth"),
                           efficientnet_b1=weight(root, "effnet.safetensors"),
                           swav_resnet50=weight(root, "swav_800ep_pretrain.pth.tar"))
    return EvaluateConfig(suite_weights=weights, suite_batch_size=4, suite_mindeye_pixels=True, **changes)


@pytest.fixture(scope="module")
def setup(repo):
    return suite_setup(configured(repo), "cpu", root=repo)


class FeatureJudge(torch.nn.Module):
    """A judge whose penultimate features are the image's first 64 pixel values."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)[:, :64] * self.scale


FOUNDATION = SimpleNamespace(judge=FeatureJudge(), judge_transform=lambda x: x,
                             judge_config={"arch": "pixels", "image_size": 32},
                             clip=SimpleNamespace(visual=SimpleNamespace(image_size=(224, 224))))


def truths(count: int = IMAGES, size: int = 32) -> torch.Tensor:
    """Distinct ground truths (count, 3, size, size), exactly k / 255 as the evaluation reads them."""
    return torch.randint(0, 256, (count, 3, size, size), generator=torch.Generator().manual_seed(1)) / 255.0


def batches(images: torch.Tensor, size: int = 3):
    return (images[i:i + size] for i in range(0, len(images), size))


@pytest.fixture(scope="module")
def truth(setup):
    """The suite's view of the ground truths (every extractor run once on them)."""
    return truth_pass(FOUNDATION, setup, batches(truths()))


def test_identical_images_score_2way_one_and_distance_zero_each_number_described(setup, truth):
    scores, _ = generated_pass(FOUNDATION, setup, truth, np.arange(IMAGES), batches(truths()))  # exact copies
    for entry in ("alexnet2_2way", "alexnet5_2way", "inception_2way"):
        assert scores[entry].tolist() == [1.0] * IMAGES, entry
    for entry in ("effnet_b_distance", "swav_distance"):
        assert scores[entry] == pytest.approx([0.0] * IMAGES, abs=1e-9), entry
    ones = pytest.approx([1.0] * IMAGES)
    assert scores["pixcorr_425"] == ones and scores["ssim_425"] == ones
    report = {**extractor_entries(setup, scores), **pixel_entries(setup, scores)}
    layers = {"alexnet2_2way": ("features.4", 256), "alexnet5_2way": ("features.11", 256),
              "inception_2way": ("avgpool", 342), "effnet_b_distance": ("avgpool", 255),
              "swav_distance": ("avgpool", 224)}
    for entry, (layer, size) in layers.items():
        assert report[entry]["layer"] == layer and report[entry]["distance"] == "correlation", entry
        assert report[entry]["resize"].startswith(f"256x256 then {size}x{size}, bilinear"), entry
        assert report[entry]["weights"]["file"].startswith("weights/") and len(report[entry]["weights"]["sha256"]) == 64
    assert "torchvision alexnet" in report["alexnet2_2way"]["extractor"]
    assert "SwAV" in report["swav_distance"]["extractor"]
    assert "2-way" in report["inception_2way"]["score"] and "distance" in report["effnet_b_distance"]["score"]
    assert report["ssim_425"]["resize"].startswith("256x256 then 425x425") and report["ssim_425"]["value"] == 1.0


def test_a_shuffled_pairing_loses_to_the_image_it_shows_and_scores_a_distance(setup, truth):
    images = truths()
    shown = np.roll(np.arange(IMAGES), 1)  # generated i shows ground truth i - 1, but is scored as i's
    scores, _ = generated_pass(FOUNDATION, setup, truth, np.arange(IMAGES), batches(images[shown]))
    for entry in ("alexnet2_2way", "alexnet5_2way", "inception_2way"):
        # the image it shows is a distractor at distance 0: at most the other distractor is further than its own
        assert scores[entry].max() <= (IMAGES - 2) / (IMAGES - 1), entry
    for entry in ("effnet_b_distance", "swav_distance"):
        assert scores[entry].min() > 1e-5, entry  # identical images: below 1e-9
    gen, gt = (F.interpolate(F.interpolate(x, size=256, mode="bilinear", antialias=True), size=425,
                             mode="bilinear", antialias=True) for x in (images[shown], images))
    expected = [np.corrcoef(g.flatten().numpy(), t.flatten().numpy())[0, 1] for g, t in zip(gen, gt)]
    assert scores["pixcorr_425"] == pytest.approx(expected, abs=1e-5)
    assert scores["ssim_425"].max() < 0.9


def test_the_whole_suite_reports_every_number_with_its_description(setup):
    alexnet = dataclasses.replace(setup, extractors=[e for e in setup.extractors if e.name == "alexnet"],
                                  not_computed={"swav_distance": "no file"})  # AlexNet alone: a fast run
    images, own = truths(), np.array([2, 0, 1, 1])
    metrics = {"pixcorr": 0.1, "ssim": 0.2, "clip_2way": 0.6}
    suite = reconstruction_suite(metrics, 32, FOUNDATION, own, batches(images[own]), batches(images), alexnet)
    assert suite["alexnet2_2way"]["value"] == suite["alexnet5_2way"]["value"] == suite["judge_2way"]["value"] == 1.0
    assert suite["pixcorr_425"]["value"] == pytest.approx(1.0) and suite["pixcorr"] == {
        "value": 0.1, "extractor": "pixels (RGB)", "resize": 32}
    assert suite["clip_2way"]["resize"] == [224, 224] and suite["judge_2way"]["layer"] == "penultimate"
    assert suite["not_computed"] == {"swav_distance": "no file"} and "inception_2way" not in suite


def test_two_way_on_unrelated_features_sits_near_chance_and_distance_is_scipys():
    rng = np.random.default_rng(0)
    gen, truth = torch.from_numpy(rng.normal(size=(400, 30))), torch.from_numpy(rng.normal(size=(400, 30)))
    assert pair_scores("2way", gen, truth, np.arange(400)).mean() == pytest.approx(0.5, abs=0.03)
    assert pair_scores("2way", truth, truth, np.arange(400)).mean() == 1.0
    own = rng.integers(0, 400, 50)
    distance = pair_scores("distance", gen[:50], truth, own)
    for i in range(50):  # scipy.spatial.distance.correlation, as MindEye calls it
        a, b = gen[i].numpy() - gen[i].numpy().mean(), truth[own[i]].numpy() - truth[own[i]].numpy().mean()
        assert distance[i] == pytest.approx(1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_without_weight_files_the_extractors_are_listed_as_not_computed():
    setup = suite_setup(EvaluateConfig(), "cpu")
    assert setup.extractors == [] and set(setup.not_computed) == {*EXTRACTOR_ENTRIES, "pixcorr_425", "ssim_425"}
    assert "evaluate.suite_weights.alexnet.path is null" in setup.not_computed["alexnet2_2way"]
    assert "suite_mindeye_pixels is false" in setup.not_computed["ssim_425"]
    truth = truths(3)
    suite = reconstruction_suite({"pixcorr": 0.5, "ssim": 0.5, "clip_2way": 0.5}, 32, FOUNDATION, np.arange(3),
                                 batches(truth), batches(truth), setup)
    assert not set(EXTRACTOR_ENTRIES) & set(suite) and "pixcorr_425" not in suite
    assert set(suite["not_computed"]) == set(setup.not_computed) and suite["judge_2way"]["value"] == 1.0


@pytest.mark.parametrize("antialias", [True, False])
def test_mindeye_pixels_resize_to_256_then_425_with_the_configured_antialiasing(antialias):
    setup = suite_setup(EvaluateConfig(suite_antialias=antialias, suite_mindeye_pixels=True), "cpu")
    images = truths(3, size=300)  # larger than 256: the first resize downsamples, where antialiasing matters
    shown = np.array([1, 2, 0])
    suite = reconstruction_suite({"pixcorr": 0.0, "ssim": 0.0, "clip_2way": 0.5}, 300, FOUNDATION, np.arange(3),
                                 batches(images[shown]), batches(images), setup)
    gen, gt = (F.interpolate(F.interpolate(x, size=256, mode="bilinear", antialias=antialias), size=425,
                             mode="bilinear", antialias=antialias) for x in (images[shown], images))
    expected = np.mean([np.corrcoef(g.flatten().numpy(), t.flatten().numpy())[0, 1] for g, t in zip(gen, gt)])
    assert suite["pixcorr_425"]["value"] == pytest.approx(expected, abs=1e-6)
    assert suite["ssim_425"]["resize"] == (f"256x256 then 425x425, bilinear ({'' if antialias else 'not '}"
                                           "antialiased, torchvision Resize)")


def test_a_wrong_sha256_is_refused_before_the_file_is_read(repo, monkeypatch):
    def never(*args):
        raise AssertionError("the file was read before its sha256 was checked")

    monkeypatch.setattr(extractors, "read_state", never)
    config = configured(repo)
    wrong = dataclasses.replace(config.suite_weights, alexnet=WeightFile("weights/alexnet.pth", "0" * 64))
    with pytest.raises(DataError, match=r"alexnet.pth: sha256 [0-9a-f]{64} differs from "
                                        r"evaluate.suite_weights.alexnet.sha256 0{64}"):
        suite_setup(dataclasses.replace(config, suite_weights=wrong), "cpu", root=repo)


def test_weights_of_another_architecture_are_refused_naming_the_file_and_the_expected_one(repo):
    config = configured(repo)
    swapped = dataclasses.replace(config.suite_weights, alexnet=weight(repo, "inception.pth"),
                                  inception_v3=WeightFile(), efficientnet_b1=WeightFile(), swav_resnet50=WeightFile())
    with pytest.raises(DataError, match=r"inception.pth: not the torchvision alexnet \(AlexNet_Weights.IMAGENET1K_V1\) "
                                        r"weights .*missing: features.0.weight"):
        suite_setup(dataclasses.replace(config, suite_weights=swapped), "cpu", root=repo)
    state = torch.load(repo / "weights/alexnet.pth", weights_only=True)
    state["classifier.6.weight"], state["classifier.6.bias"] = torch.zeros(10, 4096), torch.zeros(10)  # 10 classes
    torch.save(state, repo / "weights/alexnet10.pth")
    reshaped = dataclasses.replace(swapped, alexnet=weight(repo, "alexnet10.pth"))
    with pytest.raises(DataError, match=r"alexnet10.pth: not the torchvision alexnet .*wrong shape: "
                                        r"classifier.6.weight \(10, 4096\) \(expected \(1000, 4096\)\)"):
        suite_setup(dataclasses.replace(config, suite_weights=reshaped), "cpu", root=repo)


def test_a_path_outside_the_repository_is_refused(repo, tmp_path):
    outside = tmp_path / "alexnet.pth"
    outside.write_bytes((repo / "weights/alexnet.pth").read_bytes()[:1000])
    os.symlink(outside, repo / "weights/link.pth")
    for path in ("../" * 8 + str(outside).lstrip("/"), str(outside), "weights/link.pth"):
        escaping = SuiteWeights(alexnet=WeightFile(path, sha256_file(outside)))
        with pytest.raises(DataError, match="evaluate.suite_weights.alexnet.path: .* leads outside the repository"):
            suite_setup(EvaluateConfig(suite_weights=escaping), "cpu", root=repo)


def test_the_params_refuse_a_path_without_its_sha256_and_a_malformed_sha256():
    with pytest.raises(ConfigError, match="evaluate.suite_weights.swav_resnet50.sha256: required with a path"):
        parse_config(EvaluateConfig, {"suite_weights": {"swav_resnet50": {"path": "w.pth"}}}, "evaluate")
    with pytest.raises(ConfigError, match="evaluate.suite_weights.alexnet.sha256: value 'ABC' is not allowed"):
        parse_config(EvaluateConfig, {"suite_weights": {"alexnet": {"path": "w.pth", "sha256": "ABC"}}}, "evaluate")
