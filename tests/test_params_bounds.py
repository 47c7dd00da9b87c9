"""Every size or count param has a finite upper bound the paper's scale fits under, and `generate`
refuses a plan whose estimated peak memory exceeds what the machine has."""
import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from dreamdiffusion.core.config import PARAMS_SECTIONS, ConfigError, parse_config
from dreamdiffusion.finetune.model import ConditionerConfig
from dreamdiffusion.generate.config import GenerateConfig
from dreamdiffusion.generate.run import check_memory, peak_memory
from dreamdiffusion.pretrain.model import MAEConfig
from dreamdiffusion.core.sections import section_configs
from dreamdiffusion.tools.presets import load_preset, merge, validate

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def counted_fields(cls, prefix: str):
    """(dotted name, field) of every int or list-of-int field of `cls` and of the configs it nests."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        tp, name = hints[field.name], f"{prefix}.{field.name}"
        if dataclasses.is_dataclass(tp):
            yield from counted_fields(tp, name)
        elif tp is int or tp == list[int]:
            yield name, field


CONFIGS = {**section_configs(), "encoder": MAEConfig, "conditioner": ConditionerConfig}
ALL_COUNTED = [item for section, cls in CONFIGS.items() for item in counted_fields(cls, section)]


def test_the_sections_a_params_file_may_hold_are_the_stages_sections():
    assert set(PARAMS_SECTIONS) == {"seed", *section_configs()} == set(PARAMS)


@pytest.mark.parametrize("name, field", ALL_COUNTED, ids=[name for name, _ in ALL_COUNTED])
def test_every_size_and_count_param_has_an_upper_bound(name, field):
    assert field.metadata.get("max") is not None or field.metadata.get("choices") is not None, name


def test_the_papers_scale_is_within_the_bounds():
    paper = merge(merge(PARAMS, load_preset("real")), load_preset("paper"))
    paper = merge(paper, {"pretrain": {"epochs": 2000, "model": dict(width=1024, depth=24, heads=16, decoder_width=512,
                                                                     decoder_depth=8, decoder_heads=16)},
                          "finetune": {"epochs": 2000}, "generate": {"steps": 250, "samples_per_eeg": 5}})
    validate(paper)
    assert paper["preprocess"]["image_size"] == 512 and paper["generate"]["scheduler"] == "pndm"


@pytest.mark.parametrize("section, values, needle", [
    ("generate", {"samples_per_eeg": 1_000_000}, "generate.samples_per_eeg: value 1000000 is above the maximum 100"),
    ("generate", {"steps": 10 ** 9}, "generate.steps: value 1000000000 is above the maximum 1000"),
    ("pretrain", {"model": {"width": 10 ** 6}}, "pretrain.model.width: value 1000000 is above the maximum 8192"),
    ("foundation", {"unet": {"block_out_channels": [48, 10 ** 7]}},
     "foundation.unet.block_out_channels: value 10000000 is above the maximum 8192"),
    ("foundation", {"vae": {"block_out_channels": [16] * 9}}, "foundation.vae.block_out_channels: 9 items"),
    ("evaluate", {"nway_draws": 10 ** 12}, "evaluate.nway_draws: value 1000000000000 is above the maximum 10000"),
])
def test_an_overflow_is_one_line_naming_key_value_and_bound(section, values, needle):
    with pytest.raises(ConfigError) as err:
        parse_config(section_configs()[section], values, section)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_generate_peak_estimate_grows_with_the_plan_and_the_image_size():
    small = peak_memory(GenerateConfig(), 160, 32, on_cpu=True)
    assert 0 < small < 2 ** 30  # the synthetic default: well under 1 GiB
    assert peak_memory(GenerateConfig(samples_per_eeg=100, control_samples=100), 10 ** 6, 32, True) > 100 * 2 ** 30
    assert peak_memory(GenerateConfig(), 160, 512, True) > 16 * small
    assert peak_memory(GenerateConfig(), 160, 512, False) < peak_memory(GenerateConfig(), 160, 512, True)


def test_generate_refuses_a_plan_over_the_available_memory(monkeypatch):
    monkeypatch.setattr("dreamdiffusion.core.compute.available_memory", lambda: 2 ** 30)
    check_memory(GenerateConfig(), 160, 32, on_cpu=True)  # fits
    with pytest.raises(ConfigError, match=r"generate: estimated peak memory \d+\.\d\d GiB \(10000000 test trials x "
                                          r"\(samples_per_eeg 2 \+ control_samples 1\) .* exceeds the 1.00 GiB "
                                          r"available; lower generate.samples_per_eeg"):
        check_memory(GenerateConfig(), 10 ** 7, 32, on_cpu=False)
