"""Stage `evaluate`: the field's metrics on the generated test images (MinD-Vis, Chen et al. CVPR 2023;
DreamDiffusion s.4): n-way top-k, 2-way identification, CLIP similarity, SSIM, pixel correlation,
FID/IS/KID, each beside its wrong-EEG control."""
