"""The GPU check runs end to end at toy shapes on the CPU, so it is ready when a GPU is."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_every_kind_of_row_at_toy_shapes():
    rows = ["pretrain-official", "finetune", "generate-pndm"]
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--tiny", "--device", "cpu",
                           "--rows", *rows], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    found = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["row"] for r in found] == rows and not any("error" in r for r in found), found
    assert found[0]["samples_per_s"] > 0 and found[1]["s_per_step"] > 0 and found[2]["images_per_s"] > 0
