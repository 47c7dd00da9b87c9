"""The official checkpoint at its real shapes (SD 1.5 UNet and VAE, the paper's 24-block encoder, CLIP ViT-L/14
tower; random weights, ~5.6 GB): written the official way, imported, and equal to the official forward."""
import json

import pytest
import torch
from official_reference import Spec, official_condition, official_unet_eps, random_state, save_official

from dreamdiffusion.core.unpickle import load_torch_file
from dreamdiffusion.finetune.load import load_conditioner
from dreamdiffusion.finetune.official.convert import import_checkpoint

pytestmark = pytest.mark.realscale


def test_real_shape_checkpoint_imports_and_equals_the_official_forward(tmp_path):
    from diffusers import UNet2DConditionModel

    from dreamdiffusion.finetune.model import TimeConditioning

    spec = Spec()
    save_official(tmp_path / "checkpoint_best.pth", random_state(spec, seed=0))  # the state is freed on return
    report = import_checkpoint(tmp_path / "checkpoint_best.pth", tmp_path / "finetune")
    print(json.dumps({p: r["mapped_keys"] for p, r in report["parts"].items()}),
          json.dumps({k: d["keys"] for k, d in report["dropped"].items()}))
    assert report["accounted_keys"] == report["checkpoint_keys"]
    assert {p: r["mapped_keys"] for p, r in report["parts"].items()} == {"conditioner": 310, "unet": 686, "vae": 248}
    assert report["parts"]["unet"]["mapped_parameters"] == 859_520_964  # SD 1.5's UNet
    state = load_torch_file(tmp_path / "checkpoint_best.pth")["model_state_dict"]  # memory-mapped
    conditioner = load_conditioner(tmp_path / "finetune" / "conditioner")
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "finetune" / "unet").eval()
    gen = torch.Generator().manual_seed(0)
    eeg, latents = torch.randn(1, 128, 512, generator=gen), torch.randn(1, 4, 32, 32, generator=gen)
    t = torch.tensor([500])
    with torch.no_grad():
        condition, time_vector, clip, _ = conditioner(eeg)
        ref_condition, ref_clip = official_condition(state, eeg, spec.heads)
        with TimeConditioning(unet)(time_vector):
            eps = unet(latents, t, encoder_hidden_states=condition).sample
        ref_eps = official_unet_eps(state, latents, t, ref_condition, spec.unet_heads)
    for name, ours, ref in (("condition", condition, ref_condition), ("clip", clip, ref_clip), ("eps", eps, ref_eps)):
        gap = float((ours - ref).abs().max() / ref.abs().max())
        print(f"{name}: max |ours - official| / max |official| = {gap:.2e}")
        assert gap <= 1e-4, name
