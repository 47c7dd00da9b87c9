"""The queue's expected CPU time: rows x seeds x the measured seconds of one run, per stage.

A run of the default params takes the stage times measured on 2 idle cores with the portable kernels
(docs/speed.md, `python benchmarks/repro_time.py`) plus DVC's hashing and start-up. A row that pretrains
on the physiology corpus also generates, windows and pretrains on it (measured per block and scaled by
corpus windows); a shortened schedule scales pretraining and fine-tuning by their epochs. DVC's run cache
restores a stage that an earlier run of the same seed already ran with the same upstream params, so the
estimate is given both without reuse and with the reuse DVC can make.
"""
from __future__ import annotations

import json

from dreamdiffusion.core.nested import merge_nested

STAGES = ("download", "preprocess", "foundation", "pretrain", "finetune", "generate", "evaluate")
DEFAULT_STAGE_SECONDS = {"download": 14, "preprocess": 11, "foundation": 15, "pretrain": 99, "finetune": 141,
                         "generate": 67, "evaluate": 6}
DVC_SECONDS = 48  # per `dvc exp run`: hashing, each stage's Python start-up
PAIRED_TRAIN_WINDOWS = 1254  # the default world's paired train trials (metrics/preprocess.json)
# one 25 s block of the physiology corpus, 1 thread: 0.15 s to simulate and write, 0.27 s to window (measured)
BLOCK_SECONDS = {"download": 0.15, "preprocess": 0.27}
PHYSIOLOGY = "synthetic-physiology"


def physiology_windows(params: dict) -> int:
    """Corpus windows of the physiology corpus that `params` pretrains on (0 when it does not)."""
    synthetic, preprocess = params["download"]["synthetic"], params["preprocess"]
    if PHYSIOLOGY not in preprocess["pretrain_sources"] or not synthetic["physiology_blocks"]:
        return 0
    samples = int(synthetic["physiology_block_seconds"] * preprocess["corpus_sample_rate"])
    per_block = max(0, (samples - preprocess["samples"]) // preprocess["corpus_stride"] + 1)
    if preprocess["corpus_max_windows"]:
        per_block = min(per_block, preprocess["corpus_max_windows"])
    return per_block * synthetic["physiology_blocks"] * synthetic["subjects"]


def stage_seconds(params: dict, defaults: dict) -> dict[str, float]:
    """Expected seconds of each stage of one run of `params` (the whole params document, row applied)."""
    seconds = dict(DEFAULT_STAGE_SECONDS)
    extra = physiology_windows(params)
    blocks = params["download"]["synthetic"]["physiology_blocks"] * params["download"]["synthetic"]["subjects"]
    if extra:
        for stage, per_block in BLOCK_SECONDS.items():
            seconds[stage] += per_block * blocks
    seconds["pretrain"] *= (PAIRED_TRAIN_WINDOWS + extra) / PAIRED_TRAIN_WINDOWS
    for stage in ("pretrain", "finetune"):
        seconds[stage] *= params[stage]["epochs"] / defaults[stage]["epochs"]
    seconds["generate"] *= params["generate"]["samples_per_eeg"] / defaults["generate"]["samples_per_eeg"]
    return seconds


def stage_key(overrides: dict, stage: str) -> str:
    """What a stage's result depends on: the overrides of its section, of every stage section before it, and
    of the shared sections (seed, compute)."""
    upstream = STAGES[: STAGES.index(stage) + 1]
    return json.dumps({key: value for key, value in overrides.items() if key not in STAGES or key in upstream},
                      sort_keys=True)


def queue_seconds(experiments: list[dict], params: dict) -> tuple[float, float]:
    """(seconds with every stage of every run, seconds with DVC's run-cache reuse) of `experiments`
    (each one's overrides, `seed` included) over the params document `params`."""
    total = reused = 0.0
    seen: set[tuple[str, str]] = set()
    for overrides in experiments:
        seconds = stage_seconds(merge_nested(params, overrides), params)
        total += sum(seconds.values()) + DVC_SECONDS
        reused += DVC_SECONDS
        for stage in STAGES:
            key = (stage, stage_key(overrides, stage))
            reused += 0.0 if key in seen else seconds[stage]
            seen.add(key)
    return total, reused
