"""The paper's ablation (DreamDiffusion, arXiv 2306.16934, Table 2) in miniature, as DVC experiments.

Every row is a set of params overrides on top of params.yaml (plus any `--set` shared by all rows),
run once per seed as a queued `dvc exp run` named `abl-<row>-s<seed>`. The report reads
`dvc exp show --json` back: mean +- std over seeds per row, N, next to the paper's numbers.

    python -m dreamdiffusion.tools.ablation queue [--seeds 0 1 2] [--rows full mask-0.25 ...] [--set key=value ...]
    python -m dreamdiffusion.tools.ablation run [-j 1]        # dvc queue start -j N, then wait for the queue
    python -m dreamdiffusion.tools.ablation report            # docs/ablation.md + docs/ablation.png
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the table: what it changes and the paper's 50-way top-1 (%) for it, if reported."""

    name: str
    description: str
    overrides: dict
    paper_top1: float | None = None


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
