"""Save the fine-tuned model; load it for generation with one call.

    <dir>/conditioner/config.json + model.safetensors   the EEG conditioning module
    <dir>/unet/                                       the trained UNet (diffusers folder), when
                                                      `train_unet` is not `none`
    <dir>/vae/, <dir>/scheduler/                      only in an imported official checkpoint: its own
                                                      VAE and noise schedule replace the foundation's
    <dir>/finetune.json                               what was trained, the kept epoch
    <dir>/manifest.json                               sha256 of every file (written last, checked on load)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dreamdiffusion.core.config import ConfigError, parse_config, to_dict
from dreamdiffusion.core.fileio import DataError, atomic_path, cpu_state_dict, verify_manifest, write_manifest
from dreamdiffusion.finetune.model import ConditionerConfig, EEGConditioner


def save_finetuned(out_dir: str | Path, conditioner: EEGConditioner, unet, info: dict) -> None:
    """Write the conditioner (and the UNet when it was trained) and, last, the manifest, atomically."""
    with atomic_path(out_dir) as tmp:
        (tmp / "conditioner").mkdir(parents=True)
        state = cpu_state_dict(conditioner)
        save_file(state, str(tmp / "conditioner" / "model.safetensors"))
        (tmp / "conditioner" / "config.json").write_text(json.dumps(to_dict(conditioner.config), indent=2) + "\n")
        if info.get("train_unet", "none") != "none":
            unet.save_pretrained(tmp / "unet", safe_serialization=True)
        (tmp / "finetune.json").write_text(json.dumps(info, indent=2) + "\n")
        write_manifest(tmp)


def load_conditioner(folder: str | Path, device="cpu") -> EEGConditioner:
    """The conditioning module saved by `save_finetuned` (eval mode); `load_generator` checks the
    folder's manifest before it calls this."""
    folder = Path(folder)
    try:
        cfg = parse_config(ConditionerConfig, json.loads((folder / "config.json").read_text()), str(folder / "config.json"))
        state = load_file(str(folder / "model.safetensors"))
    except FileNotFoundError as err:
        raise DataError(f"{folder}: missing {Path(err.filename).name}; run the `finetune` stage") from None
    except (json.JSONDecodeError, ConfigError) as err:
        raise DataError(f"{folder / 'config.json'}: not a conditioner config ({err})") from None
    conditioner = EEGConditioner(cfg)
    try:
        conditioner.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise DataError(f"{folder / 'model.safetensors'}: does not match its config ({str(err).splitlines()[0]})") from None
    return conditioner.to(device).eval()


@dataclass
class EEGImageGenerator:
    """Everything generation needs: conditioner, UNet, VAE, the noise schedule, the foundation."""

    conditioner: EEGConditioner
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler_config: dict
    foundation: object
    info: dict

    @torch.no_grad()
    def images(self, eeg: torch.Tensor, seeds: list[int], scheduler: str = "ddim", steps: int = 25,
               guidance: float = 3.0, decode_batch: int | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] (on the CPU) from EEG (B, 128, 512), one seed per image."""
        from dreamdiffusion.finetune.sample import images_from_eeg, make_scheduler

        return images_from_eeg(self.conditioner, self.unet, self.vae, make_scheduler(scheduler, self.scheduler_config),
                        eeg, seeds, steps, guidance, decode_batch).cpu()

    @torch.no_grad()
    def clip_embeds(self, eeg: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """The conditioner's CLIP-space embedding of each EEG trial (B, E), unit norm."""
        device = next(self.conditioner.parameters()).device
        out = [self.conditioner(eeg[i : i + batch].to(device)).clip.float() for i in range(0, len(eeg), batch)]
        return torch.nn.functional.normalize(torch.cat(out), dim=-1).cpu()


def load_generator(finetune_dir: str | Path, foundation_dir: str | Path, device="cpu",
                   parts=("stable_diffusion",)) -> EEGImageGenerator:
    """One call: the fine-tuned model on top of the foundation models it was trained with (only the
    foundation `parts` asked for: e.g. ('clip', 'judge') to score images without the UNet and VAE).
    Both folders are checked against their manifests first (see `verify_manifest` for the cost)."""
    from diffusers import UNet2DConditionModel

    from dreamdiffusion.foundation.load import load_foundation

    finetune_dir = Path(finetune_dir)
    verify_manifest(finetune_dir, "finetune")
    if not (finetune_dir / "finetune.json").is_file():
        raise DataError(f"{finetune_dir / 'finetune.json'}: missing; run the `finetune` stage")
    info = json.loads((finetune_dir / "finetune.json").read_text())
    foundation = load_foundation(foundation_dir, device, parts)
    if foundation.unet is not None and (finetune_dir / "unet").is_dir():
        foundation.unet = None  # the fine-tuned UNet replaces the foundation's: one copy in memory
        foundation.unet = UNet2DConditionModel.from_pretrained(finetune_dir / "unet").to(device).eval()
    if foundation.vae is not None and (finetune_dir / "vae").is_dir():  # an imported checkpoint's own VAE
        from diffusers import AutoencoderKL

        foundation.vae = None  # one VAE in memory, as for the UNet
        foundation.vae = AutoencoderKL.from_pretrained(finetune_dir / "vae").to(device).eval()
    conditioner = load_conditioner(finetune_dir / "conditioner", device)
    return EEGImageGenerator(conditioner, foundation.unet, foundation.vae, scheduler_config(finetune_dir, foundation),
                             foundation, info)


def scheduler_config(finetune_dir: Path, foundation) -> dict:
    """The noise schedule: an imported checkpoint's own (scheduler/), else the foundation's."""
    own = finetune_dir / "scheduler" / "scheduler_config.json"
    if own.is_file():
        try:
            return json.loads(own.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{own}: not JSON ({err})") from None
    return dict(foundation.scheduler.config) if foundation.scheduler is not None else {}
