"""Two processes on the CPU through `accelerate launch`: both end with the same model (DDP, gloo).

accelerate 1.15 runs a single process for `launch --cpu --num_processes 2` (its CPU launcher
only fans out through mpirun); `--multi_gpu` with ACCELERATE_USE_CPU=true starts the two
processes with torch.distributed.run and accelerate then sets them up as MULTI_CPU.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from dreamdiffusion.preprocess.processed import write_h5

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {
    "model": {"channels": 4, "samples": 32, "patch": 4, "width": 16, "depth": 1, "heads": 2, "mlp_ratio": 2.0,
              "decoder_width": 8, "decoder_depth": 1, "decoder_heads": 2, "mask_ratio": 0.5},
    "epochs": 2, "batch_size": 4, "lr": 3e-3, "warmup_epochs": 0.5, "val_fraction": 0.25,
}
WORKER = """
import json, sys
from pathlib import Path
import torch
from accelerate import PartialState
from safetensors.torch import save_file
from dreamdiffusion.core.config import parse_config
from dreamdiffusion.preprocess.processed import load_corpus
from dreamdiffusion.pretrain.model import MaskedAutoencoder
from dreamdiffusion.pretrain.train import PretrainConfig, train

out = Path(sys.argv[3])
config = parse_config(PretrainConfig, json.loads(sys.argv[1]), "pretrain")
torch.manual_seed(0)
save_file(MaskedAutoencoder(config.model).state_dict(), str(out / "init.safetensors"))
result = train(config, load_corpus(sys.argv[2]), 0, out / "checkpoints", "corpus")
rank = PartialState().process_index
save_file(result.model.state_dict(), str(out / f"rank{rank}.safetensors"))
(out / f"rank{rank}.json").write_text(json.dumps({"history": result.history, "processes": PartialState().num_processes}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_end_with_identical_weights(tmp_path):
    rng = np.random.default_rng(0)
    eeg = np.sin(np.arange(32) * rng.uniform(0.1, 0.5, (48, 4, 1))).astype(np.float32)
    write_h5(tmp_path / "corpus.h5", {"eeg": eeg, "recording": np.arange(8).repeat(6),
                                      "recordings": [f"r{i}" for i in range(8)], "sources": ["synthetic"] * 8})
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()),
           str(tmp_path / "worker.py"), json.dumps(CONFIG), str(tmp_path / "corpus.h5"), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    init = load_file(str(tmp_path / "init.safetensors"))
    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert rank0.keys() == rank1.keys() == init.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert any(not torch.equal(rank0[k], init[k]) for k in init)  # it did train
    info = json.loads((tmp_path / "rank0.json").read_text())
    assert info["processes"] == 2
    # 36 training windows, batch 4 per process: 4 steps per epoch, 32 windows seen per epoch
    assert [h["samples"] for h in info["history"]] == [32, 32]
    other = json.loads((tmp_path / "rank1.json").read_text())
    for mine, theirs in zip(info["history"], other["history"]):  # losses are reduced over both processes
        assert (mine["train_loss"], mine["val_loss"]) == (theirs["train_loss"], theirs["val_loss"])
