"""Stage B: CLIP-aligned fine-tuning of Stable Diffusion conditioned on the EEG encoder."""
