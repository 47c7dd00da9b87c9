"""Experiments reuse every stage whose inputs an earlier run already had: DVC's run cache restores
its outputs (models, data and the git-tracked metrics files alike) instead of running it again."""
import json
import time

import pytest

from dreamdiffusion.tools.ablation.queue import queue_active
from pipeline import make_repo_copy, run
from test_pipeline_full import TINY_ALL

pytestmark = [pytest.mark.slow, pytest.mark.extended]  # about 4 minutes: `make test-extended`
STAGES = ["download", "preprocess", "foundation", "pretrain", "finetune", "generate", "evaluate"]


def stage_lines(log: str) -> dict[str, str]:
    """Per stage, whether a `dvc repro` / `dvc exp run` log says it ran, was restored or was unchanged."""
    found = {}
    for stage in STAGES:
        if f"Running stage '{stage}'" in log:
            found[stage] = "ran"
        elif f"Stage '{stage}' is cached - skipping run" in log:
            found[stage] = "restored"
        elif f"Stage '{stage}' didn't change" in log:
            found[stage] = "unchanged"
    return found


def test_a_queued_experiment_restores_the_stages_an_earlier_experiment_ran(tmp_path):
    repo = make_repo_copy(tmp_path / "repo", TINY_ALL)
    run(repo, "dvc", "repro")
    first = run(repo, "dvc", "exp", "run", "-n", "exp-a", "-S", "pretrain.model.mask_ratio=0.5")
    assert stage_lines(first.stdout)["pretrain"] == "ran"
    run(repo, "dvc", "exp", "run", "--queue", "-n", "exp-b", "-S", "pretrain.model.mask_ratio=0.5",
        "-S", "generate.steps=3")
    run(repo, "dvc", "queue", "start")
    deadline = time.monotonic() + 600
    while queue_active(run(repo, "dvc", "queue", "status").stdout):
        assert time.monotonic() < deadline, "the queue did not finish in 10 minutes"
        time.sleep(2)
    log = run(repo, "dvc", "queue", "logs", "exp-b").stdout
    seen = stage_lines(log)
    assert {s: seen.get(s) for s in STAGES[:5]} == {s: "restored" for s in STAGES[:5]}, log[-3000:]
    assert seen["generate"] == "ran" and seen["evaluate"] == "ran", log[-3000:]
    shown = json.loads(run(repo, "dvc", "exp", "show", "--json").stdout)
    assert "exp-b" in json.dumps(shown)
