"""Strict key mapping from the official checkpoint (the original LDM layout) to our models.

Every key of the checkpoint is either mapped to exactly one target tensor or dropped with a
reason; every target tensor receives a value (or is filled, with a reason); shapes must match.
The UNet and VAE keys go through diffusers' own converters for original Stable Diffusion files
(`diffusers.loaders.single_file_utils.convert_ldm_{unet,vae}_checkpoint`), run on one-element
probe tensors that carry each key's index, so the key map is exact and nothing large is copied.
The EEG conditioner's keys (the official `cond_stage_model` and the UNet's
`time_embed_condtion`, sic) follow the table `CONDITIONER_RULES`.
"""
from __future__ import annotations

import dataclasses
import re
import warnings

import torch

from dreamdiffusion.core.fileio import DataError

UNET_PREFIX, VAE_PREFIX, TIME_PREFIX = "model.diffusion_model.", "first_stage_model.", "model.diffusion_model.time_embed_condtion."
ENCODER_RULES = [  # (official key under the encoder prefix, our EEGEncoder key); {n} a number, {p} weight|bias
    ("patch_embed.proj.{p}", "patch_embed.{p}"), ("cls_token", "cls_token"), ("pos_embed", "pos_embed"),
    *[(f"blocks.{{n}}.{name}.{{p}}", f"blocks.{{n}}.{name}.{{p}}") for name in ("norm1", "norm2", "attn.qkv", "attn.proj")],
    ("blocks.{n}.mlp.fc1.{p}", "blocks.{n}.mlp.0.{p}"), ("blocks.{n}.mlp.fc2.{p}", "blocks.{n}.mlp.2.{p}"),
    ("norm.{p}", "norm.{p}"),
]
CONDITIONER_RULES = [  # (official key, our EEGConditioner key): ldm_for_eeg.py cond_stage_model, openaimodel.py
    *[("cond_stage_model.mae." + a, "encoder." + b) for a, b in ENCODER_RULES],
    ("cond_stage_model.channel_mapper.{n}.{p}", "mapper.channels.{n}.{p}"),
    ("cond_stage_model.dim_mapper.{p}", "mapper.width.{p}"),
    ("cond_stage_model.mapping.maxpool.{p}", "clip_head.0.{p}"), ("cond_stage_model.mapping.fc.{p}", "clip_head.2.{p}"),
    (TIME_PREFIX + "0.{p}", "time_path.0.{p}"), (TIME_PREFIX + "1.{p}", "time_path.1.{p}"),
    (TIME_PREFIX + "2.{p}", "time_path.3.{p}"),  # our time path has a Flatten at index 2
]
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2")
CLIP_TOWER = re.compile(  # transformers CLIPVisionModelWithProjection, under the official `image_embedder.transformer.`
    r"image_embedder\.transformer\.(visual_projection\.weight|vision_model\.(embeddings\.(class_embedding|"
    r"patch_embedding\.weight|position_embedding\.weight|position_ids)|(pre_layrnorm|post_layernorm)\.(weight|bias)|"
    r"encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|layer_norm1|layer_norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias)))")
MAE_DECODER = re.compile(r"(decoder_(embed|pred|norm)\.(weight|bias)|decoder_blocks\.\d+\..+|decoder_pos_embed|"
                         r"nature_img_.+)")
DROP_REASONS = {
    "mask_token": "the MAE mask token: used only to pretrain with masking, never by the fine-tuned encoder",
    "schedule": "the DDPM noise schedule buffers: recomputed by the diffusers scheduler (betas checked equal)",
    "clip_tower": "the frozen CLIP ViT-L/14 image tower: only the training loss uses it; evaluation loads CLIP "
                  "from the foundation",
    "mae_decoder": "the MAE decoder: pretraining only; the pretrain folder keeps the encoder",
    "fixed_positions": "the fixed sin-cos position table: our encoder recomputes it (checked equal)",
}


class MappingError(DataError):
    """A checkpoint key or shape the mapping does not account for; the message names it."""


@dataclasses.dataclass
class PartMap:
    """One target model: target key -> official key, and target keys filled without an official key."""

    targets: dict[str, str] = dataclasses.field(default_factory=dict)
    filled: dict[str, str] = dataclasses.field(default_factory=dict)  # target key -> why


