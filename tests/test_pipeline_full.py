"""The whole pipeline end to end with a tiny world, in a temporary git copy of the repo."""
import csv
import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline import TINY, make_repo_copy, merge, run
from test_foundation import TINY as FOUNDATION_TINY

pytestmark = pytest.mark.slow

TINY_ALL = merge(TINY, {
    "download": {"synthetic": {"images_per_class": 6, "extra_images_per_class": 6}},
    "foundation": FOUNDATION_TINY,
    "pretrain": {"model": {"patch": 64, "width": 16, "depth": 1, "heads": 2, "decoder_width": 8,
                           "decoder_depth": 1, "decoder_heads": 2},
                 "epochs": 1, "batch_size": 2},
    "finetune": {"epochs": 2, "align_epochs": 1, "batch_size": 8, "val_every": 1, "val_trials": 4, "val_steps": 2},
    "generate": {"samples_per_eeg": 2, "steps": 2, "batch_size": 16},
    "evaluate": {"nway_draws": 5, "kid_subset_size": 4},
})
EVAL_KEYS = ["nway_top1", "nway_top1_std", "nway_top1_dataset_classes", "fid", "is_mean", "is_std", "kid_mean",
             "kid_std", "clip_similarity", "clip_2way", "ssim", "pixcorr", "eeg_top1", "eeg_top5"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = make_repo_copy(tmp_path_factory.mktemp("full"), TINY_ALL)
    run(repo, "dvc", "repro")
    return repo


def test_every_metric_exists_and_is_finite(repo):
    metrics = json.loads((repo / "metrics/eval_details.json").read_text())
    for key in EVAL_KEYS:
        assert math.isfinite(metrics[key]), key
    assert set(metrics["controls"]) == {"nway_top1", "clip_2way"}
    assert metrics["fidelity"]["n_generated"] == metrics["test_trials"] * 2
    assert 0 <= metrics["nway_top1"] <= 1 and metrics["chance"] == pytest.approx(1 / 3)
    finetune = json.loads((repo / "metrics/finetune_details.json").read_text())
    assert 1 <= finetune["best_epoch"] <= 2 and finetune["trainable_params"] < finetune["total_params"]
    record = metrics["compute"]  # what produced the numbers: portable kernels (AVX2 on any x86-64), fp32
    assert record["cpu_kernels"] == "portable" and record["kernel_caps"]["ATEN_CPU_CAPABILITY"] == "avx2"
    assert record["device"] == "cpu" and record["threads"] >= 1 and record["cpu_capability"] in ("AVX2", "DEFAULT")
    assert json.loads((repo / "data/generated/generate.json").read_text())["compute"]["precision"] == {"generate": "fp32"}
    for name in ("eval_confusion.png", "eval_per_class.csv", "finetune_val_grid.png", "generate_overview.png"):
        assert (repo / "metrics" / name).stat().st_size > 0


def leaf_count(tree) -> int:
    """Number of leaves of a nested dict."""
    return sum(leaf_count(v) for v in tree.values()) if isinstance(tree, dict) else 1


def test_dvc_metrics_show_lists_only_the_headline(repo):
    from dreamdiffusion.core.results import HEADLINE

    (shown,) = json.loads(run(repo, "dvc", "metrics", "show", "--json").stdout).values()  # the workspace
    files = shown["data"]
    assert "nway_top1" in files["metrics/eval.json"]["data"]
    count = sum(leaf_count(entry["data"]) for entry in files.values())
    assert 18 <= count <= sum(map(len, HEADLINE.values())) <= 25  # nway_top5 needs 5 classes; the tiny world has 3
    details = json.loads((repo / "metrics/preprocess_details.json").read_text())
    assert "trials_per_class_per_split" in details and "trials_per_class_per_split" not in json.dumps(files)


def test_one_image_regenerates_alone_from_its_seed(repo):
    import csv
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    from dreamdiffusion.preprocess.processed import load_paired_eeg
    from dreamdiffusion.finetune.load import load_generator
    from dreamdiffusion.generate.run import to_uint8

    rows = list(csv.DictReader(open(repo / "data/generated/index.csv")))
    row = next(r for r in rows if r["kind"] == "eeg" and r["sample"] == "1")
    test = load_paired_eeg(repo / "data/processed/eeg.h5", splits=("test",))
    eeg = torch.from_numpy(test.eeg[list(test.trial).index(int(row["eeg_trial"]))][None])
    generator = load_generator(repo / "models/finetune", repo / "models/foundation")
    precision = json.loads((repo / "data/generated/generate.json").read_text())["compute"]["precision"]["generate"]
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]  # as the stage sampled
    with torch.autocast("cpu", dtype=dtype, enabled=precision != "fp32"):
        image = to_uint8(generator.images(eeg, [int(row["seed"])], "ddim", 2, 3.0).float())[0]
    saved = np.asarray(Image.open(repo / "data/generated" / row["file"]))
    assert np.abs(image.astype(int) - saved.astype(int)).max() <= 1


def test_val_steps_benchmark_scores_the_trained_model_per_step_count(repo):
    """benchmarks/val_steps.py on the finished tiny run: one row per step count, as validation samples."""
    done = run(repo, "python", "benchmarks/val_steps.py", "--steps", "2", "1")
    rows = [line.split() for line in done.stdout.splitlines() if line.strip()[:1].isdigit() and "val" not in line]
    assert [int(row[0]) for row in rows] == [2, 1], done.stdout
    for steps, nway, stderr, fid, inception, seconds in (map(float, row) for row in rows):
        assert 0 <= nway <= 1 and stderr >= 0 and math.isfinite(fid) and fid >= 0 and inception >= 1 and seconds >= 0
    trials = int(done.stdout.split(" val trials")[0].split()[-1])
    val = torch.load(repo / "data/raw/block_splits_by_image_all.pth", weights_only=True)["splits"][0]["val"]
    assert 0 < trials <= len(val)  # every val trial the preprocess kept, and no other split's


