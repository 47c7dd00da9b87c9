"""The compute section: device resolution, the accelerate relaunch command, attention switching,
lazy HDF5 arrays and progress bars that stay quiet in logs."""
import io

import numpy as np
import pytest
import torch

from dreamdiffusion.compute import (ComputeConfig, autocast_dtype, is_launched, launch_command, prepare_module,
                                    relaunch, resolve_device)
from dreamdiffusion.config import ConfigError, parse_config
from dreamdiffusion.data.processed import H5Array, take, write_h5
from dreamdiffusion.io import DataError
from dreamdiffusion.mae.model import MAEConfig, MaskedAutoencoder


def test_device_resolution_and_precision_checks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(ComputeConfig()).type == "cpu"
    with pytest.raises(DataError, match="compute.device: 'cuda' requested"):
        resolve_device(ComputeConfig(device="cuda"))
    with pytest.raises(ConfigError, match="generate.mixed_precision: fp16 needs a GPU"):
        autocast_dtype(ComputeConfig(device="cpu"), "fp16", "generate")
    assert autocast_dtype(ComputeConfig(device="cpu"), "bf16", "finetune") is torch.bfloat16
    assert autocast_dtype(ComputeConfig(device="cpu"), "fp32", "finetune") is None
    with pytest.raises(ConfigError, match="accelerate_config"):
        parse_config(ComputeConfig, {"accelerate_config": " "}, "compute")


def test_relaunch_command_and_when_it_happens(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("DREAMDIFFUSION_LAUNCHED", raising=False)
    assert relaunch(ComputeConfig(processes=1), "stages/pretrain.py") is None  # one process: run here
    command = launch_command(ComputeConfig(processes=3), "stages/finetune.py", port=29511)
    assert command[1:3] == ["-m", "accelerate.commands.launch"] and command[-1] == "stages/finetune.py"
    assert command[command.index("--num_processes") + 1] == "3" and "--main_process_port" in command
    config = tmp_path / "multinode.yaml"
    config.write_text("num_machines: 2\n")
    assert launch_command(ComputeConfig(processes=4, accelerate_config=str(config)), "s.py")[3:5] == ["--config_file", str(config)]
    with pytest.raises(DataError, match="compute.accelerate_config: file .*missing.yaml not found"):
        launch_command(ComputeConfig(processes=2, accelerate_config=str(tmp_path / "missing.yaml")), "s.py")
    monkeypatch.setenv("LOCAL_RANK", "1")  # inside a launched process: never relaunch again
    assert is_launched() and relaunch(ComputeConfig(processes=2), "s.py") is None


def test_math_attention_equals_fused_and_checkpointing_keeps_gradients():
    config = MAEConfig(channels=4, samples=32, patch=4, width=16, depth=2, heads=2, decoder_width=8, decoder_heads=2)
    torch.manual_seed(0)
    model = MaskedAutoencoder(config)
    eeg, noise = torch.randn(3, 4, 32), torch.rand(3, 8)
    fused = model(eeg, noise=noise)[0]
    fused.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    prepare_module(model, ComputeConfig(attention="math", gradient_checkpointing=True))
    assert model.encoder.gradient_checkpointing and not model.encoder.blocks[0].attn.fused
    plain = model(eeg, noise=noise)[0]
    plain.backward()
    assert torch.allclose(fused, plain, atol=1e-6)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[name], atol=1e-5), name


def test_h5_array_reads_rows_in_any_order_and_views_nest(tmp_path):
    data = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    write_h5(tmp_path / "a.h5", {"x": data}, chunk_first=("x",))
    view = H5Array(tmp_path / "a.h5", "x", rows=np.array([1, 3, 5, 7, 9]))  # e.g. one split's rows
    assert view.shape == (5, 3) and len(view) == 5
    np.testing.assert_array_equal(view[[4, 0, 0]], data[[9, 1, 1]])
    np.testing.assert_array_equal(view[1:3], data[[3, 5]])
    np.testing.assert_array_equal(view[2], data[5])
    inner = take(view, np.array([3, 1]))
    assert isinstance(inner, H5Array) and np.array_equal(np.asarray(inner), data[[7, 3]])
    np.testing.assert_array_equal(take(data, [2, 0]), data[[2, 0]])  # numpy arrays are indexed at once


def test_progress_bars_are_sparse_outside_a_terminal(monkeypatch):
    from dreamdiffusion.progress import LOG_INTERVAL, progress

    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a TTY
    bar = progress(range(3), desc="x", file=io.StringIO())
    assert bar.mininterval >= LOG_INTERVAL
    monkeypatch.setenv("DREAMDIFFUSION_PROGRESS", "0")
    assert progress(range(3)).disable
