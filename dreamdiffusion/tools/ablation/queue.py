"""Queue the ablation's rows x seeds as DVC experiments and wait for DVC's queue to drain."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from dreamdiffusion.core.config import ConfigError, load_params_document, load_yaml_text
from dreamdiffusion.core.nested import merge_nested
from dreamdiffusion.tools.ablation import ROWS, Row, experiment_name
from dreamdiffusion.tools.presets import merge, validate
from dreamdiffusion.tools.presets.__main__ import exp_run_command

ACTIVE = ("Queued", "Running")
DEFAULT_SEEDS = [0, 1, 2, 3, 4]
# `queue --short`: the shortened schedule of the first (3-seed) ablation run; every other run uses params.yaml's.
SHORT = {"pretrain": {"epochs": 12}, "finetune": {"epochs": 9, "align_epochs": 8, "val_every": 9},
         "generate": {"samples_per_eeg": 1}}
SHORT_NOTE = ("pretrain.epochs 12 (default 32), finetune.epochs 9 of which align_epochs 8 (default 26 and 24), "
              "finetune.val_every 9, generate.samples_per_eeg 1 (default 2)")


def dvc() -> str:
    """The dvc executable: on PATH, else the one installed beside this Python (the project's .venv)."""
    beside = Path(sys.executable).parent / "dvc"
    return shutil.which("dvc") or (str(beside) if beside.exists() else "dvc")


def parse_sets(sets: list[str]) -> dict:
    """`key.sub=value` strings (values parsed as YAML) as one nested overrides dict."""
    out: dict = {}
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. finetune.epochs=4")
        *parents, leaf = key.split(".")
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = load_yaml_text(text, f"--set {key}")
    return out


def row_overrides(row: Row, seed: int, extra: dict) -> dict:
    """Everything one experiment sets: the user's --set, then the row (what defines it wins), the seed."""
    return merge_nested(merge_nested(extra, row.overrides), {"seed": seed})


def queue_plan(rows: list[Row], seeds: list[int], extra: dict, params: dict) -> list[tuple[str, dict]]:
    """(experiment name, overrides) per row and seed, each validated against the configs over the params
    document `params`; seed-major, so that any prefix of the queue that has run covers the rows evenly."""
    plan = []
    for seed in seeds:
        for row in rows:
            overrides = row_overrides(row, seed, extra)
            try:
                validate(merge(params, overrides))
            except ConfigError as err:
                raise ConfigError(f"ablation row {row.name!r} (seed {seed}): {err}") from None
            plan.append((experiment_name(row.name, seed), overrides))
    return plan


def queue_commands(rows: list[Row], seeds: list[int], extra: dict, params_file: Path) -> list[list[str]]:
    """One `dvc exp run --queue -n abl-<row>-s<seed>` per row and seed (see `queue_plan`)."""
    plan = queue_plan(rows, seeds, extra, load_params_document(params_file))
    return [exp_run_command(overrides, ["--queue", "-n", name]) for name, overrides in plan]


def select_rows(names: list[str] | None) -> list[Row]:
    """The rows named (all when None), in table order; an unknown name is an error listing the known ones."""
    known = {row.name: row for row in ROWS}
    unknown = sorted(set(names or []) - set(known))
    if unknown:
        raise ConfigError(f"unknown ablation rows {unknown}: choose from {', '.join(known)}")
    return [row for row in ROWS if names is None or row.name in names]


def queue_active(status_text: str) -> int:
    """How many tasks `dvc queue status` lists as queued or running."""
    return sum(1 for line in status_text.splitlines()[1:] if any(f"  {state}" in line for state in ACTIVE))


def wait_for_queue(poll_seconds: float = 30.0) -> None:
    """Block until DVC's experiment queue holds nothing queued or running; print progress."""
    while True:
        status = subprocess.run([dvc(), "queue", "status"], capture_output=True, text=True, check=True).stdout
        active = queue_active(status)
        print(f"[ablation] {time.strftime('%H:%M:%S')}: {active} experiments queued or running", flush=True)
        if active == 0:
            return
        time.sleep(poll_seconds)
