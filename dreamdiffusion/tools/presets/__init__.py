"""Presets: named sets of params that must change together, applied in one command.

A preset is a partial params file (`<name>.yaml` in this folder, or any path): nested sections
are merged into params.yaml key by key, lists and scalars replace. Two ways to apply one:

    python -m dreamdiffusion.tools.presets apply real          # rewrite params.yaml (comments kept), then `dvc repro`
    python -m dreamdiffusion.tools.presets run real [-- ...]   # `dvc exp run -S key=value ...`: a DVC experiment

Both validate the merged params against every stage's typed config first, so a preset that does
not fit the code fails before anything runs.
"""
from __future__ import annotations

from pathlib import Path

from dreamdiffusion.core.config import ConfigError, load_params_document

FOLDER = Path(__file__).parent


def preset_path(name: str) -> Path:
    """`name` as a preset of this folder, or a path to a preset file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    path = FOLDER / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"preset {name!r}: no file {path} (presets: {', '.join(available())})")
    return path


def available() -> list[str]:
    """Names of the presets shipped here."""
    return sorted(p.stem for p in FOLDER.glob("*.yaml"))


def load_preset(name: str) -> dict:
    """The overrides of a preset, as nested dicts (read as a params file: known sections only)."""
    return load_params_document(preset_path(name))


def merge(base: dict, overrides: dict, where: str = "") -> dict:
    """`base` updated by `overrides` key by key (a new dict); an override of a key params.yaml lacks is an error."""
    out = dict(base)
    for key, value in overrides.items():
        name = f"{where}{key}"
        if key not in base:
            raise ConfigError(f"preset key {name!r} is not in params.yaml (a typo, or a param that was renamed)")
        out[key] = merge(base[key], value, name + ".") if isinstance(value, dict) and isinstance(base[key], dict) else value
    return out


def leaves(overrides: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Dotted keys and values of every leaf of a nested override dict."""
    out = []
    for key, value in overrides.items():
        if isinstance(value, dict) and value:
            out += leaves(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def validate(params: dict) -> None:
    """Parse every stage's params sections out of `params` (as the stages will)."""
    from dreamdiffusion.core.config import parse_config
    from dreamdiffusion.core.sections import section_configs

    for section, cls in section_configs().items():
        parse_config(cls, params.get(section), section)
