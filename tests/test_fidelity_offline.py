"""torch-fidelity FID/IS/KID offline, on PNG folders written here, with a tiny registered extractor."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_fidelity
from PIL import Image
from dreamdiffusion.foundation.judge_extractor import FeaturesAndLogits
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from dreamdiffusion.evaluate.fidelity import fidelity_metrics
from dreamdiffusion.core.fileio import DataError

TINY = "dreamdiffusion-test-tiny"


class TinyExtractor(FeaturesAndLogits):
    """uint8 (B, 3, H, W) -> 'features' (B, 18): channel means, stds, 2x2 pooled means;
    'logits' (B, 4): which quadrant is brightest (a 4-class "classifier" for IS)."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)

    def forward(self, x):
        x = x.float() / 255.0  # (B, 3, H, W)
        quadrants = F.adaptive_avg_pool2d(x, 2)  # (B, 3, 2, 2)
        feats = torch.cat([x.mean((2, 3)), x.std((2, 3)), quadrants.flatten(1)], 1)  # (B, 18)
        luma = quadrants.mean(1).flatten(1)  # (B, 4)
        out = {"features": feats, "logits": 100 * (luma - luma.mean(1, keepdim=True))}
        return tuple(out[name] for name in self.features_list)

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 4, 4, dtype=torch.uint8)


@pytest.fixture(scope="module", autouse=True)
def tiny_extractor():
    if TINY not in FEATURE_EXTRACTORS_REGISTRY:  # registering twice in one process raises
        torch_fidelity.register_feature_extractor(TINY, TinyExtractor)


def write_pngs(folder, n, seed, bright=0.5, size=16):
    """n random RGB PNGs (size x size): smooth blobs around brightness `bright`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        coarse = rng.normal(bright, 0.15, size=(4, 4, 3))
        img = np.kron(coarse, np.ones((size // 4, size // 4, 1))) + rng.normal(0, 0.03, (size, size, 3))
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / f"{i:04d}.png")
    return folder


def test_fid_is_zero_against_itself_and_large_against_another_distribution(tmp_path):
    a = write_pngs(tmp_path / "a", 40, seed=0)
    a2 = write_pngs(tmp_path / "a2", 40, seed=1)
    b = write_pngs(tmp_path / "b", 40, seed=2, bright=0.8)
    same = fidelity_metrics(a, a, feature_extractor=TINY)
    sibling = fidelity_metrics(a, a2, feature_extractor=TINY)
    other = fidelity_metrics(a, b, feature_extractor=TINY, kid_subset_size=1000)
    expected_keys = {"fid", "is_mean", "is_std", "kid_mean", "kid_std", "n_generated", "n_reference", "extractor"}
    for result in (same, sibling, other):
        assert expected_keys <= result.keys()
        assert all(math.isfinite(result[k]) for k in ("fid", "is_mean", "is_std", "kid_mean", "kid_std"))
        assert result["extractor"] == TINY and result["n_generated"] == result["n_reference"] == 40
        assert 1.5 < result["is_mean"] <= 4.0  # diverse quadrant "classes"; 4 classes at most
    assert abs(same["fid"]) < 1e-6 and abs(same["kid_mean"]) < 0.01 * other["kid_mean"]
    assert other["fid"] > 0.1 > sibling["fid"] and other["fid"] > 20 * sibling["fid"]
    assert other["kid_mean"] > 10 * abs(sibling["kid_mean"])
    assert other["kid_subset_size"] == 40  # clamped from 1000 to the sample count


def test_regenerated_images_are_not_served_from_a_stale_cache(tmp_path):
    ref = write_pngs(tmp_path / "ref", 12, seed=0)
    gen = write_pngs(tmp_path / "gen", 12, seed=0)
    first = fidelity_metrics(gen, ref, feature_extractor=TINY)
    write_pngs(gen, 12, seed=5, bright=0.9)  # overwrite the same file names
    second = fidelity_metrics(gen, ref, feature_extractor=TINY)
    assert abs(first["fid"]) < 1e-6 and second["fid"] > 0.1


def test_inception_score_is_one_for_identical_images(tmp_path):
    write_pngs(tmp_path / "one", 1, seed=0)
    for i in range(1, 10):
        (tmp_path / "one" / f"{i:04d}.png").write_bytes((tmp_path / "one" / "0000.png").read_bytes())
    ref = write_pngs(tmp_path / "ref", 10, seed=1)
    result = fidelity_metrics(tmp_path / "one", ref, feature_extractor=TINY)
    assert result["is_mean"] == pytest.approx(1.0) and result["fid"] > 0.1


def test_small_sets_and_file_lists_work(tmp_path):
    gen = write_pngs(tmp_path / "gen", 5, seed=0)  # fewer than the 10 IS splits
    ref = write_pngs(tmp_path / "ref", 7, seed=1)
    result = fidelity_metrics(sorted(gen.glob("*.png")), ref, feature_extractor=TINY)
    assert result["n_generated"] == 5 and result["n_reference"] == 7
    assert result["isc_splits"] == 5 and result["kid_subset_size"] == 5
    assert all(math.isfinite(result[k]) for k in ("fid", "is_mean", "is_std", "kid_mean", "kid_std"))


def test_offline_guards_and_bad_input(tmp_path):
    a = write_pngs(tmp_path / "a", 4, seed=0)
    with pytest.raises(DataError, match="weights_path"):  # Inception would try to download
        fidelity_metrics(a, a)
    with pytest.raises(DataError, match="not registered"):
        fidelity_metrics(a, a, feature_extractor="no-such-extractor")
    with pytest.raises(DataError, match="no \\*.png"):
        fidelity_metrics(tmp_path / "a", (tmp_path / "empty").mkdir() or tmp_path / "empty", feature_extractor=TINY)
    write_pngs(tmp_path / "mixed", 2, seed=0, size=16)
    Image.new("RGB", (20, 20)).save(tmp_path / "mixed" / "big.png")
    with pytest.raises(DataError, match="differ in size"):
        fidelity_metrics(tmp_path / "mixed", a, feature_extractor=TINY)
    with pytest.raises(DataError, match=">= 2 images"):
        fidelity_metrics([a / "0000.png"], a, feature_extractor=TINY)
