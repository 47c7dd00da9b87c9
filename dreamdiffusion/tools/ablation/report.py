"""Assemble the ablation table from `dvc exp show --json`: per row mean +- std over seeds and paired differences."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from dreamdiffusion.tools.ablation import ROWS, parse_name
from dreamdiffusion.tools.ablation.stats import Interval, format_interval, paired_interval

# column -> (metrics file, dotted key): the headline files the stages write.
METRICS = {
    "nway_top1": ("metrics/eval.json", "nway_top1"),
    "control_nway_top1": ("metrics/eval.json", "controls.nway_top1"),
    "clip_2way": ("metrics/eval.json", "clip_2way"),
    "eeg_top1": ("metrics/eval.json", "eeg_top1"),
    "val_nway_top1": ("metrics/finetune.json", "val_nway_top1"),
    "probe_top1": ("metrics/pretrain.json", "probe_top1"),
}


@dataclasses.dataclass(frozen=True)
class Run:
    """One finished ablation experiment."""

    row: str
    seed: int
    timestamp: str
    metrics: dict[str, float]
    changed: dict[str, object]  # dotted params that differ from the baseline commit's params.yaml


def _lookup(tree: dict, dotted: str) -> float:
    """`tree[a][b]` for 'a.b'; NaN when any part is missing."""
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return math.nan
        tree = tree[part]
    return float(tree) if isinstance(tree, (int, float)) else math.nan


def _metrics(data: dict) -> dict[str, float]:
    """The METRICS columns of one experiment's `data` entry."""
    files = data.get("metrics") or {}
    return {column: _lookup((files.get(path) or {}).get("data") or {}, key) for column, (path, key) in METRICS.items()}


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """Dotted keys of every leaf of nested params."""
    out = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def _params(data: dict) -> dict[str, object]:
    """The flattened params.yaml of one `data` entry."""
    return flatten(((data.get("params") or {}).get("params.yaml") or {}).get("data") or {})


def collect(payload: list[dict]) -> list[Run]:
    """Successful ablation experiments in a `dvc exp show --json` payload; the newest run per (row, seed)."""
    newest: dict[tuple[str, int], Run] = {}
    for baseline in payload:
        base = _params(baseline.get("data") or {})
        for experiment in baseline.get("experiments") or []:
            state = (experiment.get("executor") or {}).get("state", "success")
            for rev in experiment.get("revs") or []:
                parsed = parse_name(rev.get("name"))
                if parsed is None or rev.get("error") or state != "success":
                    continue
                data = rev.get("data") or {}
                changed = {key: value for key, value in _params(data).items() if base.get(key) != value}
                run = Run(*parsed, data.get("timestamp") or "", _metrics(data), changed)
                if parsed not in newest or run.timestamp > newest[parsed].timestamp:
                    newest[parsed] = run
    return sorted(newest.values(), key=lambda run: (run.row, run.seed))


def summarize(runs: list[Run]) -> list[dict]:
    """Per row (table order) with runs: N, seeds, every column's value per seed, mean and sample std (ddof 1)."""
    table = []
    for row in ROWS:
        mine = [run for run in runs if run.row == row.name]
        if not mine:
            continue
        entry = {"row": row, "n": len(mine), "seeds": [run.seed for run in mine],
                 "by_seed": {column: {run.seed: run.metrics[column] for run in mine} for column in METRICS}}
        for column in METRICS:
            values = np.array([run.metrics[column] for run in mine], dtype=float)
            values = values[np.isfinite(values)]
            entry[column] = (float(values.mean()) if len(values) else math.nan,
                             float(values.std(ddof=1)) if len(values) > 1 else math.nan)
        table.append(entry)
    return table


def reference_entry(table: list[dict], entry: dict) -> dict | None:
    """The table entry of `entry`'s reference row (None when it has none or that row has no runs)."""
    return next((e for e in table if e["row"].name == entry["row"].reference), None)


def paired(table: list[dict], entry: dict, column: str, method: str = "t") -> Interval | None:
    """The paired difference of `column` from the reference row on their common seeds, with its 95 % interval."""
    reference = reference_entry(table, entry)
    if reference is None:
        return None
    return paired_interval(entry["by_seed"][column], reference["by_seed"][column], method)


def verdicts(table: list[dict], method: str = "t") -> dict[str, list[str]]:
    """Rows the paper reports below the full model, sorted by what the paired test top-1 interval says:
    supports (below full, interval excludes 0), contradicts (above, excludes 0), unresolved (includes 0)."""
    out: dict[str, list[str]] = {"supports": [], "contradicts": [], "unresolved": []}
    for entry in table:
        row = entry["row"]
        interval = paired(table, entry, "nway_top1", method) if row.paper_top1 is not None else None
        if row.reference != "full" or interval is None or interval.n < 2:
            continue
        verdict = "unresolved" if not interval.excludes_zero else "supports" if interval.high < 0 else "contradicts"
        out[verdict].append(f"`{row.name}` - full: {format_interval(interval)} over {interval.n} seeds "
                            f"(paper: {row.paper_top1}% vs 45.8%)")
    return out


def _cell(value: tuple[float, float]) -> str:
    """'mean +- std' (std shown as - for a single seed)."""
    mean, std = value
    if math.isnan(mean):
        return "-"
    return f"{mean:.3f} ± {std:.3f}" if not math.isnan(std) else f"{mean:.3f} ± -"


def common_settings(runs: list[Run]) -> dict[str, object]:
    """Params every run changed the same way (what `queue --set` gave every row), seed excluded."""
    common = dict(runs[0].changed) if runs else {}
    for run in runs[1:]:
        common = {key: value for key, value in common.items() if run.changed.get(key, object()) == value}
    return {key: common[key] for key in sorted(common) if key != "seed"}


def figure(table: list[dict], path: Path) -> None:
    """Bars of mean top-1 +- std per row (ours) beside the paper's numbers."""
    import matplotlib.pyplot as plt

    table = [entry for entry in table if entry["row"].group == "table2"] or table
    names = [f"{entry['row'].name} (N={entry['n']})" for entry in table]
    means = [entry["nway_top1"][0] for entry in table]
    stds = [0.0 if math.isnan(entry["nway_top1"][1]) else entry["nway_top1"][1] for entry in table]
    paper = [entry["row"].paper_top1 / 100 if entry["row"].paper_top1 is not None else math.nan for entry in table]
    fig, (ours, theirs) = plt.subplots(1, 2, figsize=(11, 0.45 * len(names) + 1.5), sharey=True)
    y = np.arange(len(names))
    ours.barh(y, means, xerr=stds, color="tab:blue", capsize=3)
    ours.axvline(0.1, color="grey", linestyle="--", label="chance (10-way)")
    ours.set(yticks=y, yticklabels=names, xlabel="10-way top-1 (mean ± std over seeds)", title="this ablation")
    ours.invert_yaxis()
    ours.legend(loc="lower right")
    theirs.barh(y, paper, color="tab:orange")
    theirs.axvline(0.02, color="grey", linestyle="--", label="chance (50-way)")
    theirs.set(xlabel="50-way top-1", title="DreamDiffusion Table 2")
    theirs.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
