"""The official DreamDiffusion model, written independently of our mapping: its checkpoint layout and forward.

`official_layout(spec)` lists the keys and shapes `LatentDiffusion.state_dict()` has in the original
code (dc_ldm openaimodel.UNetModel, the LDM AutoencoderKL, ldm_for_eeg.cond_stage_model with
sc_mbm eeg_encoder and mapping, the CLIP vision tower, the DDPM schedule buffers);
`save_official` writes a checkpoint the way the original `torch.save` does (a `config` module
class included); `official_condition` / `official_unet_eps` are its forward pass on such a
state dict, in plain torch functions, for equivalence tests and the import benchmark.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import types

import torch
import torch.nn.functional as F


@dataclasses.dataclass(frozen=True)
class Spec:
    """Shapes of an official model: SD 1.5 + the paper's encoder by default (`tiny()` for fast tests)."""

    eeg_channels: int = 128
    samples: int = 512
    patch: int = 4
    width: int = 1024
    depth: int = 24
    heads: int = 16
    mlp: int = 1024  # the encoder's MLP hidden width (mlp_ratio 1.0)
    clip_dim: int = 768
    model_channels: int = 320
    channel_mult: tuple = (1, 2, 4, 4)
    res_blocks: int = 2
    attention: tuple = (4, 2, 1)
    unet_heads: int = 8
    context: int = 768
    vae_ch: int = 128
    vae_mult: tuple = (1, 2, 4, 4)
    vae_blocks: int = 2
    clip_width: int = 1024
    clip_layers: int = 24
    clip_patch: int = 14
    clip_image: int = 224

    @classmethod
    def tiny(cls) -> "Spec":
        """A few-MB model with every kind of block (attention and plain levels, resnet shortcuts)."""
        return cls(eeg_channels=8, samples=64, width=32, depth=2, heads=4, mlp=32, clip_dim=16, model_channels=32,
                   channel_mult=(1, 2, 2), res_blocks=1, attention=(1, 2), unet_heads=2, context=32, vae_ch=32,
                   vae_mult=(1, 2), vae_blocks=1, clip_width=64, clip_layers=1, clip_patch=4, clip_image=8)

    @property
    def tokens(self) -> int:
        return self.samples // self.patch

    def ldm_config(self) -> dict:
        """The official config15.yaml for these shapes (the parts an importer reads)."""
        unet = {"in_channels": 4, "out_channels": 4, "model_channels": self.model_channels,
                "attention_resolutions": list(self.attention), "num_res_blocks": self.res_blocks,
                "channel_mult": list(self.channel_mult), "num_heads": self.unet_heads, "transformer_depth": 1,
                "context_dim": self.context}
        vae = {"double_z": True, "z_channels": 4, "in_channels": 3, "out_ch": 3, "ch": self.vae_ch,
               "ch_mult": list(self.vae_mult), "num_res_blocks": self.vae_blocks, "attn_resolutions": []}
        return {"model": {"params": {"linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000,
                                     "scale_factor": 0.18215, "unet_config": {"params": unet},
                                     "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": vae}}}}}


def _linear(out: dict, name: str, n_out: int, n_in: int, bias: bool = True) -> None:
    out[name + ".weight"] = (n_out, n_in)
    if bias:
        out[name + ".bias"] = (n_out,)


def _conv(out: dict, name: str, n_out: int, n_in: int, kernel: int, dims: int = 2) -> None:
    out[name + ".weight"] = (n_out, n_in) + (kernel,) * dims
    out[name + ".bias"] = (n_out,)


def _norm(out: dict, name: str, n: int) -> None:
    out[name + ".weight"], out[name + ".bias"] = (n,), (n,)


def _resblock(out: dict, name: str, c_in: int, c_out: int, emb: int) -> None:
    """openaimodel.ResBlock (use_scale_shift_norm False)."""
    _norm(out, name + ".in_layers.0", c_in)
    _conv(out, name + ".in_layers.2", c_out, c_in, 3)
    _linear(out, name + ".emb_layers.1", c_out, emb)
    _norm(out, name + ".out_layers.0", c_out)
    _conv(out, name + ".out_layers.3", c_out, c_out, 3)
    if c_in != c_out:
        _conv(out, name + ".skip_connection", c_out, c_in, 1)


