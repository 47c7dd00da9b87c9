"""Turn an official DreamDiffusion checkpoint into our model folders.

Generation checkpoint (code/dc_ldm/ldm_for_eeg.py `eLDM.finetune`, ddpm.py `full_validation`):
    {'model_state_dict': LatentDiffusion.state_dict(), 'config': config.Config_Generative_Model, 'state': RNG state}
  -> our `models/finetune` folder:
    conditioner/{config.json, model.safetensors}   the EEG conditioner (encoder, token mapper, CLIP head, time path)
    unet/ vae/                                     diffusers folders (the checkpoint's UNet and VAE)
    scheduler/scheduler_config.json                the SD 1.5 noise schedule (the checkpoint's betas, checked)
    finetune.json  official.json                   provenance; the checkpoint's config and sampling settings
    import_report.json                             the mapping: keys mapped / dropped (with reasons) per part
    manifest.json                                  sha256 of every file, written last
Encoder checkpoint (code/sc_mbm/utils.py `save_model`): {'model': MAEforEEG.state_dict(), 'optimizer', 'epoch',
'scaler', 'config': config.Config_MBM_EEG} -> our `models/pretrain` folder (encoder only).
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import torch

from dreamdiffusion.core.config import ConfigError, to_dict
from dreamdiffusion.core.fileio import DataError, atomic_path, sha256_file, write_manifest
from dreamdiffusion.core.stream_safetensors import write_safetensors
from dreamdiffusion.core.unpickle import PlainConfig, load_torch_file
from dreamdiffusion.finetune.model import ConditionerConfig, EEGConditioner
from dreamdiffusion.finetune.official import mapping as m
from dreamdiffusion.pretrain.model import MAEConfig, sincos_positions

# The official pretrains/models/config15.yaml (Stable Diffusion 1.5), the parts the mapping reads.
SD15_LDM = {"model": {"params": {
    "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "scale_factor": 0.18215,
    "unet_config": {"params": {"in_channels": 4, "out_channels": 4, "model_channels": 320,
                               "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4],
                               "num_heads": 8, "transformer_depth": 1, "context_dim": 768}},
    "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": {
        "double_z": True, "z_channels": 4, "in_channels": 3, "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4],
        "num_res_blocks": 2, "attn_resolutions": []}}}}}}
GENERATION_KEYS, ENCODER_KEYS = {"model_state_dict", "config", "state"}, {"model", "optimizer", "epoch", "scaler", "config"}


@dataclasses.dataclass
class GenerationPlan:
    """What an official generation checkpoint becomes: the configs and the key mapping."""

    conditioner: ConditionerConfig
    unet: dict  # UNet2DConditionModel config
    vae: dict  # AutoencoderKL config
    mapping: m.Mapping
    expected: dict[str, dict[str, tuple]]  # part -> target key -> shape


def need(shapes: dict[str, tuple], key: str) -> tuple:
    """The shape of `key`, or a MappingError naming it as missing."""
    if key not in shapes:
        raise m.MappingError(f"{key}: missing from the checkpoint (needed to read the model's shape)")
    return tuple(shapes[key])


def encoder_config(shapes: dict[str, tuple], conf: dict, prefix: str) -> dict:
    """MAEConfig fields of the official encoder under `prefix`, from its weight shapes and the config's num_heads."""
    width, channels, patch = need(shapes, prefix + "patch_embed.proj.weight")  # Conv1d (D, C, patch)
    tokens = need(shapes, prefix + "pos_embed")[1] - 1  # (1, 1+T, D)
    depth = 1 + max((int(k[len(prefix) + 7:].split(".")[0]) for k in shapes if k.startswith(prefix + "blocks.")),
                    default=-1)
    hidden = need(shapes, prefix + "blocks.0.mlp.fc1.weight")[0]
    return dict(channels=channels, samples=tokens * patch, patch=patch, width=width, depth=depth,
                heads=int(conf.get("num_heads", 16)), mlp_ratio=hidden / width)


