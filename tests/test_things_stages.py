"""The `things` preset through every stage on a tiny THINGS-EEG2 twin (dvc repro in a throwaway copy):
what each stage wrote, retrieval and the reconstruction suite in evaluate, and fine-tuning that never
reads the test partition (made unreadable garbage, the fine-tuned model does not change by one byte)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from pipeline import ROOT, make_repo_copy, merge, run
from test_foundation import TINY as FOUNDATION_TINY

pytestmark = pytest.mark.slow

PRESET = yaml.safe_load((ROOT / "dreamdiffusion/tools/presets/things.yaml").read_text())
TINY_THINGS = merge(PRESET, {
    "download": {"twin": {"train_concepts": 8, "images_per_concept": 2, "test_concepts": 4, "train_repetitions": 2,
                          "test_repetitions": 3, "subjects": 2, "image_size": 16}},
    "preprocess": {"image_size": 16, "figure_trials": 1, "things": {"val_concepts": 2}},
    "foundation": FOUNDATION_TINY,
    "pretrain": {"model": {"patch": 25, "width": 16, "depth": 1, "heads": 2, "decoder_width": 8, "decoder_depth": 1,
                           "decoder_heads": 2}, "epochs": 1, "batch_size": 4},
    "finetune": {"epochs": 2, "align_epochs": 1, "batch_size": 4, "val_every": 1, "val_trials": 4, "val_steps": 2},
    "generate": {"samples_per_eeg": 2, "steps": 2, "batch_size": 16},
    "evaluate": {"nway_draws": 5, "retrieval_draws": 5, "retrieval_shuffles": 3},
})


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = make_repo_copy(tmp_path_factory.mktemp("things"), TINY_THINGS)
    run(repo, "dvc", "repro")
    return repo


def details(repo: Path, stem: str) -> dict:
    return json.loads((repo / f"metrics/{stem}_details.json").read_text())


def test_every_stage_wrote_the_things_world(repo):
    report = details(repo, "preprocess")
    assert report["dataset"] == "things-eeg2" and report["channels"] == 17 and report["samples"] == 100
    assert report["concepts_per_split"] == {"train": 6, "val": 2, "test": 4}
    assert report["trials_per_split"] == {"train": 24, "val": 8, "test": 8}  # mean of repetitions: 12 images x 2
    pretrain = details(repo, "pretrain")
    assert "probe_skipped" in pretrain  # val concepts are unseen: no class probe
    encoder = json.loads((repo / "models/pretrain/config.json").read_text())["model"]
    assert (encoder["channels"], encoder["samples"], encoder["patch"]) == (17, 100, 25)
    assert details(repo, "finetune")["best_epoch"] in (1, 2)
    index = (repo / "data/generated/index.csv").read_text().splitlines()[1:]
    rows = [line.split(",") for line in index]
    assert sum(r[0] == "eeg" for r in rows) == 8 * 2 and {int(r[4]) for r in rows} == set(range(8, 12))  # test concepts


def test_evaluate_reports_retrieval_with_chance_and_the_shuffled_control(repo):
    found = details(repo, "eval")["retrieval"]
    assert found["gallery"] == 4 and found["queries"] == 8 and found["chance_top1"] == 0.25
    assert {"2way_top1", "2way_top1_std", "4way_top1", "top5"} <= set(found) and "10way_top1" not in found
    assert found["shuffled"]["shuffles"] == 3 and 0 <= found["shuffled"]["top1"] <= 1
    assert set(found["per_subject"]["groups"]) == {"1", "2"}
    headline = json.loads((repo / "metrics/eval.json").read_text())
    assert headline["retrieval"]["top1"] == found["top1"] and "eeg_top1" not in headline  # no train image: skipped
    suite = details(repo, "eval")["reconstruction"]
    for name in ("pixcorr", "ssim", "clip_2way", "judge_2way", "pixcorr_425", "ssim_425"):
        assert 0 <= abs(suite[name]["value"]) <= 1 and suite[name]["extractor"] and suite[name]["resize"], name
    assert set(suite["not_computed"]) == {"alexnet2_2way", "alexnet5_2way", "inception_2way", "effnet_b_distance",
                                          "swav_distance"}  # no weight files: each named with the param to set
    assert "evaluate.suite_weights.swav_resnet50.path is null" in suite["not_computed"]["swav_distance"]


def tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_finetune_never_reads_the_test_partition(repo):
    before = tree_digest(repo / "models/finetune")
    with h5py.File(repo / "data/processed/eeg.h5", "r+") as h5:  # test EEG -> NaN: any read would poison training
        rows = np.flatnonzero(h5["split"][()] == 2)
        for row in rows:
            h5["eeg"][row] = np.nan
    with h5py.File(repo / "data/processed/images.h5", "r+") as h5:  # test images -> noise
        for row in np.flatnonzero(h5["split"][()] == 2):
            h5["images"][row] = np.random.default_rng(int(row)).integers(0, 256, h5["images"].shape[1:], np.uint8)
    run(repo, "dvc", "repro", "-s", "-f", "finetune")
    assert tree_digest(repo / "models/finetune") == before
