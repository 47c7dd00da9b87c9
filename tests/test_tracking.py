"""MLflow tracking: one run per stage with tags, params, metrics; concurrent writers both succeed; stages of one
pipeline execution are children of one parent run."""
import hashlib
import subprocess
import sys
import textwrap

import pytest
import yaml

from dreamdiffusion.core.tracked_run import stage_run
from dreamdiffusion.core.tracking import TrackingConfig, flatten, tracking_uri

WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from dreamdiffusion.core.tracked_run import stage_run
    from dreamdiffusion.core.tracking import TrackingConfig
    root, stage = Path(sys.argv[1]), sys.argv[2]
    with stage_run(stage, TrackingConfig(experiment="concurrent"), {"who": stage}, root) as run:
        for step in range(40):
            run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
""")


def runs(root, experiment):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(root))
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id]) if exp else []


def test_stage_run_records_tags_params_metrics_artifacts(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-abc")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "deadbeef")
    figure = tmp_path / "figure.png"
    figure.write_bytes(b"\x89PNG fake")
    with stage_run("preprocess", TrackingConfig(experiment="t"), {"preprocess": {"crop": 20}}, tmp_path) as run:
        run.log_metrics({"kept": 10, "nested": {"acc": 0.5}, "name": "skipped"}, step=1)
        run.log_artifact(figure)
    client, found = runs(tmp_path, "t")
    (run,) = found
    assert run.info.status == "FINISHED"
    assert run.data.tags["stage"] == "preprocess"
    assert run.data.tags["dvc_exp_name"] == "exp-abc"
    assert run.data.tags["dvc_exp_baseline"] == "deadbeef"
    assert "git_commit" in run.data.tags
    assert run.data.params == {"preprocess.crop": "20"}
    assert run.data.metrics == {"kept": 10.0, "nested.acc": 0.5}
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert artifacts == ["figure.png"]
    assert (tmp_path / "mlruns").is_dir() and (tmp_path / "mlflow.db").is_file()


def test_buffered_step_metrics_are_batched_and_all_written(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    calls = []
    with stage_run("pretrain", TrackingConfig(experiment="b"), {}, tmp_path) as run:
        run.wait_open()
        log_batch = run.client.log_batch
        monkeypatch.setattr(run.client, "log_batch", lambda *a, **k: calls.append(len(k.get("metrics", []))) or
                            log_batch(*a, **k))
        for step in range(1200):
            run.log_metrics({"loss": 1.0 / (step + 1), "lr": 0.1}, step=step, buffered=True)
        assert calls == [1000, 1000]  # flushed at FLUSH_ITEMS, not once per step
        run.log_metrics({"val_loss": 0.5}, step=1)  # unbuffered: written now, with what was pending
        assert calls[-1] == 401
    client, (found,) = runs(tmp_path, "b")
    history = client.get_metric_history(found.info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1200))
    assert len(client.get_metric_history(found.info.run_id, "lr")) == 1200


def test_the_stage_works_while_its_run_opens_and_the_run_starts_when_the_stage_did(tmp_path, monkeypatch):
    import threading
    import time

    from dreamdiffusion.core import tracked_run as tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    release, real_open = threading.Event(), tracking.open_run
    monkeypatch.setattr(tracking, "open_run", lambda *a: release.wait(60) and real_open(*a))
    entered = time.time()
    with stage_run("pretrain", TrackingConfig(experiment="bg"), {"pretrain": {"epochs": 2}}, tmp_path) as run:
        assert run.client is None  # still opening: the stage body is already running
        run.log_metrics({"loss": 1.5}, step=0, buffered=True)  # kept, does not wait
        time.sleep(0.2)
        release.set()
    client, (found,) = runs(tmp_path, "bg")
    assert found.info.status == "FINISHED" and found.data.metrics == {"loss": 1.5}
    assert found.data.params == {"pretrain.epochs": "2"}
    assert abs(found.info.start_time / 1000 - entered) < 0.15  # not the (later) time the open finished


def test_a_run_that_cannot_open_leaves_the_stage_alone_and_says_it_is_not_recorded(tmp_path, monkeypatch, capsys):
    from dreamdiffusion.core import tracked_run as tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def broken(*args):
        raise RuntimeError("mlflow.db: file is not a database")

    monkeypatch.setattr(tracking, "open_run", broken)
    with stage_run("x", TrackingConfig(experiment="broken"), {}, tmp_path) as run:
        run.log_metrics({"loss": 1.0}, step=0)
        done = True  # the stage body runs to its end
    assert done and not run.enabled
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("x: warning: MLflow store sqlite:///") and "mlflow.db: file is not a database" in line
    assert "this run is not recorded" in line


def test_a_store_that_does_not_answer_is_given_up_within_the_store_wait(tmp_path, monkeypatch, capsys):
    import threading
    import time

    from dreamdiffusion.core import tracked_run as tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DREAMDIFFUSION_TRACKING_WAIT", "0.3")
    never = threading.Event()
    monkeypatch.setattr(tracking, "open_run", lambda *a: never.wait(30))
    started = time.monotonic()
    with stage_run("x", TrackingConfig(experiment="hang"), {}, tmp_path) as run:
        run.log_metrics({"loss": 1.0}, step=0)
    assert time.monotonic() - started < 5
    assert "no answer within 0.3 s; this run is not recorded" in capsys.readouterr().err
    never.set()


def test_a_store_failing_midway_keeps_the_run_marked_not_fully_recorded(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with stage_run("x", TrackingConfig(experiment="mid"), {}, tmp_path) as run:
        run.wait_open()
        monkeypatch.setattr(run.client, "log_batch", lambda *a, **k: (_ for _ in ()).throw(OSError("disk I/O error")))
        run.log_metrics({"loss": 1.0}, step=0)
        run.log_metrics({"loss": 0.5}, step=1)  # skipped: tracking has stopped
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and f"run {run.run_id} is not fully recorded" in err and "disk I/O error" in err
    _, (found,) = runs(tmp_path, "mid")
    assert found.info.status == "RUNNING" and found.data.metrics == {}


def test_a_locked_database_is_retried_within_the_store_wait(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with stage_run("x", TrackingConfig(experiment="retry"), {}, tmp_path) as run:
        run.wait_open()
        calls, log_batch = [], run.client.log_batch

        def locked_once(*args, **kwargs):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("(sqlite3.OperationalError) database is locked")
            return log_batch(*args, **kwargs)

        monkeypatch.setattr(run.client, "log_batch", locked_once)
        run.log_metrics({"loss": 1.0}, step=0)
    _, (found,) = runs(tmp_path, "retry")
    assert len(calls) == 2 and found.info.status == "FINISHED" and found.data.metrics == {"loss": 1.0}


def test_a_bad_store_wait_is_refused(tmp_path, monkeypatch):
    from dreamdiffusion.core.config import ConfigError

    monkeypatch.setenv("DREAMDIFFUSION_TRACKING_WAIT", "soon")
    with pytest.raises(ConfigError, match="DREAMDIFFUSION_TRACKING_WAIT='soon'"):
        with stage_run("x", TrackingConfig(experiment="w"), {}, tmp_path):
            pass


def test_an_interrupted_stage_marks_its_run_killed_with_the_reason(tmp_path, monkeypatch):
    from dreamdiffusion.core.cli import Stopped

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(Stopped):
        with stage_run("x", TrackingConfig(experiment="k"), {}, tmp_path):
            raise Stopped(15)
    _, (run,) = runs(tmp_path, "k")
    assert run.info.status == "KILLED" and run.data.tags["killed_reason"] == "stopped by SIGTERM"


def test_buffered_metrics_are_written_when_the_stage_fails(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(RuntimeError):
        with stage_run("x", TrackingConfig(experiment="bf"), {}, tmp_path) as run:
            run.log_metrics({"loss": 2.0}, step=3, buffered=True)
            raise RuntimeError("boom")
    client, (found,) = runs(tmp_path, "bf")
    assert found.info.status == "FAILED" and found.data.metrics == {"loss": 2.0}


def test_failed_stage_marks_run_failed(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(RuntimeError):
        with stage_run("x", TrackingConfig(experiment="f"), {}, tmp_path):
            raise RuntimeError("boom")
    _, (run,) = runs(tmp_path, "f")
    assert run.info.status == "FAILED"


def test_disabled_tracking_writes_nothing(tmp_path):
    with stage_run("x", TrackingConfig(enabled=False), {}, tmp_path) as run:
        run.log_metrics({"a": 1})
    assert not (tmp_path / "mlflow.db").exists()


def test_two_processes_logging_at_once_both_succeed(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), name],
                              stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    client, found = runs(tmp_path, "concurrent")
    assert sorted(r.data.tags["stage"] for r in found) == ["a", "b"]
    for run in found:
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "loss")) == 40


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def execution(tmp_path, name: str, params: dict):
    """The execution a stage would find for `params` under DVC experiment `name`."""
    from dreamdiffusion.core.tracking import current_execution

    params_file = tmp_path / f"{name}.yaml"
    params_file.write_text(yaml.safe_dump(params))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DVC_EXP_NAME", name)
        return current_execution(tmp_path, params_file)


def test_two_executions_give_two_parents_each_with_its_own_children(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tmp_path / "eeg.h5"
    data.write_bytes(b"eeg bytes")
    config = TrackingConfig(experiment="grouped")
    for name, lr in (("exp-a", 0.1), ("exp-b", 0.2)):
        found = execution(tmp_path, name, {"finetune": {"lr": lr}})
        for stage in ("finetune", "evaluate"):
            with stage_run(stage, config, {}, tmp_path, found) as run:
                run.log_datasets([(data, "train")])
                run.log_parent_metrics({"nway_top1": lr})
    client, found = runs(tmp_path, "grouped")
    parents = {r.info.run_name: r for r in found if r.data.tags.get("kind") == "pipeline"}
    assert sorted(parents) == ["exp-a", "exp-b"]
    assert client.get_experiment_by_name("grouped").tags["mlflow.experimentKind"] == "custom_model_development"
    for name, parent in parents.items():
        children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.data.tags["stage"] for r in children) == ["evaluate", "finetune"]
        assert parent.info.status == "FINISHED" and parent.data.params["finetune.lr"] in ("0.1", "0.2")
        assert parent.data.metrics["nway_top1"] == float(parent.data.params["finetune.lr"])
        assert {"git_commit", "params_hash", "code_hash"} <= set(parent.data.tags)
        (dataset,) = [d.dataset for d in children[0].inputs.dataset_inputs]
        assert dataset.name == "eeg.h5" and dataset.digest == hashlib.sha256(b"eeg bytes").hexdigest()[:32]
    assert parents["exp-a"].data.tags["params_hash"] != parents["exp-b"].data.tags["params_hash"]


def test_same_execution_finds_its_parent_and_a_failed_stage_fails_it(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    found = execution(tmp_path, "workspace", {"seed": 0})
    assert found == execution(tmp_path, "workspace", {"seed": 0})
    assert found.key != execution(tmp_path, "workspace", {"seed": 1}).key
    with stage_run("pretrain", TrackingConfig(experiment="g"), {}, tmp_path, found):
        pass
    with pytest.raises(RuntimeError):
        with stage_run("finetune", TrackingConfig(experiment="g"), {}, tmp_path, found):
            raise RuntimeError("boom")
    _, all_runs = runs(tmp_path, "g")
    (parent,) = [r for r in all_runs if r.data.tags.get("kind") == "pipeline"]
    assert parent.info.status == "FAILED" and len(all_runs) == 3


def test_ui_address_opens_the_experiment_on_its_training_runs(tmp_path, monkeypatch, capsys):
    from dreamdiffusion.tools.ui_url import experiment_id, main, ui_url

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert experiment_id(tmp_path, "t") is None  # no store yet: the experiment list
    assert ui_url(5000, None) == "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
    with stage_run("preprocess", TrackingConfig(experiment="t"), {}, tmp_path):
        pass
    client, (run,) = runs(tmp_path, "t")
    wanted = client.get_experiment_by_name("t").experiment_id
    assert experiment_id(tmp_path, "t") == wanted
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"tracking": {"experiment": "t"}}))
    main(["--port", "5123", "--params", str(tmp_path / "params.yaml")])
    assert capsys.readouterr().out.strip().endswith(
        f"http://127.0.0.1:5123/#/experiments/{wanted}/runs?workflowType=machine_learning")


def test_ui_address_refuses_a_params_file_the_stages_would_refuse(tmp_path, capsys):
    from dreamdiffusion.tools.ui_url import main

    (tmp_path / "params.yaml").write_text("tracking: &t\n  experiment: t\n")
    with pytest.raises(SystemExit) as exit_:
        main(["--params", str(tmp_path / "params.yaml")])
    assert exit_.value.code == 2 and "params.yaml: line 1, column 11: not valid YAML: anchor 't'" in capsys.readouterr().err


def test_an_experiment_copy_keeps_its_key_while_the_main_repository_moves(tmp_path, monkeypatch):
    """A queued experiment runs in its own git copy; commits and edits in the main repo (DVC_ROOT)
    must not split its stages over two parents."""
    from dreamdiffusion.core.tracking import stage_execution

    def commit(repo, text):
        (repo / "dreamdiffusion").mkdir(parents=True, exist_ok=True)
        (repo / "dreamdiffusion" / "x.py").write_text(text)
        git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
        subprocess.run([*git, "init", "-q"], check=True)
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-qm", text], check=True)

    main, copy = tmp_path / "main", tmp_path / "copy"
    commit(main, "a = 1")
    commit(copy, "a = 1")
    (copy / "params.yaml").write_text(yaml.safe_dump({"seed": 1}))
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(main))
    monkeypatch.setenv("DVC_EXP_NAME", "abl-full-s1")
    first = stage_execution("params.yaml")
    assert first.git_commit and first.params_hash
    commit(main, "a = 2")                                   # the user commits in the main repo ...
    (main / "dreamdiffusion" / "x.py").write_text("a = 3")  # ... and edits it
    assert stage_execution("params.yaml").key == first.key
    (copy / "dreamdiffusion" / "x.py").write_text("a = 4")  # the experiment's own code is what counts
    assert stage_execution("params.yaml").key != first.key
