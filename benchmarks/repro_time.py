"""Wall time of the default pipeline end to end (`dvc repro` in a fresh copy), per stage, with portable
or native CPU kernels, and whether the numbers agree.

    python benchmarks/repro_time.py                            # one run, the default (portable kernels)
    python benchmarks/repro_time.py --kernels native           # compute.cpu_kernels: native
    python benchmarks/repro_time.py --kernels portable native  # both; prints the spread of every headline
                                                               # metric, exits 1 if nway_top1 differs by
                                                               # more than --tolerance (0.03)
    python benchmarks/repro_time.py --kernels native-avx2      # native, on a CPU forced to AVX2
    python benchmarks/repro_time.py --runs 2                   # two fresh copies; compares every metric
    python benchmarks/repro_time.py --compare metrics          # one run, compared with this tree's metrics/

Portable kernels (the default, dreamdiffusion.core.kernels) are what an AVX2-only CPU runs: torch's own
kernels at ATEN_CPU_CAPABILITY=avx2, oneDNN's convolutions and matmuls at ONEDNN_MAX_CPU_ISA=AVX2,
MKL's GEMMs at MKL_ENABLE_INSTRUCTIONS=AVX2; `native-avx2` forces the same caps from the environment
on a native run (bf16 is then emulated, ~17-22x slower than fp32). Neither reproduces an AVX2-only
CPU's clock, cache sizes or memory bandwidth.

Each run copies this working tree (with the shipped foundation, without data/, models' outputs,
metrics/ or the DVC cache) into a temporary git repo and runs `dvc repro` there, as `make repro`
would after setup. Stage times are what each stage prints ("<stage>: done in ... s"); the rest of
the wall time is DVC itself (hashing, lock files) and the Python start of each stage.
`--save FILE` keeps each run's times and metrics (json) for a later report.
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

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
SKIPPED = ("second", "time", "per_s", "compute")  # timings, throughputs and the machine record differ by design


NATIVE = {"compute": {"cpu_kernels": "native"}}
SETTINGS = {"portable": (None, None), "native": (NATIVE, None), "native-avx2": (NATIVE, AVX2)}  # (params, env)


def one_run(env: dict | None = None, params: dict | None = None) -> tuple[float, dict[str, float], dict[str, dict]]:
    """(wall seconds, seconds per stage, {metrics file: payload}) of `dvc repro` in a fresh copy."""
    from pipeline import make_repo_copy, run  # the tests' throwaway-repo helpers

    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo_copy(Path(tmp), params)
        start = time.perf_counter()
        done = run(repo, "dvc", "repro", env={"DREAMDIFFUSION_PROGRESS": "0", **(env or {})})
        wall = time.perf_counter() - start
        stages = {stage: float(s) for stage, s in re.findall(r"^(\w+): done in ([\d.]+) s", done.stdout, flags=re.M)}
        metrics = {p.name: json.loads(p.read_text()) for p in sorted((repo / "metrics").glob("*.json"))}
    return wall, stages, metrics


def differences(first: dict, second: dict, prefix: str = "") -> list[str]:
    """Keys whose values differ between two nested payloads (timings and the machine record excluded)."""
    out = []
    for key in sorted(set(first) | set(second)):
        a, b, name = first.get(key), second.get(key), f"{prefix}{key}"
        if any(part in key for part in SKIPPED):
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, name + ".")
        elif a != b:
            out.append(f"{name}: {a} vs {b}")
    return out


def headline(metrics: dict) -> dict[str, float]:
    """Every headline number of a run, flattened: 'eval.json:nway_top1' -> value."""
    def flat(payload, prefix):
        for key, value in payload.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                yield f"{prefix}{key}", float(value)
    return {key: value for name, payload in metrics.items() if not name.endswith("_details.json")
            for key, value in flat(payload, f"{name}:")}


def spread_table(runs: dict[str, dict]) -> str:
    """A markdown table: each headline metric under each setting, and the largest difference."""
    names = list(runs)
    values = {name: headline(metrics) for name, metrics in runs.items()}
    keys = sorted(set().union(*values.values()))
    lines = [f"| metric | {' | '.join(names)} | spread |", "|---" * (len(names) + 2) + "|"]
    for key in keys:
        found = [values[n].get(key) for n in names]
        known = [v for v in found if v is not None]
        spread = max(known) - min(known) if known else float("nan")
        lines.append(f"| {key} | " + " | ".join("-" if v is None else f"{v:.4g}" for v in found) + f" | {spread:.3g} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernels", nargs="+", choices=sorted(SETTINGS), default=["portable"])
    parser.add_argument("--runs", type=int, default=1, help="runs per --kernels setting")
    parser.add_argument("--compare", type=Path, help="a metrics folder (e.g. this tree's) to compare run 1 with")
    parser.add_argument("--tolerance", type=float, default=0.03, help="largest nway_top1 difference between settings")
    parser.add_argument("--save", type=Path, help="write every run's times and metrics to this json file")
    args = parser.parse_args()
    results, saved = [], []
    if args.compare:
        results.append(("metrics in " + str(args.compare),
                        {p.name: json.loads(p.read_text()) for p in sorted(args.compare.glob("*.json"))}))
    for kernels in args.kernels:
        for index in range(args.runs):
            params, env = SETTINGS[kernels]
            wall, stages, metrics = one_run(env, params)
            label = f"{kernels} run {index + 1}"
            results.append((label, metrics))
            saved.append({"kernels": kernels, "wall": wall, "stages": stages, "metrics": metrics})
            print(f"{label}: dvc repro {wall:.0f} s = stages {sum(stages.values()):.0f} s "
                  f"+ DVC and process start {wall - sum(stages.values()):.0f} s", flush=True)
            print("  " + ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in stages.items()), flush=True)
            print(f"  eval nway_top1 {metrics['eval.json']['nway_top1']:.3f}, controls {metrics['eval.json']['controls']}")
            if args.save:
                args.save.write_text(json.dumps(saved, indent=1))
    reference, first = results[0]
    for label, metrics in results[1:]:
        found = [d for name in metrics for d in differences(first.get(name, {}), metrics[name], f"{name}:")]
        print(f"{label} vs {reference}: " + ("every metric identical" if not found else
                                             f"{len(found)} differ: " + "; ".join(found[:10])))
    if len(results) > 1:
        print(spread_table(dict(results)))
        nway = [m["eval.json"]["nway_top1"] for _, m in results]
        spread = max(nway) - min(nway)
        print(f"nway_top1 spread {spread:.4f} (tolerance {args.tolerance}): {'ok' if spread <= args.tolerance else 'FAIL'}")
        return int(spread > args.tolerance)
    return 0


if __name__ == "__main__":
    sys.exit(main())
