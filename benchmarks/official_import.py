"""Time and peak memory of importing an official DreamDiffusion checkpoint of the real size.

Without --checkpoint, writes a random-weight checkpoint in the official layout and pickle format
(SD 1.5 UNet + VAE, the paper's 24-block encoder, the CLIP ViT-L/14 tower: ~5.6 GB) to a temporary
folder first. The import runs in its own process; its peak resident memory (ru_maxrss, which counts
the checkpoint pages it reads through its memory map) is printed as JSON with the time.

    python benchmarks/official_import.py [--checkpoint checkpoint_best.pth] [--tmp DIR]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from dreamdiffusion.finetune.official.convert import import_checkpoint
report = import_checkpoint(sys.argv[1], sys.argv[2])
print(json.dumps({"import_s": round(time.perf_counter() - t0, 1),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  "mapped": {p: r["mapped_keys"] for p, r in report["parts"].items()},
                  "dropped": {k: d["keys"] for k, d in report["dropped"].items()}}))
"""


def build(path: Path) -> None:
    """Write the random-weight real-size checkpoint (in a child process: its memory is returned at exit)."""
    code = ("import sys; sys.path.insert(0, 'tests'); from official_reference import Spec, random_state, "
            f"save_official; save_official({str(path)!r}, random_state(Spec()))")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def main() -> None:
    """Build (unless given) a checkpoint, import it in a child process, print the measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--tmp", type=Path, default=None, help="where the temporary files go (~10 GB)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        checkpoint = args.checkpoint or Path(tmp) / "checkpoint_best.pth"
        if args.checkpoint is None:
            build(checkpoint)
        done = subprocess.run([sys.executable, "-c", CHILD, str(checkpoint), str(Path(tmp) / "finetune")],
                              cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"the import failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["checkpoint_gb"] = round(checkpoint.stat().st_size / 1e9, 2)
        result["output_gb"] = round(sum(p.stat().st_size for p in (Path(tmp) / "finetune").rglob("*")) / 1e9, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
