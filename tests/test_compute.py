"""The compute section: device resolution, the accelerate relaunch command, attention switching,
lazy HDF5 arrays and progress bars that stay quiet in logs."""
import io
import time
import warnings

import numpy as np
import pytest
import torch

import dreamdiffusion.core.compute as compute
from dreamdiffusion.core.compute import ComputeConfig, autocast_dtype, compute_record, is_launched, launch_command, native_bf16, prepare_module, relaunch, resolve_device, resolve_precision
from dreamdiffusion.core.config import ConfigError, parse_config
from dreamdiffusion.preprocess.processed import H5Array, take, write_h5
from dreamdiffusion.core.fileio import DataError
from dreamdiffusion.pretrain.model import MAEConfig, MaskedAutoencoder


def test_device_resolution_and_precision_checks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(ComputeConfig()).type == "cpu"
    with pytest.raises(DataError, match="compute.device: 'cuda' requested"):
        resolve_device(ComputeConfig(device="cuda"))
    with pytest.raises(ConfigError, match="generate.mixed_precision: fp16 needs a GPU"):
        autocast_dtype(ComputeConfig(device="cpu"), "fp16", "generate")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 may be emulated on this CPU (tested below)
        assert autocast_dtype(ComputeConfig(device="cpu"), "bf16", "finetune") is torch.bfloat16
    assert autocast_dtype(ComputeConfig(device="cpu"), "fp32", "finetune") is None
    with pytest.raises(ConfigError, match="accelerate_config"):
        parse_config(ComputeConfig, {"accelerate_config": " "}, "compute")


def fake_cpu(monkeypatch, flags: set, capability: str, onednn_isa: str | None = None):
    """Pretend to be a CPU with these /proc/cpuinfo flags, this torch capability and oneDNN cap."""
    monkeypatch.setattr(compute, "cpu_flags", lambda: set(flags))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    if onednn_isa is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn_isa)


@pytest.mark.parametrize("flags, capability, isa, native", [
    ({"avx2", "avx512f", "amx_bf16", "amx_tile"}, "AVX512", None, True),  # Sapphire Rapids
    ({"avx2", "avx512f", "avx512_bf16"}, "AVX512", None, True),  # Zen 4 / Cooper Lake
    ({"avx2", "fma"}, "AVX2", None, False),  # most laptops, Zen 2/3 servers
    ({"avx2", "avx512f", "avx512_bf16"}, "AVX2", None, False),  # ATEN_CPU_CAPABILITY=avx2
    ({"avx2", "avx512f", "avx512_bf16"}, "AVX512", "AVX2", False),  # ONEDNN_MAX_CPU_ISA=AVX2
    ({"avx2", "avx512f", "avx512_bf16"}, "AVX512", "AVX512_CORE", False),  # oneDNN below its bf16 ISA
    ({"avx2", "avx512f", "amx_bf16"}, "AVX512", "AVX512_CORE_AMX", True),
])
def test_auto_precision_is_bf16_only_where_the_cpu_runs_it_natively(monkeypatch, flags, capability, isa, native):
    fake_cpu(monkeypatch, flags, capability, isa)
    cpu = ComputeConfig(device="cpu")
    assert native_bf16(torch.device("cpu"))[0] is native
    assert resolve_precision(cpu, "auto", "generate") == ("bf16" if native else "fp32")
    assert resolve_precision(cpu, "fp32", "generate") == "fp32"  # fp32 stays fp32 everywhere
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_precision(cpu, "bf16", "generate") == "bf16"  # an explicit bf16 is kept ...
    messages = [str(w.message) for w in caught]
    if native:
        assert not messages
    else:  # ... with a warning naming the key and the cost
        assert len(messages) == 1 and "generate.mixed_precision: bf16 is emulated" in messages[0]
        assert "slower than fp32" in messages[0]