def conditioner_config(shapes: dict[str, tuple], conf: dict) -> ConditionerConfig:
    """Our conditioner's config for the official cond_stage_model (+ time path), from the weight shapes."""
    time = need(shapes, m.TIME_PREFIX + "2.weight") if conf.get("use_time_cond", True) else None  # (time dim, W)
    try:
        encoder = MAEConfig(**encoder_config(shapes, conf, "cond_stage_model.mae."))
        return ConditionerConfig(
            encoder=to_dict(encoder), encoder_forward="official", mapper="paper", null_condition="zero",
            cond_tokens=need(shapes, "cond_stage_model.channel_mapper.1.weight")[0],
            mapper_hidden=need(shapes, "cond_stage_model.channel_mapper.0.weight")[0],
            cond_width=need(shapes, "cond_stage_model.dim_mapper.weight")[0],
            clip_dim=need(shapes, "cond_stage_model.mapping.fc.weight")[0], time_dim=time[0] if time else 0)
    except (ConfigError, TypeError, ValueError) as err:
        raise m.MappingError(f"the encoder's shapes do not make a valid config: {err}") from None


def diffusers_configs(ldm: dict, img_size: int) -> tuple[dict, dict]:
    """UNet2DConditionModel and AutoencoderKL configs of an LDM config, by diffusers' own functions."""
    from diffusers.loaders.single_file_utils import (
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # `image_size` is deprecated there (still honoured)
        return (create_unet_diffusers_config_from_ldm(ldm, {}, image_size=img_size),
                create_vae_diffusers_config_from_ldm(ldm, {}, image_size=img_size))


def meta_shapes(build) -> dict[str, tuple]:
    """Key -> shape of the state dict of the module `build()` makes, built on the meta device (no memory)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build().state_dict().items()}


def plan_generation(shapes: dict[str, tuple], conf: dict, ldm: dict | None = None) -> GenerationPlan:
    """Map every key of an official generation state dict (shapes only), or raise MappingError naming one."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    if conf.get("global_pool", False):
        raise m.MappingError("config.global_pool is True: only the released global_pool=False model is supported")
    ours, dropped, rest = m.classify(shapes, m.CONDITIONER_RULES, "cond_stage_model.mae.", (m.UNET_PREFIX, m.VAE_PREFIX))
    cond_cfg = conditioner_config(shapes, conf)
    unet_cfg, vae_cfg = diffusers_configs(ldm or SD15_LDM, int(conf.get("img_size", 512)))
    expected = {"conditioner": meta_shapes(lambda: EEGConditioner(cond_cfg)),
                "unet": meta_shapes(lambda: UNet2DConditionModel(**unet_cfg)),
                "vae": meta_shapes(lambda: AutoencoderKL(**vae_cfg))}
    parts = {"conditioner": m.PartMap(ours, {"null": "zeros: the official model has no unconditional condition "
                                                     "(it samples without guidance)"})}
    m.check_shapes("conditioner", ours, expected["conditioner"], shapes, parts["conditioner"].filled, m.CONDITIONER_RULES)
    for part, prefix, convert, cfg in (("unet", m.UNET_PREFIX, convert_ldm_unet_checkpoint, unet_cfg),
                                       ("vae", m.VAE_PREFIX, convert_ldm_vae_checkpoint, vae_cfg)):
        keys = {k: shapes[k] for k in rest if k.startswith(prefix)}
        key_map = m.diffusers_key_map(keys, convert, cfg)
        unused = sorted(set(keys) - set(key_map.values()))
        if unused:
            raise m.MappingError(f"{unused[0]}: unknown {part} key, not used by diffusers' conversion "
                                 f"({len(unused)} such key(s))")
        m.check_shapes(part, key_map, expected[part], shapes, {})
        parts[part] = m.PartMap(key_map)
    return GenerationPlan(cond_cfg, unet_cfg, vae_cfg, m.Mapping(parts, dropped), expected)


def check_schedule(state: dict[str, torch.Tensor], ldm: dict) -> float | None:
    """Max |betas - SD's scaled-linear betas| (None without betas); MappingError if the schedule differs."""
    if "betas" not in state:
        return None
    params = ldm["model"]["params"]
    steps, start, end = params.get("timesteps", 1000), params["linear_start"], params["linear_end"]
    betas = state["betas"].double()
    if betas.shape != (steps,):
        raise m.MappingError(f"betas: shape {tuple(betas.shape)}, expected ({steps},)")
    reference = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float64) ** 2
    gap = float((betas - reference).abs().max())
    if gap > 1e-6:
        raise m.MappingError(f"betas: differ from the scaled-linear {start}..{end} schedule by up to {gap:.3g}")
    return gap


