"""`python -m dreamdiffusion.tools.ablation {rows,queue,run,report}`: the paper's ablation as DVC experiments."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from dreamdiffusion.core.config import ConfigError, load_params_document
from dreamdiffusion.core.fileio import atomic_path
from dreamdiffusion.core.nested import merge_nested
from dreamdiffusion.tools.ablation import ROWS
from dreamdiffusion.tools.ablation.cost import queue_seconds
from dreamdiffusion.tools.ablation.queue import (
    DEFAULT_SEEDS,
    SHORT,
    SHORT_NOTE,
    dvc,
    parse_sets,
    queue_plan,
    select_rows,
    wait_for_queue,
)
from dreamdiffusion.tools.presets.__main__ import exp_run_command
from dreamdiffusion.tools.ablation.markdown import markdown
from dreamdiffusion.tools.ablation.report import collect, common_settings, figure, summarize


def estimate(rows: list, seeds: list[int], plan: list[tuple[str, dict]], params: dict, short: bool) -> str:
    """The queue's expected CPU time: rows x seeds x measured per-run seconds (cost.py)."""
    total, reused = queue_seconds([overrides for _, overrides in plan], params)
    schedule = f"a shortened schedule ({SHORT_NOTE})" if short else "the default schedule (params.yaml)"
    return (f"{len(rows)} rows x {len(seeds)} seeds = {len(plan)} experiments on {schedule}; expected CPU time on "
            f"2 idle cores, one worker: {total / 3600:.1f} h running every stage of every run "
            f"({total / max(len(plan), 1):.0f} s per run on average), {reused / 3600:.1f} h where DVC's run cache "
            f"restores the stages a run shares with an earlier one of its seed (e.g. one pretraining per seed for "
            f"all label-budget rows)")


def queue(args) -> int:
    """Queue every selected row x seed (nothing is queued when one of them does not validate); print the
    queue's expected CPU time first."""
    rows, params = select_rows(args.rows), load_params_document(args.params)
    extra = merge_nested(SHORT, parse_sets(args.set)) if args.short else parse_sets(args.set)
    plan = queue_plan(rows, args.seeds, extra, params)
    print(f"[ablation] {estimate(rows, args.seeds, plan, params, args.short)}", flush=True)
    for name, overrides in plan:
        command = exp_run_command(overrides, ["--queue", "-n", name])
        print(" ".join(command), flush=True)
        if not args.dry_run and subprocess.run([dvc(), *command[1:]]).returncode != 0:
            return 1
    print(f"[ablation] {len(plan)} experiments {'to queue' if args.dry_run else 'queued'}; "
          f"next: python -m dreamdiffusion.tools.ablation run -j N")
    return 0


def run(args) -> int:
    """Start `-j` DVC queue workers and wait until every queued experiment has finished."""
    start = time.perf_counter()
    if subprocess.run([dvc(), "queue", "start", "-j", str(args.jobs)]).returncode != 0:
        return 1
    wait_for_queue(args.poll)
    print(f"[ablation] queue drained in {(time.perf_counter() - start) / 60:.1f} min; "
          f"failed runs: dvc queue status / dvc queue logs <name>")
    return 0


def report(args) -> int:
    """docs/ablation.md and its PNG from `dvc exp show --json` (or a saved payload)."""
    if args.payload:
        payload = json.loads(Path(args.payload).read_text())
    else:
        # -A: experiments of every commit (queued from an earlier commit, they are not HEAD's)
        out = subprocess.run([dvc(), "exp", "show", "--json", "-A"], capture_output=True, text=True, check=True).stdout
        payload = json.loads(out)
    runs = collect(payload)
    table = summarize(runs)
    if not table and not args.allow_empty:
        raise ConfigError("no finished ablation experiments (abl-<row>-s<seed>) in `dvc exp show`: "
                          "queue and run them first (or --allow-empty: the page that says so)")
    params = load_params_document(args.params)
    note = "Expected: " + estimate(ROWS, DEFAULT_SEEDS, queue_plan(ROWS, DEFAULT_SEEDS, {}, params), params, False) + "."
    with atomic_path(args.out) as tmp:
        tmp.write_text(markdown(table, common_settings(runs), note))
    if not table:  # no results: no figure (an older one would show results this page does not hold)
        args.out.with_suffix(".png").unlink(missing_ok=True)
    else:
        with atomic_path(args.out.with_suffix(".png")) as tmp:
            figure(table, tmp)
    print(args.out.read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dreamdiffusion.tools.ablation", description=__doc__)
    commands = parser.add_subparsers(dest="action", required=True)
    commands.add_parser("rows", help="list the rows and what each changes")
    q = commands.add_parser("queue", help="dvc exp run --queue, one experiment per row and seed")
    q.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS, help="every row runs on the same seeds")
    q.add_argument("--rows", nargs="+", help="a subset of the rows (default: all)")
    q.add_argument("--dry-run", action="store_true", help="print the commands only")
    r = commands.add_parser("run", help="dvc queue start -j N and wait for the queue to drain")
    r.add_argument("-j", "--jobs", type=int, default=1)
    r.add_argument("--poll", type=float, default=30.0, help="seconds between queue checks")
    p = commands.add_parser("report", help="docs/ablation.md + .png from dvc exp show --json")
    p.add_argument("--payload", help="a saved `dvc exp show --json` output instead of running it")
    p.add_argument("--out", type=Path, default=Path("docs/ablation.md"))
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="for the queue's expected CPU time")
    p.add_argument("--allow-empty", action="store_true",
                   help="write the page (empty tables, the queue not run) even without finished experiments")
    q.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="params for every row (e.g. a shorter finetune.epochs); the report lists them")
    q.add_argument("--params", type=Path, default=Path("params.yaml"))
    q.add_argument("--short", action="store_true", help=f"a shortened schedule for every row: {SHORT_NOTE}")
    args = parser.parse_args(argv)
    try:
        if args.action == "rows":
            print("\n".join(f"{row.name:24s} {row.description}  {row.overrides}" for row in ROWS))
            return 0
        return {"queue": queue, "run": run, "report": report}[args.action](args)
    except ConfigError as err:
        print(f"ablation: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
