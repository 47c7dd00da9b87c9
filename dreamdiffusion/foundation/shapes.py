"""The real models' architectures as configs (no weights): Stable Diffusion 1.5's UNet and VAE and the
CLIP ViT-L/14 text tower it conditions on, as published in the diffusers / transformers configs of
stable-diffusion-v1-5/stable-diffusion-v1-5. Benchmarks and real-shape tests build random-weight
models from them; `pixels` sets the native image size (a config value, not a weight shape)."""
from __future__ import annotations


def sd15_unet_config(pixels: int = 512) -> dict:
    """UNet2DConditionModel kwargs of SD 1.5 (859,520,964 parameters) for `pixels`-px images."""
    return dict(
        sample_size=pixels // 8, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        norm_num_groups=32, norm_eps=1e-5, act_fn="silu", center_input_sample=False, flip_sin_to_cos=True,
        freq_shift=0, downsample_padding=1, mid_block_scale_factor=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )


def sd15_vae_config(pixels: int = 512) -> dict:
    """AutoencoderKL kwargs of SD 1.5's VAE (83,653,863 parameters; 8x downsampling, 4 latent channels)."""
    return dict(
        sample_size=pixels, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512), norm_num_groups=32, act_fn="silu", scaling_factor=0.18215,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )


def sd15_text_config() -> dict:
    """CLIPTextConfig kwargs of SD 1.5's text encoder (CLIP ViT-L/14's text tower, 123,060,480 parameters;
    bos/eos ids 0/2 as its shipped config has them)."""
    return dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
                layer_norm_eps=1e-5, attention_dropout=0.0, dropout=0.0, initializer_range=0.02,
                initializer_factor=1.0, bos_token_id=0, eos_token_id=2, pad_token_id=1)


# SD 1.5's noise schedule (eps prediction, scaled-linear betas 0.00085-0.012), as its scheduler config.
SD15_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                     prediction_type="epsilon")