def test_the_compute_record_says_what_produced_the_numbers(monkeypatch):
    fake_cpu(monkeypatch, {"avx2"}, "AVX2", "AVX2")
    monkeypatch.setattr(compute, "USED_PRECISION", {})
    resolve_precision(ComputeConfig(device="cpu"), "auto", "generate")
    record = compute_record(ComputeConfig(device="cpu"))
    assert record["device"] == "cpu" and record["cpu_capability"] == "AVX2" and record["native_bf16"] is False
    assert record["precision"] == {"generate": "fp32"} and record["threads"] == torch.get_num_threads()
    assert record["kernel_caps"]["ONEDNN_MAX_CPU_ISA"] == "AVX2" and record["cpu_bf16_units"] == []


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
    from dreamdiffusion.core.progress import LOG_INTERVAL, progress

    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a TTY
    bar = progress(range(3), desc="x", file=io.StringIO())
    assert bar.mininterval >= LOG_INTERVAL
    monkeypatch.setenv("DREAMDIFFUSION_PROGRESS", "0")
    assert progress(range(3)).disable


def test_auto_threads_leave_the_cores_other_processes_keep_busy(monkeypatch):
    """threads 0: one thread per core nobody else keeps busy (oversubscribed OpenMP pools spin and
    run several times slower than their share); an explicit count is kept as given."""
    import subprocess
    import sys
    import threading

    stop = threading.Event()
    spinner = threading.Thread(target=lambda: [None for _ in iter(stop.is_set, True)], daemon=True)
    spinner.start()  # a busy thread of this process is not another process's load ...
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # ... a busy process is
    try:
        time.sleep(0.3)
        assert compute.other_runnable(samples=5, interval=0.01) >= 1
    finally:
        hog.kill()
        stop.set()
    monkeypatch.setattr(compute.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # set: it wins (tests/conftest.py sets it)
    before = torch.get_num_threads()
    try:
        for busy, expected in ((0, 4), (1, 3), (3, 1), (9, 1)):
            monkeypatch.setattr(compute, "other_runnable", lambda busy=busy: busy)
            assert compute.apply_threads(ComputeConfig()) == expected == torch.get_num_threads()
        assert compute.apply_threads(ComputeConfig(threads=2)) == 2  # pinned: bit-identical reruns
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        torch.set_num_threads(3)
        assert compute.apply_threads(ComputeConfig()) == 3  # the environment's count wins over the load
    finally:
        torch.set_num_threads(before)


def test_the_kernel_choice_is_read_from_params_and_portable_by_default(tmp_path):
    from dreamdiffusion.core.kernels import kernel_choice

    params = tmp_path / "params.yaml"
    assert kernel_choice(params) == "portable"  # no file: the stage's own parsing reports it
    params.write_text("compute:\n  cpu_kernels: native\n")
    assert kernel_choice(params) == "native"
    params.write_text("compute:\n  threads: 1\n")
    assert kernel_choice(params) == "portable"
    params.write_text("compute:\n  cpu_kernels: fastest\n")  # refused later, naming the key, by ComputeConfig
    assert kernel_choice(params) == "portable"
    with pytest.raises(ConfigError, match="cpu_kernels"):
        parse_config(ComputeConfig, {"cpu_kernels": "fastest"}, "compute")


@pytest.mark.parametrize("choice", ["portable", "native"])
def test_portable_kernels_cap_torch_at_avx2_before_it_loads(choice):
    """In a fresh process: `portable` makes torch, oneDNN and MKL run AVX2 kernels; `native` leaves them."""
    import os
    import subprocess
    import sys

    code = ("from dreamdiffusion.core.kernels import apply_kernel_choice; import sys; "
            f"apply_kernel_choice({choice!r}); import torch; print(torch.backends.cpu.get_cpu_capability())")
    env = {k: v for k, v in os.environ.items() if k not in compute.PORTABLE}
    found = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    unforced = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                              env=env, capture_output=True, text=True, check=True).stdout
    if choice == "native":
        assert found == unforced
    elif unforced.strip() in ("AVX512", "AMX", "AVX2"):  # an x86-64 CPU with at least AVX2
        assert found.strip() == "AVX2"
    with pytest.raises(RuntimeError, match="before torch"):  # torch is loaded in this process: too late
        from dreamdiffusion.core.kernels import apply_kernel_choice
        apply_kernel_choice("portable")
