"""Assemble the ablation table from `dvc exp show --json`: mean +- std over seeds per row."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from dreamdiffusion.tools.ablation import ROWS, parse_name

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
    """Per row (table order) with runs: N, seeds, mean and sample std (ddof 1) of every column."""
    table = []
    for row in ROWS:
        mine = [run for run in runs if run.row == row.name]
        if not mine:
            continue
        entry = {"row": row, "n": len(mine), "seeds": [run.seed for run in mine],
                 "top1_by_seed": {run.seed: run.metrics["nway_top1"] for run in mine}}
        for column in METRICS:
            values = np.array([run.metrics[column] for run in mine], dtype=float)
            values = values[np.isfinite(values)]
            entry[column] = (float(values.mean()) if len(values) else math.nan,
                             float(values.std(ddof=1)) if len(values) > 1 else math.nan)
        table.append(entry)
    return table


def paired_full(table: list[dict], entry: dict) -> float:
    """Mean top-1 of the full row over the seeds `entry` ran (NaN when the full row lacks one)."""
    full = next((e for e in table if e["row"].name == "full"), None)
    if full is None or not set(entry["seeds"]) <= set(full["seeds"]):
        return math.nan
    return float(np.mean([full["top1_by_seed"][seed] for seed in entry["seeds"]]))


def disagreements(table: list[dict]) -> list[str]:
    """Rows the paper found worse than the full model that came out at least as good here, compared
    with the full model on the same seeds (mean top-1)."""
    out = []
    for entry in table:
        row, full = entry["row"], paired_full(table, entry)
        if row.name != "full" and row.paper_top1 is not None and entry["nway_top1"][0] >= full:
            out.append(f"`{row.name}`: {entry['nway_top1'][0]:.3f} >= full {full:.3f} on the same seeds "
                       f"{entry['seeds']}, while the paper has {row.paper_top1}% < 45.8%")
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


def markdown(table: list[dict], settings: dict) -> str:
    """docs/ablation.md: the table, the settings it ran with, and where it disagrees with the paper."""
    lines = ["# Ablation (DreamDiffusion Table 2, in miniature)", "",
             "Generated by `python -m dreamdiffusion.tools.ablation report` from `dvc exp show --json`. Each row is run once "
             "per seed (the seed draws the synthetic world and every training run); cells are mean ± sample std over "
             "seeds. Ours: 10-way top-1 on the test split (chance 0.10); the paper: 50-way top-1 on 40 ImageNet "
             "classes, subject 4 (chance 0.02). Compare orderings, not values.", "",
             "Params every run set the same way (over the commit's params.yaml): "
             + (", ".join(f"`{key}={value}`" for key, value in settings.items()) or "none") + ".", "",
             "| row | what changes | N (seeds) | 10-way top-1 | full, same seeds | control top-1 | CLIP 2-way | "
             "EEG top-1 | val top-1 | MAE probe | paper top-1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for entry in table:
        row = entry["row"]
        paper = f"{row.paper_top1}%" if row.paper_top1 is not None else "n/a"
        cells = [_cell(entry[c]) for c in ("nway_top1",)] + [f"{paired_full(table, entry):.3f}"] + \
                [_cell(entry[c]) for c in ("control_nway_top1", "clip_2way", "eeg_top1", "val_nway_top1", "probe_top1")]
        seeds = ", ".join(str(seed) for seed in entry["seeds"])
        lines.append(f"| {row.name} | {row.description} | {entry['n']} ({seeds}) | " + " | ".join(cells)
                     + f" | {paper} |")
    found = disagreements(table)
    compared = [e["row"].name for e in table if e["row"].name != "full" and e["row"].paper_top1 is not None]
    lines += ["", "## Against the paper", ""]
    if not compared or not any(e["row"].name == "full" for e in table):
        lines.append("- Nothing to compare yet: the full row and at least one row the paper reports are needed.")
    else:
        lines += [f"- Contradicts the paper: {text}." for text in found] or \
                 [f"- Every ablated row the paper reports ({', '.join(compared)}) came out below the full model, "
                  "as in the paper."]
    return "\n".join(lines) + "\n"


def figure(table: list[dict], path: Path) -> None:
    """Bars of mean top-1 +- std per row (ours) beside the paper's numbers."""
    import matplotlib.pyplot as plt

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
