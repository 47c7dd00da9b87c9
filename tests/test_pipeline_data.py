"""End to end, in a temporary git copy: download + preprocess under DVC and MLflow."""
import h5py
import pytest
import yaml

from pipeline import TINY, lock, make_repo_copy, merge, out_md5, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = make_repo_copy(tmp_path_factory.mktemp("repo"), TINY)
    run(repo, "dvc", "repro", "download", "preprocess")
    return repo


def test_outputs_exist_with_the_real_schema(repo):
    with h5py.File(repo / "data/processed/eeg.h5") as h5:
        assert h5["eeg"].shape[1:] == (128, 512) and h5["eeg"].chunks == (1, 128, 512)
        assert set(h5) == {"eeg", "label", "image_index", "subject", "trial", "split", "class_names"}
    with h5py.File(repo / "data/processed/images.h5") as h5:
        assert h5["images"].shape[1:] == (16, 16, 3)
    assert (repo / "metrics/preprocess.json").is_file()
    assert (repo / "metrics/preprocess_trials.png").stat().st_size > 1000
    assert (repo / "data/raw/manifest.json").is_file()


def test_second_repro_does_nothing(repo):
    out = run(repo, "dvc", "repro", "download", "preprocess").stdout
    assert "didn't change, skipping" in out and "Running stage" not in out


def test_preprocess_param_reruns_only_preprocess_and_images_stay_identical(repo):
    before = lock(repo)
    images_md5 = out_md5(repo, "preprocess", "data/processed/images.h5")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params = merge(params, {"preprocess": {"normalize": "channel", "crop_end": 440}})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(repo, "dvc", "repro", "download", "preprocess").stdout
    assert "Running stage 'preprocess'" in out and "Running stage 'download'" not in out
    assert lock(repo)["download"] == before["download"]
    assert out_md5(repo, "preprocess", "data/processed/eeg.h5") != \
        next(o["md5"] for o in before["preprocess"]["outs"] if o["path"] == "data/processed/eeg.h5")
    # images.h5 is byte-identical, so a stage that reads only images does not rerun
    assert out_md5(repo, "preprocess", "data/processed/images.h5") == images_md5


def test_mlflow_runs_have_tags(repo):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dreamdiffusion")
    found = [r for r in client.search_runs([experiment.experiment_id])
             if r.data.tags.get("kind") != "pipeline"]  # the stage runs, not their parent
    stages = sorted(r.data.tags["stage"] for r in found)
    assert stages.count("download") == 1 and stages.count("preprocess") == 2
    for r in found:
        assert r.info.status == "FINISHED"
        assert len(r.data.tags["git_commit"]) == 40
    assert any("preprocess.crop_end" in r.data.params for r in found)


def test_bad_param_fails_cleanly_naming_the_key(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["preprocess"]["resampel"] = "linear"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run(repo, "python", "stages/preprocess.py", check=False)
    assert proc.returncode == 2
    assert "unknown key(s) resampel; allowed keys: subjects" in proc.stderr
