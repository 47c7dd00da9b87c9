"""Stage `pretrain`: the EEG masked autoencoder (stage A of DreamDiffusion), its training loop and probe."""
