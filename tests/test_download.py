"""The `download` stage end to end (no DVC): local and url sources; failures leave nothing."""
import hashlib
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from realschema import make_real_schema_set, read_eeg_file, write_eeg_file

ROOT = Path(__file__).resolve().parents[1]


def run_stage(workdir: Path, download: dict) -> subprocess.CompletedProcess:
    """Run stages/download.py in `workdir` with the given download section, tracking off."""
    params = {"seed": 0, "tracking": {"enabled": False}, "download": download}
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, str(ROOT / "stages/download.py")], cwd=workdir,
                          capture_output=True, text=True, timeout=300)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def real_set(tmp_path):
    return make_real_schema_set(tmp_path / "user", classes=2, images_per_class=3, subjects=2)


def test_local_links_a_valid_set(tmp_path, real_set):
    proc = run_stage(tmp_path, {"source": "local", "eeg_file": str(real_set["eeg_file"]),
                                "splits_file": "user/block_splits_by_image_all.pth",  # relative
                                "images_dir": str(real_set["images_dir"])})
    assert proc.returncode == 0, proc.stderr
    raw = tmp_path / "data/raw"
    manifest = yaml.safe_load((raw / "manifest.json").read_text())
    assert manifest["source"] == "local" and manifest["eeg_file"] == "eeg_5_95_std.pth"
    assert manifest["files"]["eeg_5_95_std.pth"]["sha256"] == sha(real_set["eeg_file"])
    assert (raw / "eeg_5_95_std.pth").resolve() == real_set["eeg_file"].resolve()
    assert len(list((raw / "images").rglob("*.JPEG"))) == 6


def test_local_rejects_bad_set_naming_all_problems_and_leaves_nothing(tmp_path, real_set):
    payload = read_eeg_file(real_set["eeg_file"])
    payload["dataset"][1]["label"] = 7
    payload["dataset"][2]["eeg"] = payload["dataset"][2]["eeg"].double()
    write_eeg_file(real_set["eeg_file"], payload)
    proc = run_stage(tmp_path, {"source": "local", **{k: str(v) for k, v in real_set.items()}})
    assert proc.returncode == 2
    assert "eeg_5_95_std.pth" in proc.stderr and "dataset[1]" in proc.stderr and "dataset[2]" in proc.stderr
    assert not (tmp_path / "data/raw").exists()
    assert not [p for p in (tmp_path / "data").iterdir()]  # no temporary leftovers either


def test_local_missing_path_and_missing_key_are_clear(tmp_path, real_set):
    proc = run_stage(tmp_path, {"source": "local", "eeg_file": str(tmp_path / "nope.pth"),
                                "splits_file": str(real_set["splits_file"]),
                                "images_dir": str(real_set["images_dir"])})
    assert proc.returncode == 2 and "download.eeg_file:" in proc.stderr and "does not exist" in proc.stderr
    proc = run_stage(tmp_path, {"source": "local", "eeg_file": str(real_set["eeg_file"])})
    assert proc.returncode == 2 and "needs splits_file, images_dir" in proc.stderr


def test_url_fetches_verifies_and_unpacks(tmp_path, real_set):
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(real_set["images_dir"], arcname="imagenet_subset")
    files = {"eeg": real_set["eeg_file"], "splits": real_set["splits_file"], "images": archive}
    download = {"source": "url"}
    for key, path in files.items():
        download[f"{key}_url"] = path.as_uri()
        download[f"{key}_sha256"] = sha(path)
    proc = run_stage(tmp_path, download)
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "data/raw/images").rglob("*.JPEG"))) == 6
    download["splits_sha256"] = "0" * 64
    proc = run_stage(tmp_path, download)
    assert proc.returncode == 2 and "0" * 64 in proc.stderr and sha(real_set["splits_file"]) in proc.stderr
    assert (tmp_path / "data/raw/manifest.json").is_file()  # the previous good output is untouched
