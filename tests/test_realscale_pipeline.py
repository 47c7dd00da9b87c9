"""Every stage at the real model shapes, end to end through `dvc repro` (`make test-realscale`).

The real preset (EEG-ImageNet + SD 1.5 + CLIP ViT-L/14 + ViT-H/14 + Inception) with local copies
of every model (random weights at the exact real shapes, `realshape.py`) and a local EEG-ImageNet-
schema set for subject 4 with a `_single` split file. Only what costs CPU time is reduced: images of
64 px (SD's `sample_size` config is 8, every weight shape is SD 1.5's), the judge at 224 px (its
position embedding is the only tensor whose shape depends on that), a dozen trials, one epoch and
two sampling steps. It asserts what each stage wrote, so the real path cannot break unnoticed.
"""
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dreamdiffusion.tools.presets import load_preset, merge
from pipeline import make_repo_copy, run
from realschema import make_payload, wnids, write_eeg_file, write_jpeg, write_splits_file
from realscale_setup import realscale_overrides, require_free_disk
from realshape import real_shape_sources  # noqa: F401  (a fixture)

pytestmark = pytest.mark.realscale
PIXELS, SUBJECT, IMAGES_PER_CLASS = 64, 4, 4
STAGES = ("download", "preprocess", "foundation", "pretrain", "finetune", "generate", "evaluate")


