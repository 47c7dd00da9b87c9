"""Save / load the pretrained EEG encoder alone: safetensors weights + its config as json + a sha256 manifest."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from dreamdiffusion.core.config import ConfigError, parse_config, to_dict
from dreamdiffusion.core.fileio import DataError, atomic_path, cpu_state_dict, verify_manifest, write_manifest
from dreamdiffusion.pretrain.model import EEGEncoder, MAEConfig

WEIGHTS = "encoder.safetensors"
CONFIG = "config.json"


def save_encoder(directory: str | Path, encoder: EEGEncoder, extra: dict | None = None) -> None:
    """Write `<directory>/encoder.safetensors`, `config.json` (the MAEConfig, plus `extra`) and, last,
    `manifest.json` (their sha256), atomically."""
    state = cpu_state_dict(encoder)
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        payload = {"model": to_dict(encoder.config), **(extra or {})}
        (tmp / CONFIG).write_text(json.dumps(payload, indent=2) + "\n")
        write_manifest(tmp)


def load_encoder(directory: str | Path, device: str = "cpu") -> tuple[EEGEncoder, MAEConfig]:
    """Rebuild the encoder saved by `save_encoder` (eval mode) and return it with its config; its files
    are checked against the manifest first (a changed byte or a missing file is a DataError naming it)."""
    directory = Path(directory)
    verify_manifest(directory, "pretrain")
    try:
        payload = json.loads((directory / CONFIG).read_text())
        config = parse_config(MAEConfig, payload["model"], f"{directory / CONFIG}:model")
    except FileNotFoundError:
        raise DataError(f"{directory / CONFIG}: missing; is {directory} an encoder saved by `pretrain`?") from None
    except (json.JSONDecodeError, KeyError, TypeError, ConfigError) as err:
        raise DataError(f"{directory / CONFIG}: not a valid encoder config ({err})") from None
    encoder = EEGEncoder(config)
    try:
        state = load_file(str(directory / WEIGHTS), device=device)
        encoder.load_state_dict(state, strict=True)
    except FileNotFoundError:
        raise DataError(f"{directory / WEIGHTS}: missing") from None
    except (RuntimeError, OSError) as err:
        first = str(err).strip().splitlines()[0]
        raise DataError(f"{directory / WEIGHTS}: does not match the config in {CONFIG} ({first})") from None
    return encoder.to(device).eval(), config