@dataclasses.dataclass
class Mapping:
    """The whole mapping: parts by name, dropped official keys with their reason kind."""

    parts: dict[str, PartMap]
    dropped: dict[str, str]  # official key -> DROP_REASONS key

    def report(self, shapes: dict[str, tuple]) -> dict:
        """Counts per part (mapped keys and parameters; dropped keys per reason), json-ready."""
        numel = lambda keys: sum(int(torch.Size(shapes[k]).numel()) for k in keys)  # noqa: E731
        parts = {name: {"mapped_keys": len(p.targets), "mapped_parameters": numel(p.targets.values()),
                        "filled": p.filled} for name, p in self.parts.items()}
        dropped = {}
        for key, kind in self.dropped.items():
            entry = dropped.setdefault(kind, {"keys": 0, "parameters": 0, "reason": DROP_REASONS[kind]})
            entry["keys"] += 1
            entry["parameters"] += int(torch.Size(shapes[key]).numel())
        total = sum(len(p.targets) for p in self.parts.values()) + len(self.dropped)
        return {"checkpoint_keys": len(shapes), "accounted_keys": total, "parts": parts, "dropped": dropped}


def template_regex(template: str) -> re.Pattern:
    """A rule template as a regex: {n} matches a number, {p} weight or bias."""
    pattern = re.escape(template).replace(r"\{n\}", r"(?P<n>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(pattern)


def rule_target(key: str, rules, reverse: bool = False) -> str | None:
    """Our key for official `key` under `rules` (the official key for ours with `reverse`), None if no rule matches."""
    for official, ours in rules:
        source, target = (ours, official) if reverse else (official, ours)
        match = template_regex(source).fullmatch(key)
        if match:
            return target.format(**match.groupdict())
    return None


def drop_kind(key: str, encoder_prefix: str) -> str | None:
    """The DROP_REASONS key for an official key we drop on purpose, None otherwise."""
    if key == encoder_prefix + "mask_token":
        return "mask_token"
    if key in SCHEDULE_BUFFERS:
        return "schedule"
    if CLIP_TOWER.fullmatch(key):
        return "clip_tower"
    if encoder_prefix == "" and MAE_DECODER.fullmatch(key):
        return "mae_decoder"
    return None


def diffusers_key_map(shapes: dict[str, tuple], convert, config: dict) -> dict[str, str]:
    """diffusers key -> official key, from diffusers' converter run on probes (a one-element tensor per key
    holding the key's index, with the key's number of dimensions)."""
    names = list(shapes)
    probes = {k: torch.full((1,) * len(shapes[k]), float(i), dtype=torch.float64) for i, k in enumerate(names)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = convert(probes, config)
    out, used = {}, {}
    for target, probe in converted.items():
        if probe is None:
            raise MappingError(f"diffusers {target}: its official key is missing from the checkpoint")
        source = names[int(probe.reshape(-1)[0])]
        if source in used:
            raise MappingError(f"{source}: mapped twice ({used[source]} and {target})")
        out[target], used[source] = source, target
    return out


def check_shapes(part: str, key_map: dict[str, str], expected: dict[str, tuple], shapes: dict[str, tuple],
                 filled: dict[str, str], rules=None) -> None:
    """Every expected target receives exactly one official key of a compatible shape (or is filled)."""
    extra = sorted(set(key_map) - set(expected))
    if extra:
        raise MappingError(f"{key_map[extra[0]]}: maps to {part} key {extra[0]}, which our model does not have "
                           f"({len(extra)} such key(s))")
    missing = sorted(set(expected) - set(key_map) - set(filled))
    if missing:
        names = [f"{rule_target(k, rules, reverse=True) if rules else None} (for {k})" for k in missing[:3]]
        raise MappingError(f"{part}: {len(missing)} parameter(s) receive no value; missing official key(s): "
                           f"{', '.join(names)}{' ...' if len(missing) > 3 else ''}")
    for target, source in key_map.items():
        if not shape_fits(shapes[source], expected[target]):
            raise MappingError(f"{source}: shape {tuple(shapes[source])}, but {part} {target} expects "
                               f"{tuple(expected[target])}")


def shape_fits(found: tuple, expected: tuple) -> bool:
    """Equal shapes, or equal once trailing 1s are dropped (1x1 convolutions that became linear layers)."""
    found, expected = tuple(found), tuple(expected)
    return found == expected or (len(found) > len(expected) and found[: len(expected)] == expected
                                 and all(n == 1 for n in found[len(expected):]))


def classify(shapes: dict[str, tuple], rules, encoder_prefix: str, diffusers_prefixes: tuple = ()) -> tuple[dict, dict, list]:
    """(our conditioner/encoder keys -> official key, dropped official key -> reason kind, diffusers keys)."""
    ours, dropped, rest, unknown = {}, {}, [], []
    for key in shapes:
        target = rule_target(key, rules)
        if target is not None:
            ours[target] = key
        elif (kind := drop_kind(key, encoder_prefix)) is not None:
            dropped[key] = kind
        elif any(key.startswith(p) for p in diffusers_prefixes):
            rest.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise MappingError(f"{unknown[0]}: unknown key, neither mapped nor a known dropped key "
                           f"({len(unknown)} unknown key(s){': ' + ', '.join(unknown[1:4]) if unknown[1:] else ''})")
    return ours, dropped, rest