def plain_config(obj: dict, path: Path, kinds: tuple[str, ...]) -> dict:
    """The checkpoint's `config` object as a dict (refused unless it is one of the official config classes)."""
    conf = obj.get("config")
    if conf is None:
        return {}
    if not isinstance(conf, PlainConfig) or conf.qualname.split(".")[-1] not in kinds:
        raise DataError(f"{path}: 'config' is a {type(conf).__name__}, expected {' or '.join(kinds)}")
    return conf.as_dict()


def state_dict_of(obj: dict, key: str, path: Path) -> dict[str, torch.Tensor]:
    """obj[key] as a state dict (str -> tensor), or a DataError naming the first entry that is not."""
    state = obj[key]
    if not isinstance(state, dict):
        raise DataError(f"{path}: '{key}' is a {type(state).__name__}, expected a state dict")
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise DataError(f"{path}: '{key}'[{name!r}] is a {type(value).__name__}, expected a tensor")
    return state


def sampling_settings(conf: dict) -> dict:
    """The paper's sampling settings, from the checkpoint's config: our `generate` params for them."""
    return {"scheduler": "pndm", "steps": int(conf.get("ddim_steps", 250)),
            "samples_per_eeg": int(conf.get("num_samples", 5)), "guidance": 1.0}


def write_diffusers(folder: Path, cls, config: dict, tensors: dict[str, torch.Tensor]) -> None:
    """A diffusers model folder (config.json + diffusion_pytorch_model.safetensors) without building the model."""
    folder.mkdir()
    with torch.device("meta"):
        cls(**config).save_config(folder)
    write_safetensors(folder / "diffusion_pytorch_model.safetensors", tensors)


def write_scheduler(folder: Path, ldm: dict) -> None:
    """The checkpoint's noise schedule as a diffusers scheduler config (SD 1.5's: scaled-linear betas, eps)."""
    from diffusers import DDIMScheduler

    params = ldm["model"]["params"]
    DDIMScheduler(num_train_timesteps=params.get("timesteps", 1000), beta_start=params["linear_start"],
                  beta_end=params["linear_end"], beta_schedule="scaled_linear", prediction_type="epsilon",
                  clip_sample=False, set_alpha_to_one=False, steps_offset=1).save_config(folder)


