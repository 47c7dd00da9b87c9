"""Run the DVC pipeline in a throwaway git copy of the repository (for end-to-end tests)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from dreamdiffusion.core.nested import merge_nested

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# A world small enough for a test to run download + preprocess in seconds.
TINY = {
    "download": {"synthetic": {
        "classes": 3, "shapes": 3, "images_per_class": 4, "extra_images_per_class": 3,
        "image_size": 16, "subjects": 2, "corpus_recordings": 2,
        "corpus_min_seconds": 2.0, "corpus_max_seconds": 3.0}},
    "preprocess": {"image_size": 16, "figure_trials": 1},
}


merge = merge_nested  # recursively update a params dict with overrides (a new dict)


def project_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files of the working tree."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if (ROOT / line).is_file()]


def environment(env: dict | None = None) -> dict:
    """This process's environment with the project's virtualenv first on PATH and no MLflow override."""
    environ = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    environ.pop("MLFLOW_TRACKING_URI", None)
    return environ


def run(repo: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command in `repo` with the project's virtualenv first on PATH."""
    proc = subprocess.run(list(args), cwd=repo, capture_output=True, text=True, env=environment(env))
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def make_repo_copy(dest: Path, params_override: dict | None = None) -> Path:
    """A fresh git repo at `dest` with the project's files, params overridden, one commit."""
    for name in project_files():
        if name in ("dvc.lock",) or name.startswith(("data/", "metrics/")) or (
                name.startswith("models/") and not name.startswith("models/release/")):  # the shipped foundation stays
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), params_override or {})
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, default_flow_style=False))
    run(dest, "git", "init", "-q")
    run(dest, "git", "add", "-A")
    run(dest, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy")
    return dest


def lock(repo: Path) -> dict:
    """The parsed dvc.lock."""
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"]


def out_md5(repo: Path, stage: str, path: str) -> str:
    """The md5 DVC recorded for output `path` of `stage`."""
    return next(o["md5"] for o in lock(repo)[stage]["outs"] if o["path"] == path)
