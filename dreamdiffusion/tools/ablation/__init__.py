"""The paper's ablation (DreamDiffusion, arXiv 2306.16934, Table 2) in miniature, as DVC experiments.

Every row is a set of params overrides on top of params.yaml (plus any `--set` shared by all rows),
run once per seed as a queued `dvc exp run` named `abl-<row>-s<seed>`; every row runs the default
schedule and the same seeds. The report reads `dvc exp show --json` back: per row its mean over seeds
and its paired difference from its reference row (per-seed differences, 95 % t interval; stats.py).

    python -m dreamdiffusion.tools.ablation queue [--seeds 0 1 2 3 4] [--rows full ...] [--short] [--set key=value ...]
    python -m dreamdiffusion.tools.ablation run [-j 1]        # dvc queue start -j N, then wait for the queue
    python -m dreamdiffusion.tools.ablation report            # docs/ablation.md + docs/ablation.png
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the table: what it changes, the paper's 50-way top-1 (%) for it if reported, and the row
    its paired differences are taken from (`reference`; None for `full` itself)."""

    name: str
    description: str
    overrides: dict
    paper_top1: float | None = None
    reference: str | None = "full"
    group: str = "table2"  # table2 (the paper's Table 2) | labels (the label-budget axis)


# The rows change params.yaml's recipe (ours). Its alignment is two losses: the paper's CLIP loss and
# the class-caption loss (beyond the paper), so "no alignment" (the paper's "no CLIP") drops both, and
# with them the alignment-only epochs: every epoch trains on the diffusion loss, as the paper's row does.
NO_ALIGNMENT = {"clip_weight": 0.0, "caption_weight": 0.0, "align_epochs": 0}

ROWS = [
    Row("full", "pretrained encoder, CLIP + caption alignment, mask 0.75, encoder + cross-attention tuned", {}, 45.8),
    Row("no-pretraining", "encoder randomly initialised (alignment kept)",
        {"finetune": {"encoder_init": "random"}}, 32.3),
    Row("no-alignment", "no CLIP or caption alignment loss (pretraining kept)", {"finetune": NO_ALIGNMENT}, 28.3),
    Row("no-pretraining-no-alignment", "neither pretraining nor alignment",
        {"finetune": {"encoder_init": "random", **NO_ALIGNMENT}}, 4.2),
    Row("mask-0.25", "MAE mask ratio 0.25", {"pretrain": {"model": {"mask_ratio": 0.25}}}, 19.7),
    Row("mask-0.5", "MAE mask ratio 0.5", {"pretrain": {"model": {"mask_ratio": 0.5}}}, 38.3),
    Row("mask-0.85", "MAE mask ratio 0.85", {"pretrain": {"model": {"mask_ratio": 0.85}}}, 33.4),
    Row("encoder-only", "only the EEG encoder tuned (UNet cross-attention frozen)",
        {"finetune": {"train_unet": "none"}}, 22.4),
    Row("encoder-small", "encoder width 32, depth 2 (default 64 x 4)",
        {"pretrain": {"model": {"width": 32, "depth": 2, "heads": 2}}}),
]
ROWS[0] = dataclasses.replace(ROWS[0], reference=None)

# The label-budget rows pretrain the MAE on the corpus that shares the paired EEG's physiology (download/
# synthetic_physiology.py) plus the paired train trials, as the paper pretrains on unlabeled EEG and then
# fine-tunes on few labelled trials. 56 blocks of 25 s per subject: 4 subjects x 56 blocks x 56 windows =
# 12,544 windows, 10.0x the 1,254 paired train windows. The paired windows are 440 ms stretched to 512
# samples (preprocess crop 20..460, linear resampling), so the corpus is resampled to 1000 x 512 / 440 Hz
# to give its windows the same time scale; neither is band-passed (preprocess.bandpass is [] for the
# paired EEG); every window of a block is kept.
PHYSIOLOGY_BLOCKS = 56
PHYSIOLOGY_CORPUS = {
    "download": {"synthetic": {"physiology_blocks": PHYSIOLOGY_BLOCKS}},
    "preprocess": {"pretrain_sources": ["synthetic-physiology", "paired-train"], "corpus_bandpass": [],
                   "corpus_max_windows": 0, "corpus_sample_rate": 1000.0 * 512 / 440},
}
BUDGETS = (10, 25, 50, 100)  # % of each class's train trials (finetune.train_fraction)


def budget_rows() -> list[Row]:
    """`full` and `no-pretraining` at each label budget, both pretrained on the physiology corpus: the
    no-pretraining row is compared with the full one at its budget; a smaller budget's full row with
    the 100 % one; the 100 % full row with `full` (what the corpus changes)."""
    rows = []
    for percent in BUDGETS:
        budget = {**PHYSIOLOGY_CORPUS, "finetune": {"train_fraction": percent / 100}}
        full = f"labels-{percent}-full"
        rows += [Row(full, f"{percent}% of train trials; MAE on physiology corpus + paired train", budget,
                     reference="full" if percent == 100 else f"labels-{BUDGETS[-1]}-full", group="labels"),
                 Row(f"labels-{percent}-no-pretraining", f"{percent}% of train trials; encoder randomly initialised",
                     {**budget, "finetune": {"train_fraction": percent / 100, "encoder_init": "random"}},
                     reference=full, group="labels")]
    return rows


ROWS += budget_rows()
ROW_NAMES = [row.name for row in ROWS]
PREFIX = "abl-"


def experiment_name(row: str, seed: int) -> str:
    """The DVC experiment name of `row` at `seed`."""
    return f"{PREFIX}{row}-s{seed}"


def parse_name(name: str | None) -> tuple[str, int] | None:
    """(row, seed) of an ablation experiment name; None for any other name."""
    if not name or not name.startswith(PREFIX) or "-s" not in name:
        return None
    row, _, seed = name[len(PREFIX):].rpartition("-s")
    return (row, int(seed)) if row in ROW_NAMES and seed.isdigit() else None