def test_two_executions_give_two_mlflow_parents_with_their_own_children(repo):
    """`dvc repro`, then `dvc exp run -S` of a param only `evaluate` reads: two parent runs, the first with
    every stage as children and the headline metrics, the second named after the experiment with one child."""
    from mlflow.tracking import MlflowClient

    run(repo, "dvc", "exp", "run", "--name", "fewer-draws", "-S", "evaluate.nway_draws=3")
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dreamdiffusion")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    found = client.search_runs([experiment.experiment_id])
    parents = {r.info.run_name: r for r in found if r.data.tags.get("kind") == "pipeline"}
    assert sorted(parents) == ["fewer-draws", "workspace"]
    children = {name: sorted(r.data.tags["stage"] for r in found
                             if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)
                for name, parent in parents.items()}
    assert children == {"workspace": sorted(["download", "preprocess", "foundation", "pretrain", "finetune",
                                             "generate", "evaluate"]), "fewer-draws": ["evaluate"]}
    for parent in parents.values():
        assert parent.info.status == "FINISHED" and "nway_top1" in parent.data.metrics
    assert "finetune.val_nway_top1" in parents["workspace"].data.metrics
    assert parents["fewer-draws"].data.params["evaluate.nway_draws"] == "3"


def test_second_repro_is_a_noop(repo):
    out = run(repo, "dvc", "repro").stdout
    assert "Running stage" not in out


def finetune_first_steps(repo) -> list[dict]:
    """Per finetune run in the repo's MLflow store (oldest first): its step-0 losses."""
    import sqlite3

    query = ("select m.run_uuid, m.key, m.value from metrics m join tags t on t.run_uuid = m.run_uuid "
             "join runs r on r.run_uuid = m.run_uuid where t.key = 'stage' and t.value = 'finetune' "
             "and m.key like 'step_%' and m.step = 0 order by r.start_time")
    runs: dict[str, dict] = {}
    with sqlite3.connect(repo / "mlflow.db") as db:
        for run_id, key, value in db.execute(query):
            runs.setdefault(run_id, {})[key] = value
    return list(runs.values())


@pytest.mark.extended  # 80 s more than the library-level check in test_pretrain_distributed.py
def test_two_processes_from_dvc_repro_equal_one_with_the_same_global_batch(repo, tmp_path):
    """compute.processes: 2 relaunches pretrain and finetune under accelerate (gloo on the CPU); with
    half the batch per process they compute what one process computes (draws are keyed by sample).

    Pretraining ends with the same weights. Fine-tuning's first step has the same losses; after it
    the runs part: AdamW's first updates are lr x sign(gradient), so gradients that differ only in
    float rounding (a 2-process all-reduce sums in another order) move near-zero weights by +-lr."""
    import shutil

    from safetensors.torch import load_file

    twin = shutil.copytree(repo, tmp_path / "twin", symlinks=True)  # its image-feature cache is warm
    before = len(finetune_first_steps(twin))
    params = yaml.safe_load((twin / "params.yaml").read_text())
    params["compute"]["processes"] = 2
    params["pretrain"]["batch_size"] //= 2
    params["finetune"]["batch_size"] //= 2
    (twin / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(twin, "dvc", "repro", "finetune")
    one, two = (load_file(str(r / "models/pretrain/encoder.safetensors")) for r in (repo, twin))
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-5), key
    a, b = (json.loads((r / "metrics/pretrain_details.json").read_text()) for r in (repo, twin))
    for key in ("train_mse", "val_mse"):
        assert b[key] == pytest.approx(a[key], rel=1e-5), key
    runs = finetune_first_steps(twin)
    assert len(runs) == before + 1  # rank 1 logged nothing
    one, two = runs[0], runs[-1]
    assert set(one) == set(two) == {"step_loss", "step_diffusion_loss", "step_clip_loss", "step_caption_loss"}
    for key in one:
        assert two[key] == pytest.approx(one[key], rel=1e-5), key


@pytest.mark.extended
def test_paper_recipe_runs_at_tiny_size(repo):
    """The paper preset as a DVC experiment (`presets run`'s command), with only what the tiny world needs
    changed: subject 2 (it has two subjects) and 4 PLMS steps instead of 250."""
    from dreamdiffusion.tools.presets import load_preset
    from dreamdiffusion.tools.presets.__main__ import exp_run_command

    paper = merge(load_preset("paper"), {"preprocess": {"subjects": [2]}, "generate": {"steps": 4}})
    run(repo, *exp_run_command(paper, ["--name", "paper-tiny"]))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["generate"]["scheduler"] == "pndm" and params["finetune"]["caption_weight"] == 0.0
    report = json.loads((repo / "metrics/eval_details.json").read_text())
    assert report["samples_per_eeg"] == 5 and math.isfinite(report["nway_top1"])
    with open(repo / "data/generated/index.csv") as handle:
        samples = {row["sample"] for row in csv.DictReader(handle) if row["kind"] == "eeg"}
    assert samples == {str(k) for k in range(5)}
