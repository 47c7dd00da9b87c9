"""docs/ablation.md: the status of the queue, the Table 2 rows and the label-budget rows with paired intervals."""
from __future__ import annotations

from dreamdiffusion.tools.ablation import ROWS, Row
from dreamdiffusion.tools.ablation.report import _cell, paired, verdicts
from dreamdiffusion.tools.ablation.stats import format_interval

TITLE = "# Ablation (DreamDiffusion Table 2, in miniature)"
COMMANDS = ("python -m dreamdiffusion.tools.ablation queue      # every row x seeds 0-4, default schedule; "
            "prints the expected CPU time\n"
            "python -m dreamdiffusion.tools.ablation run -j 1   # dvc queue start, wait until the queue is drained\n"
            "python -m dreamdiffusion.tools.ablation report     # this page, from dvc exp show --json")
ARCHIVE = ("An earlier run (3 seeds, a shortened schedule, no paired intervals; finished at commit 90466a3) is "
           "archived, labelled as such, in [ablation-3seed-short.md](ablation-3seed-short.md); its numbers are not "
           "comparable with this page.")
# column -> its name in the tables; the EEG-only columns show whether a decision is made before generation
COLUMNS = {"nway_top1": "test 10-way top-1", "val_nway_top1": "val 10-way top-1", "eeg_top1": "EEG top-1",
           "probe_top1": "MAE probe"}
READING = (
    "Cells are mean ± sample std over seeds; each seed draws its own synthetic world and every training run, and "
    "every row runs on the same seeds. **Δ** is the paired difference from the row named under *vs*: the mean of "
    "the per-seed differences on the seeds both rows ran, with its 95 % interval (Student's t over seeds: mean ± "
    "t(n-1, 0.975) · sd / √n); **\\*** marks an interval that excludes 0, i.e. a difference these seeds resolve. "
    "Test and val top-1 judge generated images (10-way, chance 0.10; the paper: 50-way on 40 ImageNet classes, "
    "chance 0.02: compare orderings, not values); *EEG top-1* (the EEG's CLIP-space embedding against class prototypes, test split) "
    "and *MAE probe* (linear probe of the pretrained encoder, val split) measure the EEG encoder alone, so a reader "
    "sees whether a row differs already in the encoder or only after generation.")


def status(table: list[dict], settings: dict, estimate: str | None) -> list[str]:
    """What has run: rows without runs, seeds per row, and whether the runs used the default schedule."""
    ran = {entry["row"].name: entry for entry in table}
    missing = [row.name for row in ROWS if row.name not in ran]
    seeds = sorted({n for entry in table for n in [entry["n"]]})
    lines = ["## Status", ""]
    if not table:
        lines.append("**The 5-seed, default-schedule queue has not been run yet**: `dvc exp show --json` holds no "
                     "finished `abl-<row>-s<seed>` experiment, so every cell below is empty. Nothing on this page is a "
                     "result.")
    elif missing or min(seeds) < 5 or settings:
        lines.append("**Not the finished 5-seed, default-schedule queue**: "
                     + "; ".join(part for part in [
                         f"seeds per row {seeds}" if min(seeds) < 5 else "",
                         "every run changed " + ", ".join(f"`{k}={v}`" for k, v in settings.items()) if settings else "",
                         f"rows not run yet: {', '.join(missing)}" if missing else ""] if part) + ".")
    else:
        lines.append(f"Every row ran on >= 5 seeds with the default schedule (params.yaml; seeds per row {seeds}).")
    lines += ["", ARCHIVE, "", "Run the queue (one worker on 2 cores; the queue prints its own estimate before queueing):", "",
              "```sh", COMMANDS, "```", ""]
    return lines + ([estimate, ""] if estimate else [])


def row_line(table: list[dict], row: Row, with_paper: bool) -> str:
    """One table line: the row's means and its paired differences (or 'not run yet')."""
    entry = next((e for e in table if e["row"].name == row.name), None)
    vs = f"`{row.reference}`" if row.reference else "-"
    if entry is None:
        cells = ["not run yet"] + ["-"] * (2 * len(COLUMNS) + 1)
    else:
        cells = [f"{entry['n']} ({', '.join(map(str, entry['seeds']))})"]
        for column in COLUMNS:
            interval = paired(table, entry, column)
            cells += [_cell(entry[column]), format_interval(interval) if interval is not None else "-"]
        cells.append(_cell(entry["control_nway_top1"]))
    if with_paper:
        cells.append(f"{row.paper_top1}%" if row.paper_top1 is not None else "n/a")
    return f"| {row.name} | {row.description} | {vs} | " + " | ".join(cells) + " |"


def row_table(table: list[dict], group: str, with_paper: bool) -> list[str]:
    """The markdown table of one group of rows."""
    head = ["row", "what changes", "vs", "N (seeds)"]
    for name in COLUMNS.values():
        head += [name, f"Δ {name} [95 % CI]"]
    head += ["control top-1"] + (["paper top-1"] if with_paper else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + [row_line(table, row, with_paper) for row in ROWS if row.group == group]


def against_paper(table: list[dict]) -> list[str]:
    """Which of the paper's Table 2 orderings the paired test top-1 intervals support, contradict or leave open."""
    found = verdicts(table)
    lines = ["## Against the paper", ""]
    if not any(found.values()):
        return lines + ["- Nothing to compare yet: `full` and a row the paper reports, on >= 2 common seeds."]
    names = {"supports": "Supports the paper (below full, interval excludes 0)",
             "contradicts": "Contradicts the paper (above full, interval excludes 0)",
             "unresolved": "Cannot resolve (interval includes 0)"}
    return lines + [f"- {names[key]}: {text}." for key, texts in found.items() for text in texts]


def markdown(table: list[dict], settings: dict, estimate: str | None = None) -> str:
    """docs/ablation.md from the summarized runs, the settings every run shared, and the queue's estimate."""
    lines = [TITLE, "", "Generated by `python -m dreamdiffusion.tools.ablation report` from `dvc exp show --json`. "
             "The rows, their overrides and the seeds are defined in `dreamdiffusion/tools/ablation/`; every row runs "
             "params.yaml's schedule, changing only what the row names.", ""]
    lines += status(table, settings, estimate)
    lines += ["## How to read the tables", "", READING, "",
              "## Table 2 rows (each compared with `full`)", ""] + row_table(table, "table2", True)
    lines += ["", "## Label budget", "",
              "`full` and `no-pretraining` fine-tuned on 10, 25, 50 and 100 % of each class's train trials "
              "(`finetune.train_fraction`, the same seeded subset for both rows at a seed; val and test untouched). "
              "Both pretrain the MAE on the `synthetic-physiology` corpus (the paired subjects' unlabeled EEG, about "
              "10x the paired train EEG; docs/pretraining.md) plus the paired train trials. Each `no-pretraining` row "
              "is compared with `full` at its budget (the effect of pretraining there); each smaller budget's `full` "
              "with the 100 % one; the 100 % `full` with `full` (what the corpus changes).", ""]
    lines += row_table(table, "labels", False) + [""] + against_paper(table)
    return "\n".join(lines) + "\n"
