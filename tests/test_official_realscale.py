"""The official checkpoint at its real shapes (SD 1.5 UNet and VAE, the paper's 24-block encoder, CLIP ViT-L/14
tower; random weights, ~5.6 GB): written the official way, imported, and equal to the official forward."""
import json

import pytest
import torch
from official_reference import Spec, gaps_to_official, random_state, save_official

from dreamdiffusion.core.unpickle import load_torch_file
from dreamdiffusion.finetune.official.convert import import_checkpoint

pytestmark = pytest.mark.realscale


def test_real_shape_checkpoint_imports_and_equals_the_official_forward(tmp_path):
    spec = Spec()
    save_official(tmp_path / "checkpoint_best.pth", random_state(spec, seed=0))  # the state is freed on return
    report = import_checkpoint(tmp_path / "checkpoint_best.pth", tmp_path / "finetune")
    print(json.dumps({p: r["mapped_keys"] for p, r in report["parts"].items()}),
          json.dumps({k: d["keys"] for k, d in report["dropped"].items()}))
    assert report["accounted_keys"] == report["checkpoint_keys"]
    assert {p: r["mapped_keys"] for p, r in report["parts"].items()} == {"conditioner": 310, "unet": 686, "vae": 248}
    assert report["parts"]["unet"]["mapped_parameters"] == 859_520_964  # SD 1.5's UNet
    state = load_torch_file(tmp_path / "checkpoint_best.pth")["model_state_dict"]  # memory-mapped
    gen = torch.Generator().manual_seed(0)
    eeg, latents = torch.randn(1, 128, 512, generator=gen), torch.randn(1, 4, 32, 32, generator=gen)
    gaps = gaps_to_official(tmp_path / "finetune", state, spec, eeg, latents, torch.tensor([500]))
    for name, gap in gaps.items():
        print(f"{name}: max |ours - official| / max |official| = {gap:.2e}")
    assert max(gaps.values()) <= 1e-4, gaps