def _transformer(out: dict, name: str, ch: int, context: int) -> None:
    """attention.SpatialTransformer, depth 1 (inner width = ch)."""
    _norm(out, name + ".norm", ch)
    _conv(out, name + ".proj_in", ch, ch, 1)
    block = name + ".transformer_blocks.0."
    for attn, kv in (("attn1", ch), ("attn2", context)):
        _linear(out, block + attn + ".to_q", ch, ch, bias=False)
        _linear(out, block + attn + ".to_k", ch, kv, bias=False)
        _linear(out, block + attn + ".to_v", ch, kv, bias=False)
        _linear(out, block + attn + ".to_out.0", ch, ch)
    _linear(out, block + "ff.net.0.proj", ch * 8, ch)
    _linear(out, block + "ff.net.2", ch, ch * 4)
    for i in (1, 2, 3):
        _norm(out, block + f"norm{i}", ch)
    _conv(out, name + ".proj_out", ch, ch, 1)


def unet_layout(s: Spec) -> dict:
    """openaimodel.UNetModel keys (legacy False, spatial transformer, use_time_cond) -> shapes."""
    out, mc, emb = {}, s.model_channels, 4 * s.model_channels
    _linear(out, "time_embed.0", emb, mc)
    _linear(out, "time_embed.2", emb, emb)
    _conv(out, "time_embed_condtion.0", 38, 77, 1, dims=1)
    _conv(out, "time_embed_condtion.1", 1, 38, 1, dims=1)
    _linear(out, "time_embed_condtion.2", emb, s.context)
    _conv(out, "input_blocks.0.0", mc, 4, 3)
    chans, ch, ds, k = [mc], mc, 1, 1
    for level, mult in enumerate(s.channel_mult):
        for _ in range(s.res_blocks):
            _resblock(out, f"input_blocks.{k}.0", ch, mult * mc, emb)
            ch = mult * mc
            if ds in s.attention:
                _transformer(out, f"input_blocks.{k}.1", ch, s.context)
            chans, k = chans + [ch], k + 1
        if level != len(s.channel_mult) - 1:
            _conv(out, f"input_blocks.{k}.0.op", ch, ch, 3)
            chans, ds, k = chans + [ch], ds * 2, k + 1
    _resblock(out, "middle_block.0", ch, ch, emb)
    _transformer(out, "middle_block.1", ch, s.context)
    _resblock(out, "middle_block.2", ch, ch, emb)
    k = 0
    for level, mult in reversed(list(enumerate(s.channel_mult))):
        for i in range(s.res_blocks + 1):
            _resblock(out, f"output_blocks.{k}.0", ch + chans.pop(), mc * mult, emb)
            ch, j = mc * mult, 1
            if ds in s.attention:
                _transformer(out, f"output_blocks.{k}.1", ch, s.context)
                j = 2
            if level and i == s.res_blocks:
                _conv(out, f"output_blocks.{k}.{j}.conv", ch, ch, 3)
                ds //= 2
            k += 1
    _norm(out, "out.0", ch)
    _conv(out, "out.2", 4, mc, 3)
    return {"model.diffusion_model." + key: shape for key, shape in out.items()}


def _vae_resnet(out: dict, name: str, c_in: int, c_out: int) -> None:
    _norm(out, name + ".norm1", c_in)
    _conv(out, name + ".conv1", c_out, c_in, 3)
    _norm(out, name + ".norm2", c_out)
    _conv(out, name + ".conv2", c_out, c_out, 3)
    if c_in != c_out:
        _conv(out, name + ".nin_shortcut", c_out, c_in, 1)


def _vae_mid(out: dict, name: str, ch: int) -> None:
    _vae_resnet(out, name + ".block_1", ch, ch)
    _norm(out, name + ".attn_1.norm", ch)
    for proj in ("q", "k", "v", "proj_out"):
        _conv(out, f"{name}.attn_1.{proj}", ch, ch, 1)
    _vae_resnet(out, name + ".block_2", ch, ch)


