"""Importing the official DreamDiffusion checkpoint: safe loading, strict mapping, equivalence (tiny shapes)."""
import collections
import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from official_reference import Spec, gaps_to_official, random_state, save_official

from dreamdiffusion.core.fileio import DataError, verify_manifest
from dreamdiffusion.core.unpickle import RefusedPickle, load_npy, load_pickle, load_torch_file
from dreamdiffusion.finetune.load import load_conditioner
from dreamdiffusion.finetune.official.__main__ import main as cli
from dreamdiffusion.finetune.official.convert import import_checkpoint

SPEC = Spec.tiny()
CONFIG = {"num_heads": SPEC.heads, "img_size": 64, "use_time_cond": True, "global_pool": False, "num_samples": 5,
          "ddim_steps": 250, "root_path": "../dreamdiffusion/", "HW": None, "crop_ratio": 0.2}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def state():
    return random_state(SPEC, seed=1)


@pytest.fixture(scope="module")
def imported(tmp_path_factory, state):
    """(checkpoint path, output folder, report) of the tiny official checkpoint."""
    folder = tmp_path_factory.mktemp("official")
    save_official(folder / "checkpoint_best.pth", state, CONFIG)
    report = import_checkpoint(folder / "checkpoint_best.pth", folder / "finetune", SPEC.ldm_config())
    return folder / "checkpoint_best.pth", folder / "finetune", report


def refused(tmp_path, state, config=None, extra=None, ldm=True):
    """The error importing a variant of the tiny checkpoint raises; nothing may be written."""
    save_official(tmp_path / "bad.pth", state, CONFIG if config is None else config, extra)
    with pytest.raises(DataError) as err:
        import_checkpoint(tmp_path / "bad.pth", tmp_path / "out", SPEC.ldm_config() if ldm else None)
    assert not (tmp_path / "out").exists()
    return str(err.value)


def test_every_key_is_mapped_or_dropped_with_a_reason(imported):
    _, out, report = imported
    assert report["accounted_keys"] == report["checkpoint_keys"] == len(random_state(SPEC))
    assert {p: r["mapped_keys"] for p, r in report["parts"].items()} == {"conditioner": 46, "unet": 324, "vae": 124}
    assert {k: d["keys"] for k, d in report["dropped"].items()} == {"schedule": 12, "mask_token": 1, "clip_tower": 25}
    assert all(d["reason"] for d in report["dropped"].values()) and report["schedule_max_abs_diff"] < 1e-6
    assert json.loads((out / "import_report.json").read_text()) == report
    manifest = verify_manifest(out, "finetune")
    assert {"conditioner/model.safetensors", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
            "scheduler/scheduler_config.json", "finetune.json", "official.json"} <= set(manifest["files"])
    official = json.loads((out / "official.json").read_text())
    assert official["sampling"] == {"scheduler": "pndm", "steps": 250, "samples_per_eeg": 5, "guidance": 1.0}


def test_conditioner_and_unet_step_equal_the_official_forward(imported, state, one_thread):
    _, out, _ = imported
    eeg, latents, t = torch.randn(2, SPEC.eeg_channels, SPEC.samples), torch.randn(2, 4, 8, 8), torch.tensor([3, 700])
    gaps = gaps_to_official(out, state, SPEC, eeg, latents, t)
    assert max(gaps.values()) <= 1e-5, gaps


