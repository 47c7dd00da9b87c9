"""Stage `foundation`: Stable Diffusion, CLIP and the judges; real by hub id, a shipped miniature release
by default, or the demo trained here. Later stages use only `load.load_foundation(models/foundation)`."""