def eeg_imagenet_single(root: Path) -> dict:
    """EEG-ImageNet-schema files: 3 classes x 4 images seen by 4 subjects, a `_single` split of subject 4."""
    payload = make_payload(classes=3, images_per_class=IMAGES_PER_CLASS, subjects=SUBJECT, T=500, seed=0)
    mine = [i for i, trial in enumerate(payload["dataset"]) if trial["subject"] == SUBJECT]
    split = {"train": [], "val": [], "test": []}
    for position, index in enumerate(mine):  # positions index subject 4's trials, as the _single files do
        rank = payload["dataset"][index]["image"] % IMAGES_PER_CLASS
        split["test" if rank == 3 else "val" if rank == 2 else "train"].append(position)
    root.mkdir(parents=True)
    write_eeg_file(root / "eeg_5_95_std.pth", payload)
    write_splits_file(root / "block_splits_by_image_single.pth", {"splits": [split]})
    rng = np.random.default_rng(1)
    for image, name in enumerate(payload["images"]):
        write_jpeg(root / "images" / wnids(3)[image // IMAGES_PER_CLASS] / f"{name}.JPEG", rng, size=80)
    return {"eeg_file": str(root / "eeg_5_95_std.pth"), "splits_file": str(root / "block_splits_by_image_single.pth"),
            "images_dir": str(root / "images")}


def realscale_params(sources: dict, data: dict) -> dict:
    """params.yaml: the real preset, then the local copies and the CPU-time reductions."""
    params = merge(yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text()), load_preset("real"))
    return merge(merge(params, realscale_overrides(sources)),
                 {"download": data, "preprocess": {"image_size": PIXELS, "figure_trials": 1}})


@pytest.fixture(scope="module")
def repo(real_shape_sources, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("realscale")
    require_free_disk(root, 26, "the real-scale pipeline's models, their DVC cache and an official-format checkpoint")
    data = eeg_imagenet_single(root / "eeg_imagenet")
    repo = make_repo_copy(root / "repo")
    (repo / "params.yaml").write_text(yaml.safe_dump(realscale_params(real_shape_sources, data), sort_keys=False))
    done = run(repo, "dvc", "repro", env={"DREAMDIFFUSION_PROGRESS": "0"})
    (root / "repro.log").write_text(done.stdout + done.stderr)
    yield repo, done.stdout + done.stderr
    import shutil

    shutil.rmtree(root, ignore_errors=True)  # ~25 GB of model copies


def metrics(repo: Path, name: str) -> dict:
    """A stage's full report (`metrics/<name>_details.json`; `<name>.json` holds its headline only)."""
    return json.loads((repo / "metrics" / f"{name}_details.json").read_text())


def test_every_stage_ran_and_reported_its_peak_memory(repo):
    _, log = repo
    peaks = dict(re.findall(r"^(\w+): done in [\d.]+ s, peak RSS ([\d,]+) MiB", log, flags=re.M))
    assert set(peaks) == set(STAGES), log[-3000:]
    print({stage: f"{int(peaks[stage].replace(',', '')) / 1024:.1f} GiB" for stage in STAGES})  # -s shows it


def test_preprocess_kept_subject_4_and_only_stimulus_images(repo):
    repo, _ = repo
    report = metrics(repo, "preprocess")
    assert report["trials_per_subject"] == {str(SUBJECT): 12}
    assert report["trials_per_split"] == {"train": 6, "val": 3, "test": 3}
    assert "extra" not in report["images_per_split"]


def test_foundation_snapshot_has_the_real_shapes(repo):
    repo, _ = repo
    manifest = json.loads((repo / "models/foundation/manifest.json").read_text())
    assert manifest["source"] == "pretrained" and manifest["fidelity"]["feature_extractor"] == "inception-v3-compat"
    unet = json.loads((repo / "models/foundation/stable_diffusion/unet/config.json").read_text())
    assert unet["block_out_channels"] == [320, 640, 1280, 1280] and unet["cross_attention_dim"] == 768
    conditioning = json.loads((repo / "models/foundation/conditioning/config.json").read_text())
    assert (conditioning["seq_len"], conditioning["width"]) == (77, 768)
    assert not (repo / "models/foundation/stable_diffusion/text_encoder").exists()
    assert math.isfinite(metrics(repo, "foundation")["vae_psnr"])


def test_pretrain_trained_the_paper_encoder(repo):
    repo, _ = repo
    config = json.loads((repo / "models/pretrain/config.json").read_text())["model"]
    assert (config["width"], config["depth"], config["heads"], config["patch"], config["mlp_ratio"]) == (1024, 24, 16, 4, 4.0)
    found = metrics(repo, "pretrain")
    assert found["encoder_params"] > 300e6 and math.isfinite(found["train_mse"]) and math.isfinite(found["probe_top1"])


def test_finetune_conditions_sd15_and_cleans_up(repo):
    repo, _ = repo
    found = metrics(repo, "finetune")
    assert found["val_nway"] == 50  # 50-way over the judge's 1,000 ImageNet classes, as computed
    assert found["trainable_params"] > 340e6 and found["total_params"] > 1.1e9
    assert math.isfinite(found["val_loss"]) and 0 <= found["val_nway_top1"] <= 1
    conditioner = json.loads((repo / "models/finetune/conditioner/config.json").read_text())
    assert (conditioner["cond_tokens"], conditioner["cond_width"], conditioner["clip_dim"]) == (77, 768, 768)
    assert not list((repo / "checkpoints/finetune").glob("*"))  # resume state removed after success
    assert len(list((repo / "cache/image_features").glob("*.h5"))) == 1  # each image encoded once, kept


def test_generate_wrote_native_size_images_and_controls(repo):
    repo, _ = repo
    rows = (repo / "data/generated/index.csv").read_text().splitlines()[1:]
    assert len(rows) == 3 * 2 + 3  # 3 test trials x 2 samples + 3 controls
    first = rows[0].split(",")[-1]
    assert Image.open(repo / "data/generated" / first).size == (PIXELS, PIXELS)


def test_evaluate_reports_every_metric_finite(repo):
    repo, _ = repo
    found = metrics(repo, "eval")
    assert found["nway"] == 50 and found["chance"] == pytest.approx(0.02)
    for key in ("nway_top1", "nway_top5", "clip_2way", "clip_similarity", "ssim", "pixcorr", "eeg_top1", "fid",
                "is_mean", "kid_mean"):
        assert math.isfinite(found[key]), key
    assert found["fidelity"]["extractor"] == "inception-v3-compat"
    assert set(found["controls"]) == {"nway_top1", "clip_2way"}
    assert (repo / "metrics/eval_confusion.png").stat().st_size > 0


def test_an_imported_official_checkpoint_generates_and_evaluates(repo, tmp_path):
    """The official release's layout at its real shapes (random weights, ~5.6 GB, written the official way)
    imported by `finetune` (`source: official`); `generate` and `evaluate` then run on it unchanged."""
    from official_reference import Spec, random_state, save_official

    from dreamdiffusion.core.fileio import sha256_file

    repo, _ = repo
    checkpoint = tmp_path / "checkpoint_best.pth"
    save_official(checkpoint, random_state(Spec(), seed=0))
    params = merge(yaml.safe_load((repo / "params.yaml").read_text()), {
        "preprocess": {"model_input": "official"},
        "finetune": {"source": "official", "official_checkpoint": str(checkpoint),
                     "official_sha256": sha256_file(checkpoint)},
        "generate": {"samples_per_eeg": 1, "batch_size": 2, "decode_batch_size": 1}})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = run(repo, "dvc", "repro", env={"DREAMDIFFUSION_PROGRESS": "0"})
    log = done.stdout + done.stderr
    assert "Running stage 'pretrain'" not in log  # preprocess wrote the same files: nothing upstream reran
    found = metrics(repo, "finetune")
    assert found["source"] == "official" and found["mapped_keys_unet"] == 686 and found["dropped_keys"] > 0
    report = json.loads((repo / "models/finetune/import_report.json").read_text())
    assert report["accounted_keys"] == report["checkpoint_keys"]  # every key mapped or dropped with a reason
    rows = (repo / "data/generated/index.csv").read_text().splitlines()[1:]
    assert len(rows) == 3 * 1 + 3  # 3 test trials x 1 sample + 3 controls
    assert Image.open(repo / "data/generated" / rows[0].split(",")[-1]).size == (512, 512)  # the official VAE's
    found = metrics(repo, "eval")
    for key in ("nway_top1", "clip_2way", "ssim", "eeg_top1", "fid"):
        assert math.isfinite(found[key]), key
