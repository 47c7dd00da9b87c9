"""Code deps follow the layout: editing one file makes stale exactly the stages that import it.

In a temporary copy of the pipeline's code (stand-in outputs, a dvc.lock committed for them), one
file is edited at a time and `dvc status` says which stages must rerun."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from closure import closure

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("download", "preprocess", "foundation", "pretrain", "finetune", "generate", "evaluate")
LATER = {stage: set(STAGES[i:]) for i, stage in enumerate(STAGES)}
# file -> the stages an edit of it must make stale (and no other)
EXPECTED = {
    "dreamdiffusion/evaluate/fidelity.py": {"evaluate"},
    "dreamdiffusion/evaluate/metrics.py": {"evaluate"},
    "dreamdiffusion/evaluate/extractors.py": {"evaluate"},
    "dreamdiffusion/generate/figures.py": {"generate"},
    "dreamdiffusion/generate/index.py": {"generate", "evaluate"},
    "dreamdiffusion/finetune/engine.py": {"finetune"},
    "dreamdiffusion/pretrain/model.py": LATER["pretrain"] - {"foundation"},
    "dreamdiffusion/pretrain/train.py": {"pretrain"},
    "dreamdiffusion/foundation/demo.py": {"foundation"},
    "dreamdiffusion/preprocess/corpus.py": {"preprocess"},
    "dreamdiffusion/download/synthetic.py": {"download"},
    **{f"dreamdiffusion/{stage}/run.py": {stage} for stage in STAGES},
    **{f"dreamdiffusion/{stage}/config.py": {stage} for stage in ("download", "preprocess", "generate", "evaluate")},
}


def dvc(repo: Path, *args: str) -> str:
    """Run DVC in `repo`; its stdout."""
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def declared_outputs(stage: dict) -> list[str]:
    """Every path a dvc.yaml stage writes (outs, metrics, plots)."""
    paths = []
    for kind in ("outs", "metrics", "plots"):
        for entry in stage.get(kind, []):
            paths.append(entry if isinstance(entry, str) else next(iter(entry)))
    return paths


@pytest.fixture(scope="module")
def pipeline_copy(tmp_path_factory) -> Path:
    """The code, params and dvc.yaml in a fresh DVC project, every output a stand-in, all committed."""
    repo = tmp_path_factory.mktemp("stale")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    for folder in ("stages", "dreamdiffusion", "models/release"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    dvc(repo, "init", "--no-scm", "-q")
    for stage in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].values():
        for out in declared_outputs(stage):
            path = repo / out
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix:
                path.write_text("{}")
            else:
                path.mkdir(exist_ok=True)
                (path / "stand-in").write_text(out)
    dvc(repo, "commit", "-f", "-q")
    return repo


def stale_stages(repo: Path) -> dict[str, set[str]]:
    """Stage -> its code deps that changed since the lock."""
    from dvc.repo import Repo

    with Repo(str(repo)) as project:  # in-process: a `dvc status` per edit without a new interpreter
        status = project.status()
    changed = {}
    for stage, entries in status.items():
        for entry in entries:
            if isinstance(entry, dict) and "changed deps" in entry:
                changed[stage.rpartition(":")[2]] = set(entry["changed deps"])
    return changed


def test_the_copy_starts_clean(pipeline_copy):
    assert stale_stages(pipeline_copy) == {}


@pytest.mark.parametrize("edited", sorted(EXPECTED))
def test_an_edit_makes_stale_only_the_stages_that_import_it(pipeline_copy, edited):
    path = pipeline_copy / edited
    original = path.read_text()
    path.write_text(original + "\n# an edit\n")
    try:
        stale = stale_stages(pipeline_copy)
    finally:
        path.write_text(original)
    assert set(stale) == EXPECTED[edited]
    assert all(changed == {edited} for changed in stale.values())


def test_every_shared_module_is_a_dep_of_the_stages_that_import_it_only(pipeline_copy):
    """Each core module: the stages it makes stale are exactly those whose import closure holds it."""
    closures = {stage: {str(p.relative_to(ROOT)) for p in closure(ROOT / "stages" / f"{stage}.py")}
                for stage in STAGES}
    for path in sorted((pipeline_copy / "dreamdiffusion/core").glob("*.py")):
        edited = str(path.relative_to(pipeline_copy))
        original = path.read_text()
        path.write_text(original + "\n# an edit\n")
        try:
            stale = set(stale_stages(pipeline_copy))
        finally:
            path.write_text(original)
        assert stale == {stage for stage in STAGES if edited in closures[stage]}, edited