def part_tensors(part: m.PartMap, state: dict, expected: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """Target key -> the official tensor, reshaped to the target shape (views: nothing copied)."""
    return {target: state[source].reshape(expected[target]) for target, source in part.targets.items()}


def import_generation(obj: dict, path: Path, out: Path, ldm: dict | None, sha256: str | None = None) -> dict:
    """Write the folder for an official generation checkpoint (`sha256`: the file's, when already known);
    returns the mapping report."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    state = state_dict_of(obj, "model_state_dict", path)
    conf = plain_config(obj, path, ("Config_Generative_Model",))
    ldm = ldm or SD15_LDM
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    try:
        plan = plan_generation(shapes, conf, ldm)
        gap = check_schedule(state, ldm)
    except m.MappingError as err:
        raise m.MappingError(f"{path}: {err}") from None
    report = {"kind": "generation", "checkpoint": path.name, **plan.mapping.report(shapes),
              "schedule_max_abs_diff": gap, "ignored": {"state": "the RNG state of the official run"}}
    with atomic_path(out) as tmp:
        (tmp / "conditioner").mkdir(parents=True)
        cond = part_tensors(plan.mapping.parts["conditioner"], state, plan.expected["conditioner"])
        cond["null"] = torch.zeros(plan.expected["conditioner"]["null"])
        write_safetensors(tmp / "conditioner" / "model.safetensors", cond)
        (tmp / "conditioner" / "config.json").write_text(json.dumps(to_dict(plan.conditioner), indent=2) + "\n")
        for part, cls, cfg in (("unet", UNet2DConditionModel, plan.unet), ("vae", AutoencoderKL, plan.vae)):
            write_diffusers(tmp / part, cls, cfg, part_tensors(plan.mapping.parts[part], state, plan.expected[part]))
        write_scheduler(tmp / "scheduler", ldm)
        info = {"train_unet": "official", "source": "official", "checkpoint": path.name,
                "checkpoint_sha256": sha256 or sha256_file(path)}
        (tmp / "finetune.json").write_text(json.dumps(info, indent=2) + "\n")
        official = {"config": conf, "sampling": sampling_settings(conf)}
        (tmp / "official.json").write_text(json.dumps(official, indent=2) + "\n")
        (tmp / "import_report.json").write_text(json.dumps(report, indent=2) + "\n")
        write_manifest(tmp)
    return report


def import_encoder(obj: dict, path: Path, out: Path) -> dict:
    """Write our `pretrain` folder for an official encoder checkpoint (MAEforEEG); returns the mapping report."""
    from dreamdiffusion.pretrain.encoder import save_encoder
    from dreamdiffusion.pretrain.model import EEGEncoder

    state = state_dict_of(obj, "model", path)
    conf = plain_config(obj, path, ("Config_MBM_EEG",))
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    try:
        ours, dropped, _ = m.classify(shapes, m.ENCODER_RULES, "")
        decoder = {"decoder_width": shapes["decoder_embed.weight"][0], "decoder_heads": int(conf.get("decoder_num_heads", 16)),
                   "decoder_depth": len({k.split(".")[1] for k in shapes if k.startswith("decoder_blocks.")})
                   } if "decoder_embed.weight" in shapes else {}
        cfg = MAEConfig(**encoder_config(shapes, conf, ""), **decoder, mask_ratio=float(conf.get("mask_ratio", 0.75)))
        dropped[ours.pop("pos_embed")] = "fixed_positions"
        gap = float((state["pos_embed"] - sincos_positions(cfg.num_tokens, cfg.width)).abs().max())
        if gap > 1e-5:
            raise m.MappingError(f"pos_embed: differs from the fixed sin-cos table by up to {gap:.3g}")
        expected = meta_shapes(lambda: EEGEncoder(cfg))
        m.check_shapes("encoder", ours, expected, shapes, {}, m.ENCODER_RULES)
    except (ConfigError, TypeError, ValueError) as err:
        raise m.MappingError(f"{path}: {err}") from None
    report = {"kind": "encoder", "checkpoint": path.name,
              **m.Mapping({"encoder": m.PartMap(ours)}, dropped).report(shapes), "pos_embed_max_abs_diff": gap}
    encoder = EEGEncoder(cfg)
    encoder.load_state_dict(part_tensors(m.PartMap(ours), state, expected), strict=True)
    save_encoder(out, encoder, {"source": "official", "checkpoint": path.name, "import_report": report})
    return report


def read_ldm_config(path: str | None) -> dict | None:
    """The official LDM yaml (config15.yaml) as a dict (the params loader: 1 MiB at most, no aliases);
    None without a path."""
    if path is None:
        return None
    from dreamdiffusion.core.config import ConfigError, load_yaml_file

    try:
        config = load_yaml_file(path)
    except ConfigError as err:
        raise DataError(str(err)) from None
    if not isinstance(config, dict) or "model" not in config:
        raise DataError(f"{path}: no top-level 'model' section; expected the official config15.yaml")
    return config


def import_checkpoint(path: str | Path, out: str | Path, ldm: dict | None = None, kind: str | None = None,
                      sha256: str | None = None) -> dict:
    """Import an official checkpoint into `out`, atomically; returns the mapping report. `kind` ("generation"
    or "encoder") refuses the other kind before anything is written; `sha256`: the file's, when known."""
    path, out = Path(path), Path(out)
    obj = load_torch_file(path)
    keys = set(obj) if isinstance(obj, dict) else set()
    found = ("generation" if "model_state_dict" in keys and keys <= GENERATION_KEYS
             else "encoder" if "model" in keys and keys <= ENCODER_KEYS else None)
    if found is None:
        raise DataError(f"{path}: top-level keys {sorted(map(str, keys))} are neither a generation checkpoint "
                        f"{sorted(GENERATION_KEYS)} nor an encoder checkpoint {sorted(ENCODER_KEYS)}")
    if kind is not None and found != kind:
        raise DataError(f"{path}: an official {found} checkpoint, not the {kind} checkpoint expected here")
    return import_generation(obj, path, out, ldm, sha256) if found == "generation" else import_encoder(obj, path, out)
