"""EEG masked autoencoder (stage A of DreamDiffusion): model, training loop, encoder I/O."""
from .encoder import load_encoder, save_encoder
from .model import PRESETS, EEGEncoder, MAEConfig, MaskedAutoencoder, patchify, unpatchify

__all__ = ["PRESETS", "EEGEncoder", "MAEConfig", "MaskedAutoencoder", "load_encoder", "patchify",
           "save_encoder", "unpatchify"]
