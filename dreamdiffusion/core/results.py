"""What stages report: the `StageResult` every library `run` returns, and the headline metrics.

Headline metrics: the few numbers of each stage that people compare across experiments.

Every stage writes its full report (counts per split and class, timings, sizes, the settings
behind each number) to a details file, and the headline subset chosen here to its metrics file:
the only files DVC declares as metrics, so `dvc metrics show` and `dvc exp show` stay a table
of about 20 columns. The same headline goes to the parent MLflow run of a pipeline execution.

    python -m dreamdiffusion.core.results metrics   # split full reports written before the split existed
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from dreamdiffusion.core.fileio import write_json


@dataclass
class StageResult:
    """Metrics (logged to MLflow by the stage) and written files to log as artifacts ((file, folder) pairs)."""

    metrics: dict = field(default_factory=dict)
    artifacts: list[tuple[Path, str | None]] = field(default_factory=list)

    def numeric(self) -> dict:
        """The metrics that are numbers (what MLflow takes); nested dicts are kept for flattening."""
        return {k: v for k, v in self.metrics.items()
                if isinstance(v, dict) or (isinstance(v, (int, float)) and not isinstance(v, bool))}


HEADLINE: dict[str, tuple[str, ...]] = {
    "preprocess": ("trials_kept", "corpus_windows"),
    "foundation": ("caption_to_image_acc", "vae_psnr", "clip_zeroshot_acc"),
    "pretrain": ("val_mse", "probe_top1", "probe_top1_random_init"),
    "finetune": ("val_nway_top1", "val_loss"),
    "evaluate": ("nway_top1", "nway_top5", "controls.nway_top1", "clip_2way", "controls.clip_2way",
                 "clip_similarity", "ssim", "pixcorr", "eeg_top1", "eeg_top5", "fid", "is_mean", "kid_mean",
                 "retrieval.top1", "retrieval.shuffled.top1"),
}
FILE_STEMS = {"preprocess": "preprocess", "foundation": "foundation", "pretrain": "pretrain",
              "finetune": "finetune", "evaluate": "eval"}


def metrics_path(stage: str, folder: Path = Path("metrics")) -> Path:
    """The declared DVC metrics file of `stage` (headline only)."""
    return folder / f"{FILE_STEMS[stage]}.json"


def details_path(stage: str, folder: Path = Path("metrics")) -> Path:
    """The full report of `stage` (a plain output, not a DVC metric)."""
    return folder / f"{FILE_STEMS[stage]}_details.json"


def headline(stage: str, report: dict) -> dict:
    """The headline keys of `report` that it has (dotted keys stay nested, as in the report)."""
    out: dict = {}
    for key in HEADLINE[stage]:
        *parents, leaf = key.split(".")
        source, target = report, out
        for part in parents:
            source = source.get(part, {}) if isinstance(source, dict) else {}
            target = target.setdefault(part, {})
        if isinstance(source, dict) and leaf in source:
            target[leaf] = source[leaf]
    return prune_empty(out)


def prune_empty(tree: dict) -> dict:
    """`tree` without the (nested) dicts that hold nothing."""
    pruned = {k: prune_empty(v) if isinstance(v, dict) else v for k, v in tree.items()}
    return {k: v for k, v in pruned.items() if v != {}}


def flatten_headline(found: dict, prefix: str = "") -> dict:
    """A headline dict with dotted keys (`controls.nway_top1`), as DVC and MLflow name them."""
    flat = {}
    for key, value in found.items():
        if isinstance(value, dict):
            flat.update(flatten_headline(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def write_headline(stage: str, details: Path, metrics: Path) -> dict:
    """Write the headline of the full report at `details` to `metrics` (atomically); return it."""
    found = headline(stage, json.loads(details.read_text()))
    write_json(metrics, found)
    return found


def split_reports(folder: Path) -> list[str]:
    """Turn full reports named like metrics files (from before the split) into details + headline files."""
    done = []
    for stage in HEADLINE:
        metrics, details = metrics_path(stage, folder), details_path(stage, folder)
        if metrics.is_file() and not details.is_file():
            write_json(details, json.loads(metrics.read_text()))
            write_headline(stage, details, metrics)
            done.append(stage)
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, nargs="?", default=Path("metrics"))
    args = parser.parse_args(argv)
    print("split:", ", ".join(split_reports(args.folder)) or "nothing to split")


if __name__ == "__main__":
    main()
