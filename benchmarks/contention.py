"""How much a stage slows down when another process keeps every core busy.

    python benchmarks/contention.py                          # stages download, foundation, pretrain (4 epochs)
    python benchmarks/contention.py --stages pretrain --set pretrain.epochs=2

Sets up a fresh copy of the repository (default params plus --set), runs the pipeline up to the
stages' inputs, then times each stage script alone and again beside one CPU-bound process per core
(`while True: pass`), and prints the ratio. Sharing N cores with N busy processes leaves the stage
about half of them, so a ratio of ~2 is the fair share; oversubscribed thread pools that spin while
they wait (OpenMP's default) make it far worse.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
UPSTREAM = {"download": None, "foundation": "preprocess", "pretrain": "preprocess", "finetune": "pretrain", "generate": "finetune"}


def timed_stage(repo: Path, stage: str, busy: int) -> float:
    """Seconds of `python stages/<stage>.py` in `repo` beside `busy` CPU-bound processes."""
    from pipeline import environment

    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        time.sleep(0.5)
        start = time.perf_counter()
        subprocess.run([sys.executable, f"stages/{stage}.py"], cwd=repo, check=True, capture_output=True,
                       env=environment({"DREAMDIFFUSION_PROGRESS": "0"}))
        return time.perf_counter() - start
    finally:
        for hog in hogs:
            hog.kill()


def main() -> int:
    from dreamdiffusion.tools.ablation.queue import parse_sets  # key.sub=value strings -> nested overrides
    from pipeline import make_repo_copy, run

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", default=["download", "foundation", "pretrain"],
                        choices=sorted(UPSTREAM))
    parser.add_argument("--set", nargs="*", default=["pretrain.epochs=4", "finetune.epochs=3",
                                                     "finetune.align_epochs=2"], help="params overrides key=value")
    parser.add_argument("--busy", type=int, default=os.cpu_count(), help="CPU-bound processes beside the stage")
    args = parser.parse_args()
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo_copy(Path(tmp), parse_sets(args.set))
        for stage in args.stages:
            if UPSTREAM[stage]:
                run(repo, "dvc", "repro", UPSTREAM[stage])
            alone, shared = timed_stage(repo, stage, 0), timed_stage(repo, stage, args.busy)
            worst = max(worst, shared / alone)
            print(f"{stage}: alone {alone:.1f} s, beside {args.busy} busy processes {shared:.1f} s: "
                  f"ratio {shared / alone:.2f}", flush=True)
    print(f"worst ratio {worst:.2f} (fair share on {os.cpu_count()} cores: ~2; target <= 2.5)")
    return int(worst > 2.5)


if __name__ == "__main__":
    sys.exit(main())
