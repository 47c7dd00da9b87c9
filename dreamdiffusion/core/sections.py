"""The one registry of params.yaml: each section -> the typed config it parses into, and the sections
each stage reads. Stage scripts, presets and the dvc.yaml check all read it from here.

Config classes are named as "module:Class" and imported on demand, so a stage's import closure (its
DVC code deps) holds only its own config, not every stage's.
"""
from __future__ import annotations

import importlib

CONFIGS = {
    "tracking": "dreamdiffusion.core.tracking:TrackingConfig",
    "compute": "dreamdiffusion.core.compute:ComputeConfig",
    "download": "dreamdiffusion.download.config:DownloadConfig",
    "preprocess": "dreamdiffusion.preprocess.config:PreprocessConfig",
    "foundation": "dreamdiffusion.foundation.config:FoundationConfig",
    "pretrain": "dreamdiffusion.pretrain.config:PretrainConfig",
    "finetune": "dreamdiffusion.finetune.config:FinetuneConfig",
    "generate": "dreamdiffusion.generate.config:GenerateConfig",
    "evaluate": "dreamdiffusion.evaluate.config:EvaluateConfig",
}
STAGES = ("download", "preprocess", "foundation", "pretrain", "finetune", "generate", "evaluate")
# The sections each stage reads besides its own (dvc.yaml lists the same as its params).
SHARED = {"download": ("seed", "tracking"), "preprocess": ("tracking",)}
DEFAULT_SHARED = ("seed", "tracking", "compute")


def config_class(section: str) -> type:
    """The typed config of a params section (`seed` is a plain int)."""
    if section == "seed":
        return int
    module, _, name = CONFIGS[section].partition(":")
    return getattr(importlib.import_module(module), name)


def stage_sections(stage: str) -> tuple[str, ...]:
    """The params sections `stage` reads: the shared ones, then its own."""
    return (*SHARED.get(stage, DEFAULT_SHARED), stage)


def stage_params(stage: str) -> dict:
    """Section -> config class for every section `stage` reads (what `run_stage` parses)."""
    return {section: config_class(section) for section in stage_sections(stage)}


def section_configs() -> dict:
    """Every params section (not `seed`) and the typed config it parses into."""
    return {section: config_class(section) for section in CONFIGS}