def vae_layout(s: Spec) -> dict:
    """The LDM AutoencoderKL (taming Encoder/Decoder) keys -> shapes."""
    out, ch, mult = {}, s.vae_ch, s.vae_mult
    _conv(out, "encoder.conv_in", ch, 3, 3)
    block_in = ch
    for i, m in enumerate(mult):
        for j in range(s.vae_blocks):
            _vae_resnet(out, f"encoder.down.{i}.block.{j}", block_in, ch * m)
            block_in = ch * m
        if i != len(mult) - 1:
            _conv(out, f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
    _vae_mid(out, "encoder.mid", block_in)
    _norm(out, "encoder.norm_out", block_in)
    _conv(out, "encoder.conv_out", 8, block_in, 3)
    _conv(out, "decoder.conv_in", block_in, 4, 3)
    _vae_mid(out, "decoder.mid", block_in)
    for i in reversed(range(len(mult))):
        for j in range(s.vae_blocks + 1):
            _vae_resnet(out, f"decoder.up.{i}.block.{j}", block_in, ch * mult[i])
            block_in = ch * mult[i]
        if i:
            _conv(out, f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
    _norm(out, "decoder.norm_out", block_in)
    _conv(out, "decoder.conv_out", 3, block_in, 3)
    _conv(out, "quant_conv", 8, 8, 1)
    _conv(out, "post_quant_conv", 4, 4, 1)
    return {"first_stage_model." + key: shape for key, shape in out.items()}


def encoder_layout(s: Spec, prefix: str = "cond_stage_model.mae.") -> dict:
    """sc_mbm eeg_encoder keys -> shapes (timm Blocks with qkv bias)."""
    out = {"cls_token": (1, 1, s.width), "pos_embed": (1, s.tokens + 1, s.width), "mask_token": (1, 1, s.width)}
    _conv(out, "patch_embed.proj", s.width, s.eeg_channels, s.patch, dims=1)
    for b in range(s.depth):
        _norm(out, f"blocks.{b}.norm1", s.width)
        _linear(out, f"blocks.{b}.attn.qkv", 3 * s.width, s.width)
        _linear(out, f"blocks.{b}.attn.proj", s.width, s.width)
        _norm(out, f"blocks.{b}.norm2", s.width)
        _linear(out, f"blocks.{b}.mlp.fc1", s.mlp, s.width)
        _linear(out, f"blocks.{b}.mlp.fc2", s.width, s.mlp)
    _norm(out, "norm", s.width)
    return {prefix + key: shape for key, shape in out.items()}


def clip_tower_layout(s: Spec) -> dict:
    """transformers CLIPVisionModelWithProjection keys under `image_embedder.transformer.` -> shapes."""
    w, positions = s.clip_width, (s.clip_image // s.clip_patch) ** 2 + 1
    out = {"vision_model.embeddings.class_embedding": (w,), "vision_model.embeddings.position_ids": (1, positions),
           "vision_model.embeddings.patch_embedding.weight": (w, 3, s.clip_patch, s.clip_patch),
           "vision_model.embeddings.position_embedding.weight": (positions, w), "visual_projection.weight": (768, w)}
    _norm(out, "vision_model.pre_layrnorm", w)
    for i in range(s.clip_layers):
        name = f"vision_model.encoder.layers.{i}."
        for proj in ("q", "k", "v", "out"):
            _linear(out, name + f"self_attn.{proj}_proj", w, w)
        _norm(out, name + "layer_norm1", w)
        _linear(out, name + "mlp.fc1", 4 * w, w)
        _linear(out, name + "mlp.fc2", w, 4 * w)
        _norm(out, name + "layer_norm2", w)
    _norm(out, "vision_model.post_layernorm", w)
    return {"image_embedder.transformer." + key: shape for key, shape in out.items()}


def official_layout(s: Spec) -> dict:
    """Every key of the official LatentDiffusion.state_dict() -> shape."""
    t = s.tokens
    cond = {**encoder_layout(s)}
    _conv(cond, "cond_stage_model.channel_mapper.0", t // 2, t, 1, dims=1)
    _conv(cond, "cond_stage_model.channel_mapper.1", 77, t // 2, 1, dims=1)
    _linear(cond, "cond_stage_model.dim_mapper", s.context, s.width)
    _conv(cond, "cond_stage_model.mapping.maxpool", 1, t, 1, dims=1)
    _linear(cond, "cond_stage_model.mapping.fc", s.clip_dim, s.width)
    schedule = {name: (1000,) for name in SCHEDULE}
    return {**schedule, **unet_layout(s), **vae_layout(s), **cond, **clip_tower_layout(s)}


SCHEDULE = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
            "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
            "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2")


def schedule_buffers() -> dict:
    """ddpm.py register_schedule for SD 1.5 (linear in sqrt, 0.00085..0.012, 1000 steps), float32."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1 - betas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas[:-1]])
    posterior = betas * (1 - prev) / (1 - alphas)
    values = [betas, alphas, prev, alphas.sqrt(), (1 - alphas).sqrt(), (1 - alphas).log(), (1 / alphas).sqrt(),
              (1 / alphas - 1).sqrt(), posterior, posterior.clamp(min=1e-20).log(),
              betas * prev.sqrt() / (1 - alphas), (1 - prev) * (1 - betas).sqrt() / (1 - alphas)]
    return {name: v.float() for name, v in zip(SCHEDULE, values)}


def random_state(s: Spec, seed: int = 0) -> dict:
    """Random weights in the official layout: fan-in scaled, norms near 1, trained-looking positions."""
    from dreamdiffusion.pretrain.model import sincos_positions

    gen, state = torch.Generator().manual_seed(seed), {}
    for key, shape in official_layout(s).items():
        if key.endswith("position_ids"):
            state[key] = torch.arange(shape[1])[None]
        elif len(shape) == 1 and ("norm" in key or "layer_norm" in key or "layrnorm" in key) and key.endswith("weight"):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:
            state[key] = 0.05 * torch.randn(shape, generator=gen)
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
            state[key] = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
    state["cond_stage_model.mae.pos_embed"] = sincos_positions(s.tokens, s.width) + 0.01 * torch.randn(
        (1, s.tokens + 1, s.width), generator=gen)  # the official fine-tuning trains the table
    state["cond_stage_model.mae.cls_token"] *= 0.02
    return {**state, **schedule_buffers()}


GENERATION_CONFIG = dict(seed=2022, root_path="../dreamdiffusion/", patch_size=4, embed_dim=1024, depth=24,
                         num_heads=16, mlp_ratio=1.0, pretrain_gm_path="../dreamdiffusion/pretrains", dataset="EEG",
                         pretrain_mbm_path=None, img_size=512, batch_size=25, lr=5.3e-5, num_epoch=500, precision=32,
                         crop_ratio=0.2, global_pool=False, use_time_cond=True, clip_tune=True, cls_tune=False,
                         subject=4, eval_avg=True, num_samples=5, ddim_steps=250, HW=None, model_meta=None,
                         checkpoint_path=None, trainer=None, logger=None)


@contextlib.contextmanager
def official_config_module(**attributes):
    """A top-level module `config` with `Config_Generative_Model` / `Config_MBM_EEG`, as the official code has."""
    module = types.ModuleType("config")
    for name in ("Config_Generative_Model", "Config_MBM_EEG"):
        cls = type(name, (), {"__module__": "config"})
        setattr(module, name, cls)
    previous = sys.modules.get("config")
    sys.modules["config"] = module
    try:
        yield module
    finally:
        if previous is None:
            sys.modules.pop("config", None)
        else:
            sys.modules["config"] = previous


def save_official(path, state: dict, config: dict | None = None, extra: dict | None = None,
                  kind: str = "Config_Generative_Model") -> None:
    """torch.save the official way: {'model_state_dict', 'config': <config.Config_...>, 'state'} (+ `extra`)."""
    with official_config_module() as module:
        conf = getattr(module, kind)()
        conf.__dict__.update(GENERATION_CONFIG if config is None else config)
        payload = {"model_state_dict": state, "config": conf, "state": torch.random.get_rng_state(), **(extra or {})}
        torch.save(payload, path)


# ---- the official forward pass, on a state dict in the official layout ----

def _ln(x, sd, name, eps=1e-5):
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)


def _gn(x, sd, name, eps):
    return F.group_norm(x.float(), 32, sd[name + ".weight"], sd[name + ".bias"], eps)


def _lin(x, sd, name):
    return F.linear(x, sd[name + ".weight"], sd.get(name + ".bias"))


def _conv2(x, sd, name, stride=1):
    weight = sd[name + ".weight"]
    return F.conv2d(x, weight, sd[name + ".bias"], stride=stride, padding=weight.shape[-1] // 2)


def _timm_block(x, sd, name, heads):
    """timm Block: x + attn(norm1(x)), x + mlp(norm2(x)); softmax(q k^T / sqrt(d)) v."""
    batch, tokens, width = x.shape
    qkv = _lin(_ln(x, sd, name + ".norm1"), sd, name + ".attn.qkv").reshape(batch, tokens, 3, heads, -1)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    attn = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1)
    x = x + _lin((attn @ v).transpose(1, 2).reshape(batch, tokens, width), sd, name + ".attn.proj")
    hidden = F.gelu(_lin(_ln(x, sd, name + ".norm2"), sd, name + ".mlp.fc1"))
    return x + _lin(hidden, sd, name + ".mlp.fc2")


def official_condition(sd: dict, eeg: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cond_stage_model(eeg) -> (condition (B, 77, ctx), CLIP embedding (B, E)) of ldm_for_eeg.py / mae_for_eeg.py."""
    p = "cond_stage_model.mae."
    weight = sd[p + "patch_embed.proj.weight"]
    x = F.conv1d(eeg, weight, sd[p + "patch_embed.proj.bias"], stride=weight.shape[-1]).transpose(1, 2)
    x = x + sd[p + "pos_embed"][:, 1:]  # no cls token: eeg_encoder.forward_encoder
    depth = len({k.split(".")[3] for k in sd if k.startswith(p + "blocks.")})
    for b in range(depth):
        x = _timm_block(x, sd, f"{p}blocks.{b}", heads)
    x = _ln(x, sd, p + "norm")
    c = F.conv1d(x, sd["cond_stage_model.channel_mapper.0.weight"], sd["cond_stage_model.channel_mapper.0.bias"])
    c = F.conv1d(c, sd["cond_stage_model.channel_mapper.1.weight"], sd["cond_stage_model.channel_mapper.1.bias"])
    c = _lin(c, sd, "cond_stage_model.dim_mapper")
    pooled = F.conv1d(x, sd["cond_stage_model.mapping.maxpool.weight"], sd["cond_stage_model.mapping.maxpool.bias"])
    return c, _lin(pooled.squeeze(1), sd, "cond_stage_model.mapping.fc")


def _resblock_forward(x, emb, sd, name):
    """openaimodel.ResBlock: skip(x) + out_layers(in_layers(x) + emb_layers(emb))."""
    h = _conv2(F.silu(_gn(x, sd, name + ".in_layers.0", 1e-5)), sd, name + ".in_layers.2")
    h = h + _lin(F.silu(emb), sd, name + ".emb_layers.1")[:, :, None, None]
    h = _conv2(F.silu(_gn(h, sd, name + ".out_layers.0", 1e-5)), sd, name + ".out_layers.3")
    skip = _conv2(x, sd, name + ".skip_connection") if name + ".skip_connection.weight" in sd else x
    return skip + h


def _cross_attention(x, context, sd, name, heads):
    """attention.CrossAttention: einsum softmax attention, dim_head ** -0.5 scale."""
    q, k, v = (_lin(src, sd, f"{name}.to_{w}") for src, w in ((x, "q"), (context, "k"), (context, "v")))
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)  # (B, H, N, d)
    attn = torch.einsum("bhid,bhjd->bhij", q, k).mul(q.shape[-1] ** -0.5).softmax(-1)
    out = torch.einsum("bhij,bhjd->bhid", attn, v).transpose(1, 2).reshape(x.shape)
    return _lin(out, sd, name + ".to_out.0")


def _transformer_forward(x, context, sd, name, heads):
    """attention.SpatialTransformer with one BasicTransformerBlock (GEGLU feed-forward)."""
    batch, ch, height, width = x.shape
    h = _conv2(_gn(x, sd, name + ".norm", 1e-6), sd, name + ".proj_in").flatten(2).transpose(1, 2)
    block = name + ".transformer_blocks.0."
    h = _cross_attention(_ln(h, sd, block + "norm1"), _ln(h, sd, block + "norm1"), sd, block + "attn1", heads) + h
    h = _cross_attention(_ln(h, sd, block + "norm2"), context, sd, block + "attn2", heads) + h
    value, gate = _lin(_ln(h, sd, block + "norm3"), sd, block + "ff.net.0.proj").chunk(2, dim=-1)
    h = _lin(value * F.gelu(gate), sd, block + "ff.net.2") + h
    h = h.transpose(1, 2).reshape(batch, ch, height, width)
    return _conv2(h, sd, name + ".proj_out") + x


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """diffusionmodules.util.timestep_embedding: [cos, sin] of t * 10000^(-i / half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _block(h, emb, context, sd, name, heads):
    """One TimestepEmbedSequential of the UNet: its modules in order (resblock, transformer, up/down-sampler)."""
    for j in range(3):
        part = f"{name}.{j}"
        if part + ".op.weight" in sd:
            h = _conv2(h, sd, part + ".op", stride=2)
        elif part + ".conv.weight" in sd:
            h = _conv2(F.interpolate(h, scale_factor=2, mode="nearest"), sd, part + ".conv")
        elif part + ".in_layers.0.weight" in sd:
            h = _resblock_forward(h, emb, sd, part)
        elif part + ".norm.weight" in sd:
            h = _transformer_forward(h, context, sd, part, heads)
        elif part + ".weight" in sd:
            h = _conv2(h, sd, part)
    return h


def official_unet_eps(sd: dict, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, heads: int) -> torch.Tensor:
    """openaimodel.UNetModel.forward (use_time_cond): the predicted noise (B, 4, h, w)."""
    sd = {k[len("model.diffusion_model."):]: v for k, v in sd.items() if k.startswith("model.diffusion_model.")}
    emb = _lin(F.silu(_lin(timestep_embedding(t, sd["time_embed.0.weight"].shape[1]), sd, "time_embed.0")),
               sd, "time_embed.2")
    c = F.conv1d(context, sd["time_embed_condtion.0.weight"], sd["time_embed_condtion.0.bias"])
    c = F.conv1d(c, sd["time_embed_condtion.1.weight"], sd["time_embed_condtion.1.bias"])
    emb = emb + _lin(c, sd, "time_embed_condtion.2").squeeze(1)
    count = lambda group: len({k.split(".")[1] for k in sd if k.startswith(group + ".")})  # noqa: E731
    h, skips = x, []
    for k in range(count("input_blocks")):
        h = _block(h, emb, context, sd, f"input_blocks.{k}", heads)
        skips.append(h)
    h = _block(h, emb, context, sd, "middle_block", heads)
    for k in range(count("output_blocks")):
        h = _block(torch.cat([h, skips.pop()], dim=1), emb, context, sd, f"output_blocks.{k}", heads)
    return _conv2(F.silu(_gn(h, sd, "out.0", 1e-5)), sd, "out.2")


def gaps_to_official(folder, state: dict, spec: Spec, eeg: torch.Tensor, latents: torch.Tensor,
                     t: torch.Tensor) -> dict[str, float]:
    """max |ours - official| / max |official| of the condition, the CLIP embedding and one UNet step of the
    imported `folder` (its conditioner and unet/) against the official forward on the same weights."""
    from diffusers import UNet2DConditionModel

    from dreamdiffusion.finetune.load import load_conditioner
    from dreamdiffusion.finetune.model import TimeConditioning

    conditioner = load_conditioner(folder / "conditioner")
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    with torch.no_grad():
        condition, time_vector, clip, _ = conditioner(eeg)
        ref_condition, ref_clip = official_condition(state, eeg, spec.heads)
        with TimeConditioning(unet)(time_vector):
            eps = unet(latents, t, encoder_hidden_states=condition).sample
        ref_eps = official_unet_eps(state, latents, t, ref_condition, spec.unet_heads)
    pairs = {"condition": (condition, ref_condition), "clip": (clip, ref_clip), "eps": (eps, ref_eps)}
    for name, (ours, ref) in pairs.items():
        assert ours.shape == ref.shape, name
    return {name: float((ours - ref).abs().max() / ref.abs().max()) for name, (ours, ref) in pairs.items()}
