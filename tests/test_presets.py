"""Presets: the real and paper presets parse into every stage's config; apply keeps params.yaml's comments;
`run` turns a preset into `dvc exp run -S` arguments; bad presets fail naming the key."""
import shutil
from pathlib import Path

import pytest
import yaml

from dreamdiffusion.core.config import ConfigError, parse_config
from dreamdiffusion.finetune.config import FinetuneConfig
from dreamdiffusion.tools.presets import available, leaves, load_preset, merge, validate
from dreamdiffusion.tools.presets.__main__ import exp_run_command, main

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("name", available())
def test_every_shipped_preset_parses_into_every_stage_config(name):
    validate(merge(PARAMS, load_preset(name)))


def test_real_preset_ties_what_must_change_together():
    real = merge(PARAMS, load_preset("real"))
    assert real["foundation"]["source"] == "pretrained" and real["preprocess"]["image_size"] == 512
    assert real["preprocess"]["subjects"] == [4] and real["preprocess"]["splits_index"] == "single"
    assert real["download"]["splits_index"] == "single" and real["preprocess"]["extra_images"] is False
    assert real["foundation"]["pretrained"]["judge_image_size"] == 518
    assert real["pretrain"]["preset"] == "paper" and real["pretrain"]["model"]["mlp_ratio"] == 4.0
    assert real["pretrain"]["model"]["patch"] == PARAMS["pretrain"]["model"]["patch"]  # nested keys merge, not replace
    assert real["generate"]["samples_per_eeg"] == 5 and real["finetune"]["lr"] == pytest.approx(5.3e-5)


def test_paper_preset_is_the_papers_recipe():
    paper = merge(PARAMS, load_preset("paper"))
    finetune, generate = paper["finetune"], paper["generate"]
    assert finetune["caption_weight"] == 0.0 and finetune["cond_noise"] == 0.0 and finetune["cond_dropout"] == 0.0
    assert finetune["lr"] == finetune["unet_lr"] == pytest.approx(5.3e-5) and finetune["clip_weight"] == 1.0
    assert (generate["scheduler"], generate["steps"], generate["guidance"], generate["samples_per_eeg"]) == (
        "pndm", 250, 1.0, 5)
    assert paper["pretrain"]["model"]["mask_ratio"] == 0.75 and paper["preprocess"]["subjects"] == [4]
    assert paper["pretrain"]["model"]["width"] == PARAMS["pretrain"]["model"]["width"]  # the recipe, not the scale


def test_things_preset_chooses_on_val_among_joint_epochs():
    """The twin's selection is a choice among epochs the UNet trained with: with 10 val concepts it once kept
    alignment-only epoch 13 of 26, whose generated images were at chance."""
    config = parse_config(FinetuneConfig, merge(PARAMS, load_preset("things"))["finetune"], "finetune")
    candidates = [e for e in range(1, config.epochs + 1) if config.validates(e) and config.keeps(e)]
    assert len(candidates) >= 2, candidates


@pytest.mark.parametrize("preset", [None, "things"])
def test_validation_samples_as_generate_does(preset):
    """The kept model is chosen on images sampled as `generate` samples them (DDIM, its steps and guidance), in the
    default world and in the twin's preset (which keeps the DDIM 10 its figures were measured with)."""
    params = merge(PARAMS, load_preset(preset)) if preset else PARAMS
    finetune, generate = params["finetune"], params["generate"]
    assert generate["scheduler"] == "ddim"  # validation samples with DDIM
    assert (finetune["val_steps"], finetune["val_guidance"]) == (generate["steps"], generate["guidance"])
    assert generate["steps"] == (10 if preset == "things" else 6)


def test_validated_epochs_follow_val_every():
    config = FinetuneConfig(epochs=26, align_epochs=24, val_every=13)
    assert [e for e in range(1, 27) if config.validates(e)] == [13, 26]
    assert [e for e in range(1, 27) if FinetuneConfig(epochs=26, val_every=25).validates(e)] == [25, 26]
    assert not config.keeps(24) and config.keeps(25)  # align_epochs 24


def test_paper_after_real_is_the_papers_experiment():
    both = merge(merge(PARAMS, load_preset("real")), load_preset("paper"))
    validate(both)
    assert both["pretrain"]["preset"] == "paper" and both["preprocess"]["splits_index"] == "single"
    assert both["generate"]["scheduler"] == "pndm" and both["finetune"]["caption_weight"] == 0.0


@pytest.mark.parametrize("name", ["real", "paper"])
def test_apply_writes_what_merge_gives(tmp_path, name):
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    assert main(["apply", name, "--params", str(params)]) == 0
    assert yaml.safe_load(params.read_text()) == merge(PARAMS, load_preset(name))


def test_apply_rewrites_params_keeping_comments(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    assert main(["apply", "real", "--params", str(params)]) == 0
    text = params.read_text()
    assert "the paper uses [4]" in text and "# Lists are written in block style" in text  # comments kept
    assert "eeg_url: null" in text and "      - 22\n" in text  # untouched lines keep their form
    assert yaml.safe_load(text) == merge(PARAMS, load_preset("real"))
    assert "[4]" not in text.split("subjects:")[2].splitlines()[0]  # lists stay in block style


def test_run_builds_one_set_per_leaf():
    command = exp_run_command({"preprocess": {"subjects": [4], "image_size": 512}, "foundation": {"source": "pretrained"}},
                              ["--queue"])
    assert command == ["dvc", "exp", "run", "-S", "preprocess.subjects=[4]", "-S", "preprocess.image_size=512",
                       "-S", "foundation.source=pretrained", "--queue"]
    assert len(leaves(load_preset("real"))) == len(exp_run_command(load_preset("real"), [])[3:]) // 2


def test_a_preset_key_params_yaml_lacks_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("finetune:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="finetune.learning_rate"):
        merge(PARAMS, load_preset(str(bad)))
    wrong_type = tmp_path / "wrong.yaml"
    wrong_type.write_text("generate:\n  samples_per_eeg: many\n")
    assert main(["show", str(wrong_type)]) == 2
    assert main(["show", "no-such-preset"]) == 2
