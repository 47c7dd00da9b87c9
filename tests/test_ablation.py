"""The ablation command: rows -> queued DVC experiments, and the report from `dvc exp show --json`."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dreamdiffusion.tools.ablation import ROW_NAMES, experiment_name, parse_name
from dreamdiffusion.tools.ablation.__main__ import main
from dreamdiffusion.tools.ablation.queue import queue_active
from dreamdiffusion.tools.ablation.markdown import markdown
from dreamdiffusion.tools.ablation.report import collect, common_settings, paired, summarize, verdicts

BASE_PARAMS = {"seed": 0, "finetune": {"val_every": 6, "epochs": 12, "clip_weight": 1.0}}


def experiment(name: str, seed: int, top1: float, timestamp: str = "2026-12-02T13:07:20", state: str = "success",
               error=None, **finetune) -> dict:
    """One entry of `dvc exp show --json` (DVC 3.67 layout: experiments -> revs -> data)."""
    params = {"seed": seed, "finetune": {**BASE_PARAMS["finetune"], "val_every": 5, "epochs": 4, **finetune}}
    data = {"rev": "f" * 40, "timestamp": timestamp, "params": {"params.yaml": {"data": params}},
            "metrics": {"metrics/eval.json": {"data": {"nway_top1": top1, "controls": {"nway_top1": 0.1}}},
                        "metrics/finetune.json": {"data": {"val_nway_top1": top1 + 0.01}}}}
    return {"revs": [{"rev": "f" * 40, "name": name, "data": data, "error": error, "experiments": None}],
            "executor": {"state": state, "name": "dvc-task"}, "name": name}


def payload() -> list[dict]:
    """A baseline with full x 3 seeds, no-alignment x 2 (+ an older duplicate), a failed run and a foreign one."""
    runs = [experiment("abl-full-s0", 0, 0.40), experiment("abl-full-s1", 1, 0.50), experiment("abl-full-s2", 2, 0.60),
            experiment("abl-no-alignment-s0", 0, 0.70, clip_weight=0.0),
            experiment("abl-no-alignment-s1", 1, 0.10, "2026-12-02T13:00:00", clip_weight=0.0),  # older: replaced
            experiment("abl-no-alignment-s1", 1, 0.80, "2026-12-02T14:00:00", clip_weight=0.0),
            experiment("abl-mask-0.25-s0", 0, 0.99, state="failed"),
            experiment("abl-encoder-only-s0", 0, 0.99, error={"msg": "broken"}),
            experiment("my-own-exp", 0, 0.99)]
    return [{"rev": "workspace", "name": None, "data": {"params": {"params.yaml": {"data": BASE_PARAMS}}},
             "experiments": None},
            {"rev": "c" * 40, "name": "main", "data": {"params": {"params.yaml": {"data": BASE_PARAMS}}},
             "experiments": runs}]


def test_names_round_trip_for_every_row():
    for row in ROW_NAMES:
        assert parse_name(experiment_name(row, 12)) == (row, 12)
    assert parse_name("abl-nonsense-s0") is None and parse_name("exp-1a2b") is None and parse_name(None) is None


def test_collect_keeps_successful_ablation_runs_newest_per_seed():
    runs = collect(payload())
    assert [(run.row, run.seed) for run in runs] == [("full", 0), ("full", 1), ("full", 2), ("no-alignment", 0),
                                                     ("no-alignment", 1)]
    assert next(run for run in runs if run.row == "no-alignment" and run.seed == 1).metrics["nway_top1"] == 0.80
    assert math.isnan(runs[0].metrics["probe_top1"])  # absent from the payload: NaN, never 0


def test_summary_is_mean_and_sample_std_over_seeds():
    table = summarize(collect(payload()))
    full, no_alignment = table
    assert (full["row"].name, full["n"], full["seeds"]) == ("full", 3, [0, 1, 2])
    assert full["nway_top1"][0] == pytest.approx(0.5)
    assert full["nway_top1"][1] == pytest.approx(np.std([0.4, 0.5, 0.6], ddof=1))
    assert no_alignment["nway_top1"] == pytest.approx((0.75, np.std([0.7, 0.8], ddof=1)))
    assert full["val_nway_top1"][0] == pytest.approx(0.51)


def test_report_gives_paired_differences_and_says_plainly_where_a_row_contradicts_the_paper():
    table = summarize(collect(payload()))
    no_alignment = table[1]
    interval = paired(table, no_alignment, "nway_top1")  # seeds 0, 1: 0.7 - 0.4, 0.8 - 0.5
    assert (interval.n, interval.mean) == (2, pytest.approx(0.3)) and interval.excludes_zero
    assert paired(table, table[0], "nway_top1") is None  # full is the reference itself
    found = verdicts(table)
    assert found["supports"] == [] and found["unresolved"] == []
    assert found["contradicts"] == ["`no-alignment` - full: +0.300 [+0.300, +0.300] * over 2 seeds (paper: 28.3% vs 45.8%)"]
    text = markdown(table, common_settings(collect(payload())))
    assert "| full | " in text and "| - | 3 (0, 1, 2) | 0.500 ± 0.100 | - | 0.510 ± 0.100 | - |" in text
    assert "| `full` | 2 (0, 1) | 0.750 ± 0.071 | +0.300 [+0.300, +0.300] * |" in text and "45.8%" in text
    assert "Contradicts the paper (above full, interval excludes 0): `no-alignment`" in text
    assert "`finetune.epochs=4`, `finetune.val_every=5`" in text  # what every run set, found in the params
    assert "Not the finished 5-seed, default-schedule queue" in text and "rows not run yet: no-pretraining" in text
    assert "| labels-10-no-pretraining | 10% of train trials; encoder randomly initialised | `labels-10-full` | not run yet" in text


def test_an_interval_including_zero_is_reported_as_unresolved():
    runs = [experiment(f"abl-full-s{s}", s, v) for s, v in enumerate([0.4, 0.5, 0.6])]
    runs += [experiment(f"abl-mask-0.5-s{s}", s, v) for s, v in enumerate([0.45, 0.45, 0.65])]
    table = summarize(collect([{**payload()[1], "experiments": runs}]))
    found = verdicts(table)  # differences +0.05, -0.05, +0.05: mean 0.017, interval includes 0
    assert found["contradicts"] == [] and found["unresolved"][0].startswith("`mask-0.5` - full: +0.017 [")


def test_report_with_the_full_row_alone_compares_nothing():
    table = [entry for entry in summarize(collect(payload())) if entry["row"].name == "full"]
    assert "Nothing to compare yet" in markdown(table, {}) and not any(verdicts(table).values())


def test_report_command_writes_markdown_and_png_from_a_payload(tmp_path):
    source = tmp_path / "exp_show.json"
    source.write_text(json.dumps(payload()))
    out = tmp_path / "docs" / "ablation.md"
    out.parent.mkdir()
    assert main(["report", "--payload", str(source), "--out", str(out)]) == 0
    assert out.read_text().startswith("# Ablation")
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["ablation.md", "ablation.png"]  # no temp files left


def test_report_without_ablation_runs_is_an_error_unless_allowed(tmp_path, capsys):
    source = tmp_path / "exp_show.json"
    source.write_text(json.dumps([{"rev": "workspace", "data": {}, "experiments": None}]))
    assert main(["report", "--payload", str(source), "--out", str(tmp_path / "a.md")]) == 2
    assert "no finished ablation experiments" in capsys.readouterr().err
    assert not (tmp_path / "a.md").exists()
    (tmp_path / "a.png").write_bytes(b"old figure")
    assert main(["report", "--payload", str(source), "--out", str(tmp_path / "a.md"), "--allow-empty"]) == 0
    text = (tmp_path / "a.md").read_text()
    assert "The 5-seed, default-schedule queue has not been run yet" in text and "python -m dreamdiffusion.tools.ablation queue" in text
    assert "17 rows x 5 seeds = 85 experiments on the default schedule" in text
    assert not (tmp_path / "a.png").exists()  # a figure of results the page no longer holds is removed


def test_queue_dry_run_names_each_row_and_seed(capsys):
    assert main(["queue", "--dry-run", "--rows", "full", "mask-0.25", "--seeds", "3", "4",
                 "--set", "finetune.epochs=4", "finetune.align_epochs=2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    commands = [line for line in lines if line.startswith("dvc exp run")]
    assert [c.split("-n ")[1] for c in commands] == ["abl-full-s3", "abl-mask-0.25-s3", "abl-full-s4",
                                                     "abl-mask-0.25-s4"]  # seed-major
    assert all("-S finetune.epochs=4" in c and "--queue" in c for c in commands)
    assert "-S pretrain.model.mask_ratio=0.25 " in commands[1] and "-S seed=3 " in commands[1]
    assert "2 rows x 2 seeds = 4 experiments on the default schedule" in lines[0] and "expected CPU time" in lines[0]


def test_queue_runs_every_row_on_five_seeds_with_the_default_schedule_unless_short(capsys):
    assert main(["queue", "--dry-run"]) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("dvc exp run")]
    assert len(commands) == len(ROW_NAMES) * 5 and commands[-1].endswith(f"-n abl-{ROW_NAMES[-1]}-s4")
    assert not any(k in c for c in commands for k in ("pretrain.epochs", "finetune.epochs", "samples_per_eeg", "val_every"))
    budget = next(c for c in commands if "abl-labels-10-no-pretraining-s0" in c)
    for flag in ("-S finetune.train_fraction=0.1 ", "-S finetune.encoder_init=random ",
                 "-S download.synthetic.physiology_blocks=56 ", "-S preprocess.corpus_bandpass=[] ",
                 "-S preprocess.pretrain_sources=[synthetic-physiology, paired-train] "):
        assert flag in budget, flag
    assert main(["queue", "--dry-run", "--short", "--rows", "full", "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    assert "shortened schedule (pretrain.epochs 12" in out
    assert "-S pretrain.epochs=12 -S finetune.epochs=9 -S finetune.align_epochs=8" in out


def test_a_row_keeps_what_defines_it_whatever_is_set_for_all_rows(capsys):
    """--set applies to every row, but not to the keys a row changes: the no-alignment row keeps zero
    alignment weights and no alignment-only epochs (every epoch trains on the diffusion loss)."""
    assert main(["queue", "--dry-run", "--rows", "full", "no-alignment", "--seeds", "0", "--set", "finetune.epochs=9",
                 "finetune.align_epochs=8", "finetune.clip_weight=0.5"]) == 0
    full, no_alignment = [line for line in capsys.readouterr().out.splitlines() if line.startswith("dvc exp run")]
    assert "-S finetune.align_epochs=8 " in full and "-S finetune.clip_weight=0.5 " in full
    for key in ("align_epochs=0", "clip_weight=0.0", "caption_weight=0.0", "epochs=9"):
        assert f"-S finetune.{key} " in no_alignment, key
    assert "align_epochs=8" not in no_alignment and "clip_weight=0.5" not in no_alignment


@pytest.mark.parametrize("argv, culprit", [
    (["--rows", "no-such-row"], "no-such-row"),
    (["--set", "finetune.epoch=4"], "finetune.epoch"),          # a typo'd key
    (["--set", "finetune.epochs=-1"], "finetune.epochs"),       # out of range
    (["--set", "finetune.epochs=4"], "align_epochs 24"),        # inconsistent with the default align_epochs
    (["--set", "noequals"], "noequals"),
    (["--set", "finetune.nway=[&a [1], *a]"], "--set finetune.nway: line 1, column 2: not valid YAML: anchor 'a'"),
    (["--set", "finetune.nway_draws=1000000"], "finetune.nway_draws: value 1000000 is above the maximum 10000"),
])
def test_queue_refuses_bad_rows_and_settings_before_queuing_anything(argv, culprit, capsys):
    assert main(["queue", "--dry-run", *argv]) == 2
    captured = capsys.readouterr()
    assert culprit in captured.err and "dvc exp run" not in captured.out


def test_queue_status_counts_queued_and_running_tasks():
    status = ("Task     Name            Created    Status\n"
              "a4ec717  abl-full-s0     01:07 PM   Success\n"
              "8328033  abl-full-s1     01:07 PM   Running\n"
              "9a1b2c3  abl-no-clip-s0  01:08 PM   Queued\n"
              "7d8e9f0  abl-no-clip-s1  01:08 PM   Failed\n\n"
              "Worker status: 1 active, 0 idle\n")
    assert queue_active(status) == 2
