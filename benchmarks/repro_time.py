"""Wall time of the default pipeline end to end (`dvc repro` in a fresh copy), per stage, and
whether two runs give the same numbers.

    python benchmarks/repro_time.py            # one run (~8 minutes on 2 idle cores)
    python benchmarks/repro_time.py --runs 2   # two fresh copies; compares every metrics/*.json
    python benchmarks/repro_time.py --compare metrics   # one run, compared with this tree's metrics/

Each run copies this working tree (with the shipped foundation, without data/, models' outputs,
metrics/ or the DVC cache) into a temporary git repo and runs `dvc repro` there, as `make repro`
would after setup. Stage times are what each stage prints ("<stage>: done in ... s"); the rest of
the wall time is DVC itself (hashing, lock files) and the Python start of each stage.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def one_run() -> tuple[float, dict[str, float], dict[str, dict]]:
    """(wall seconds, seconds per stage, {metrics file: payload}) of `dvc repro` in a fresh copy."""
    from pipeline import make_repo_copy, run  # the tests' throwaway-repo helpers

    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo_copy(Path(tmp))
        start = time.perf_counter()
        done = run(repo, "dvc", "repro", env={"DREAMDIFFUSION_PROGRESS": "0"})
        wall = time.perf_counter() - start
        stages = {stage: float(s) for stage, s in re.findall(r"^(\w+): done in ([\d.]+) s", done.stdout, flags=re.M)}
        metrics = {p.name: json.loads(p.read_text()) for p in sorted((repo / "metrics").glob("*.json"))}
    return wall, stages, metrics


def differences(first: dict, second: dict, prefix: str = "") -> list[str]:
    """Keys whose values differ between two nested payloads (timings excluded)."""
    out = []
    for key in sorted(set(first) | set(second)):
        a, b, name = first.get(key), second.get(key), f"{prefix}{key}"
        if "second" in key or "time" in key or key.endswith("per_s"):  # timings and throughputs
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, name + ".")
        elif a != b:
            out.append(f"{name}: {a} vs {b}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--compare", type=Path, help="a metrics folder (e.g. this tree's) to compare run 1 with")
    args = parser.parse_args()
    results = []
    if args.compare:
        results.append({p.name: json.loads(p.read_text()) for p in sorted(args.compare.glob("*.json"))})
    for index in range(args.runs):
        wall, stages, metrics = one_run()
        results.append(metrics)
        print(f"run {index + 1}: dvc repro {wall:.0f} s = stages {sum(stages.values()):.0f} s "
              f"+ DVC and process start {wall - sum(stages.values()):.0f} s", flush=True)
        print("  " + ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in stages.items()), flush=True)
        print(f"  eval nway_top1 {metrics['eval.json']['nway_top1']:.3f}, controls {metrics['eval.json']['controls']}")
    reference = "the metrics in " + str(args.compare) if args.compare else "run 1"
    for index, metrics in enumerate(results[1:], start=1 if args.compare else 2):
        found = [d for name in metrics for d in differences(results[0].get(name, {}), metrics[name], f"{name}:")]
        print(f"run {index} vs {reference}: " + ("every metric identical" if not found else
                                                  f"{len(found)} differ: " + "; ".join(found[:10])))


if __name__ == "__main__":
    main()