def test_a_reduce_to_os_system_is_refused_and_never_runs(tmp_path, state):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    message = refused(tmp_path, state, extra={"state": Evil()})
    assert re.search(r"global (posix|os)\.system is not allowed", message) and not marker.exists()
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"eeg": Evil()}))
    with pytest.raises(RefusedPickle, match=r"(posix|os)\.system"):
        load_pickle(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_an_extra_global_is_refused_with_its_name(tmp_path, state):
    assert "global collections.Counter is not allowed" in refused(tmp_path, state, extra={"state": collections.Counter()})
    config = {**CONFIG, "logger": torch.zeros(1)}
    assert "config.Config_Generative_Model.logger: value of type Tensor" in refused(tmp_path, state, config)


@pytest.mark.parametrize("key, shape", [("cond_stage_model.dim_mapper.weight", (32, 31)),
                                        ("model.diffusion_model.input_blocks.1.0.in_layers.2.weight", (32, 32, 1, 1)),
                                        ("first_stage_model.decoder.conv_out.weight", (3, 64, 3, 3))])
def test_a_wrong_shape_is_refused_naming_the_key(tmp_path, state, key, shape):
    message = refused(tmp_path, {**state, key: torch.zeros(shape)})
    assert key in message and "shape" in message


@pytest.mark.parametrize("key, named", [("cond_stage_model.mapping.fc.bias", "cond_stage_model.mapping.fc.bias"),
                                        ("model.diffusion_model.time_embed_condtion.2.weight",
                                         "model.diffusion_model.time_embed_condtion.2.weight"),
                                        ("model.diffusion_model.out.2.weight", "conv_out.weight")])
def test_a_missing_key_is_refused_naming_it(tmp_path, state, key, named):
    smaller = {k: v for k, v in state.items() if k != key}
    assert named in refused(tmp_path, smaller)


@pytest.mark.parametrize("key", ["cond_stage_model.cls_net.fc.weight", "model_ema.decay",
                                 "model.diffusion_model.input_blocks.1.0.extra.weight"])
def test_an_unknown_key_is_refused_naming_it(tmp_path, state, key):
    assert key in refused(tmp_path, {**state, key: torch.zeros(2, 2)})


def test_time_path_keys_without_use_time_cond_are_refused(tmp_path, state):
    message = refused(tmp_path, state, {**CONFIG, "use_time_cond": False})
    assert "time_embed_condtion" in message and "time_path" in message


def test_unknown_top_level_entries_and_wrong_files_are_refused(tmp_path, state):
    assert "top-level keys" in refused(tmp_path, state, extra={"optimizer": {}})
    (tmp_path / "text.pth").write_text("not a zip")
    with pytest.raises(DataError, match="not a torch.save zip file"):
        load_torch_file(tmp_path / "text.pth")


def test_the_command_line_imports_and_reports_refusals(tmp_path, imported, capsys):
    checkpoint, _, _ = imported
    (tmp_path / "config15.yaml").write_text(json.dumps(SPEC.ldm_config()))
    assert cli(["import", str(checkpoint), "--out", str(tmp_path / "out"),
                "--ldm-config", str(tmp_path / "config15.yaml")]) == 0
    assert json.loads(capsys.readouterr().out)["accounted_keys"] > 0
    assert cli(["import", str(checkpoint), "--out", str(tmp_path / "sd15")]) == 1  # SD 1.5 shapes: refused
    assert capsys.readouterr().err.startswith(f"error: {checkpoint}: ") and not (tmp_path / "sd15").exists()


def official_encoder_forward(state: dict, eeg: torch.Tensor, heads: int) -> torch.Tensor:
    """MAEforEEG.forward_encoder with nothing masked: cls token first, then the blocks and the norm."""
    from official_reference import _ln, _timm_block

    weight = state["patch_embed.proj.weight"]
    x = torch.nn.functional.conv1d(eeg, weight, state["patch_embed.proj.bias"], stride=weight.shape[-1])
    x = x.transpose(1, 2) + state["pos_embed"][:, 1:]
    x = torch.cat([(state["cls_token"] + state["pos_embed"][:, :1]).expand(len(x), -1, -1), x], dim=1)
    for b in range(SPEC.depth):
        x = _timm_block(x, state, f"blocks.{b}", heads)
    return _ln(x, state, "norm")


def test_an_official_encoder_checkpoint_becomes_our_pretrain_folder(tmp_path, state, one_thread):
    from official_reference import official_config_module

    from dreamdiffusion.pretrain.encoder import load_encoder
    from dreamdiffusion.pretrain.model import sincos_positions

    prefix = "cond_stage_model.mae."
    model = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    model["pos_embed"] = sincos_positions(SPEC.tokens, SPEC.width)  # fixed while pretraining
    model |= {"decoder_embed.weight": torch.randn(16, SPEC.width), "decoder_embed.bias": torch.zeros(16),
              "decoder_pos_embed": torch.zeros(1, SPEC.tokens + 1, 16), "decoder_pred.weight": torch.zeros(32, 16),
              "decoder_blocks.0.norm1.weight": torch.ones(16)}
    with official_config_module() as module:
        conf = module.Config_MBM_EEG()
        conf.__dict__.update(num_heads=SPEC.heads, decoder_num_heads=4, mask_ratio=0.75, focus_range=None)
        torch.save({"model": model, "optimizer": {"state": {}, "param_groups": [{"lr": 2.5e-4, "betas": (0.9, 0.95)}]},
                    "epoch": 3, "scaler": {"scale": 65536.0}, "config": conf}, tmp_path / "checkpoint.pth")
    report = import_checkpoint(tmp_path / "checkpoint.pth", tmp_path / "pretrain")
    assert report["accounted_keys"] == report["checkpoint_keys"] and report["parts"]["encoder"]["mapped_keys"] == 29
    encoder, _ = load_encoder(tmp_path / "pretrain")
    eeg = torch.randn(2, SPEC.eeg_channels, SPEC.samples)
    with torch.no_grad():
        ours, ref = encoder(eeg, keep_cls=True), official_encoder_forward(model, eeg, SPEC.heads)
    assert (ours - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_things_eeg2_npy_dicts_load_and_hostile_ones_do_not(tmp_path):
    data = {"preprocessed_eeg_data": np.random.rand(3, 4, 17, 100), "ch_names": ["Pz", "O1"],
            "times": np.linspace(-0.2, 0.79, 100), "sfreq": np.float64(100.0)}
    np.save(tmp_path / "preprocessed_eeg_training.npy", data, allow_pickle=True)
    loaded = load_npy(tmp_path / "preprocessed_eeg_training.npy").item()
    assert loaded.keys() == data.keys() and np.array_equal(loaded["preprocessed_eeg_data"], data["preprocessed_eeg_data"])
    assert loaded["ch_names"] == data["ch_names"] and loaded["sfreq"] == 100.0
    np.save(tmp_path / "bad.npy", {"eeg": collections.Counter()}, allow_pickle=True)
    with pytest.raises(RefusedPickle, match=r"bad\.npy: global collections\.Counter is not allowed"):
        load_npy(tmp_path / "bad.npy")


def test_nothing_in_the_import_path_calls_a_plain_loader():
    for path in (ROOT / "dreamdiffusion" / "official").glob("*.py"):
        text = path.read_text()
        assert not re.search(r"torch\.load\(|pickle\.loads?\(|allow_pickle=True|pickle\.Unpickler\(", text), path


def official_config(checkpoint: Path, ldm_yaml: Path, **overrides):
    """The `finetune` section that imports `checkpoint` (its sha256 given) with the tiny LDM config."""
    from dreamdiffusion.core.config import parse_config
    from dreamdiffusion.core.fileio import sha256_file
    from dreamdiffusion.finetune.config import FinetuneConfig

    section = {"source": "official", "official_checkpoint": str(checkpoint), "official_sha256": sha256_file(checkpoint),
               "official_ldm_config": str(ldm_yaml), **overrides}
    return parse_config(FinetuneConfig, section, "finetune")


def finetune_paths(root: Path):
    from dreamdiffusion.finetune.run import FinetunePaths

    return FinetunePaths(foundation=root / "foundation", encoder=root / "pretrain", eeg=root / "eeg.h5",
                         images=root / "images.h5", model=root / "finetune", checkpoints=root / "ckpt",
                         features=root / "features", metrics=root / "finetune.json", history=root / "loss.csv",
                         grid=root / "grid.png", loss_figure=root / "loss.png")


def test_the_finetune_stage_imports_the_checkpoint_it_names_by_sha256(imported, tmp_path):
    import yaml

    from dreamdiffusion.finetune.run import LOSS_KEYS, import_official

    checkpoint, _, report = imported
    (tmp_path / "config15.yaml").write_text(yaml.safe_dump(SPEC.ldm_config()))
    paths = finetune_paths(tmp_path)
    result = import_official(official_config(checkpoint, tmp_path / "config15.yaml"), paths)
    assert result.metrics["source"] == "official" and result.metrics["mapped_keys_unet"] == 324
    assert result.metrics["dropped_keys"] == 12 + 1 + 25
    assert json.loads((paths.model / "import_report.json").read_text()) == report
    verify_manifest(paths.model, "finetune")
    assert paths.history.read_text() == ",".join(["epoch", *LOSS_KEYS]) + "\n"  # no epochs: nothing trained
    assert paths.grid.stat().st_size > 0 and paths.loss_figure.stat().st_size > 0


def test_the_finetune_stage_refuses_a_checkpoint_whose_sha256_differs(imported, tmp_path):
    from dreamdiffusion.core.config import ConfigError
    from dreamdiffusion.finetune.run import import_official

    checkpoint, _, _ = imported
    with pytest.raises(DataError, match=r"has sha256 [0-9a-f]{64}, finetune.official_sha256 says 0{64}"):
        import_official(official_config(checkpoint, tmp_path / "none.yaml", official_sha256="0" * 64),
                        finetune_paths(tmp_path))
    assert not (tmp_path / "finetune").exists()
    with pytest.raises(ConfigError, match="official_sha256"):
        official_config(checkpoint, tmp_path / "none.yaml", official_sha256=None)
    with pytest.raises(ConfigError, match="64 lowercase hex"):
        official_config(checkpoint, tmp_path / "none.yaml", official_sha256="abc")


def test_the_imported_model_samples_with_its_own_vae_and_schedule(imported, one_thread):
    from types import SimpleNamespace

    from diffusers import AutoencoderKL, UNet2DConditionModel

    from dreamdiffusion.finetune.load import EEGImageGenerator, scheduler_config

    _, out, _ = imported
    schedule = scheduler_config(out, SimpleNamespace(scheduler=None))
    assert schedule == json.loads((out / "scheduler/scheduler_config.json").read_text())
    generator = EEGImageGenerator(load_conditioner(out / "conditioner"),
                                  UNet2DConditionModel.from_pretrained(out / "unet").eval(),
                                  AutoencoderKL.from_pretrained(out / "vae").eval(), schedule, None, {})
    eeg = torch.randn(2, SPEC.eeg_channels, SPEC.samples)
    images = generator.images(eeg, [0, 1], scheduler="pndm", steps=2, guidance=1.0)
    again = generator.images(eeg[:1], [0], scheduler="pndm", steps=2, guidance=1.0)
    assert images.shape[:2] == (2, 3) and torch.isfinite(images).all()
    assert torch.allclose(images[:1], again, atol=1e-5)  # one image alone from its seed: the same


def test_generate_takes_the_checkpoints_sampling_settings_on_one_switch(imported, tmp_path):
    from dreamdiffusion.core.config import ConfigError, parse_config
    from dreamdiffusion.generate.config import GenerateConfig
    from dreamdiffusion.generate.run import checkpoint_sampling

    _, out, _ = imported
    ours = parse_config(GenerateConfig, {"sampling": "params"}, "generate")
    assert checkpoint_sampling(ours, out) is ours
    paper = checkpoint_sampling(parse_config(GenerateConfig, {"sampling": "checkpoint"}, "generate"), out)
    assert (paper.scheduler, paper.steps, paper.samples_per_eeg, paper.guidance) == ("pndm", 250, 5, 1.0)
    with pytest.raises(DataError, match="no sampling settings"):
        checkpoint_sampling(parse_config(GenerateConfig, {"sampling": "checkpoint"}, "generate"), tmp_path)
    (tmp_path / "official.json").write_text(json.dumps({"sampling": {"steps": 10**9}}))
    with pytest.raises(ConfigError, match="steps"):
        checkpoint_sampling(parse_config(GenerateConfig, {"sampling": "checkpoint"}, "generate"), tmp_path)


def test_preprocess_for_the_official_model_takes_exactly_its_input():
    from dreamdiffusion.core.config import ConfigError, parse_config
    from dreamdiffusion.preprocess.config import PreprocessConfig
    from dreamdiffusion.preprocess.run import check_model_input

    with pytest.raises(ConfigError, match=r"crop_end: 460 \(got 400\), normalize: 'none' \(got 'channel'\)"):
        parse_config(PreprocessConfig, {"model_input": "official", "crop_end": 400, "normalize": "channel"}, "preprocess")
    config = parse_config(PreprocessConfig, {"model_input": "official"}, "preprocess")
    payload = {"dataset": [{"eeg": torch.zeros(128, 500)}, {"eeg": torch.zeros(64, 500)}]}
    check_model_input(payload, [0], config, Path("eeg.pth"))
    with pytest.raises(DataError, match=r"eeg.pth: trials have \[64, 128\] channels.*takes exactly 128"):
        check_model_input(payload, [0, 1], config, Path("eeg.pth"))


def test_a_checkpoint_of_the_other_kind_is_refused_before_anything_is_written(imported, tmp_path):
    checkpoint, _, _ = imported
    with pytest.raises(DataError, match="an official generation checkpoint, not the encoder checkpoint expected"):
        import_checkpoint(checkpoint, tmp_path / "out", SPEC.ldm_config(), kind="encoder")
    assert not (tmp_path / "out").exists()
