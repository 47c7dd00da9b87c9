"""Peak resident memory of finetune, generate and evaluate against the number of trials.

    python benchmarks/memory_scaling.py                    # 50, 200, 800 trials (about 10 minutes on 2 cores)
    python benchmarks/memory_scaling.py --subjects 1 4     # fewer points

A scale model of the real run, documented here because the real shapes cannot train 800 trials on
a CPU: a synthetic world of 5 classes x 10 stimulus images at 256 px, seen by 1, 4 or 16 subjects
(50, 200, 800 trials), and miniature foundation models at that resolution (SD-style VAE with 8x
downsampling, so 4 x 32 x 32 latents). The images stay the same while the trials grow, so what
the benchmark shows is how memory depends on the number of trials alone: a per-trial copy of an
image (3 x 256 x 256 float32 = 768 KiB) would add ~600 MiB between 50 and 800 trials. Batch sizes
are small enough that every batch is full already at 50 trials (10 test trials): a batch that is
not yet full grows with the data until it is, which would read as growth here.

Each point runs the pipeline in a fresh copy of this working tree (`dvc repro`); every stage prints
its peak RSS ("<stage>: done in ... s, peak RSS ... MiB"), which this script collects.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
STAGES = ("finetune", "generate", "evaluate")
PIXELS = 256


def scale_params(subjects: int) -> dict:
    """params.yaml overrides of the scale model."""
    tiny_unet = {"block_out_channels": [16, 32], "norm_num_groups": 8, "attention_head_dim": 4, "steps": 3, "batch_size": 4}
    return {
        "download": {"synthetic": {"classes": 5, "shapes": 5, "images_per_class": 10, "extra_images_per_class": 2,
                                   "image_size": PIXELS, "subjects": subjects, "corpus_recordings": 2,
                                   "corpus_min_seconds": 2.0, "corpus_max_seconds": 3.0}},
        "preprocess": {"image_size": PIXELS, "figure_trials": 1},
        "foundation": {"source": "demo", "judge": {"channels": [8, 16], "feature_dim": 16, "epochs": 1, "batch_size": 8},
                       "clip": {"embed_dim": 16, "vision": "vit", "vision_width": 64, "vision_layers": 1,
                                "patch_size": 32, "text_layers": 1, "context_length": 16, "steps": 2, "batch_size": 8},
                       "vae": {"block_out_channels": [8, 8, 16, 16], "norm_num_groups": 8, "steps": 2, "batch_size": 4},
                       "unet": tiny_unet, "sample": {"per_class": 1, "inference_steps": 2, "grid_per_class": 1,
                                                     "batch_size": 8}},
        "pretrain": {"model": {"patch": 64, "width": 16, "depth": 1, "heads": 2, "decoder_width": 8, "decoder_depth": 1,
                               "decoder_heads": 2}, "epochs": 1, "batch_size": 8},
        "finetune": {"epochs": 1, "align_epochs": 0, "batch_size": 8, "val_every": 1, "val_trials": 10, "val_steps": 2,
                     "encode_batch_size": 16, "val_batch_size": 8},
        "generate": {"samples_per_eeg": 1, "steps": 2, "batch_size": 8, "decode_batch_size": 4},
        "evaluate": {"nway_draws": 5, "kid_subset_size": 10, "batch_size": 8, "fidelity_batch_size": 8},
    }


def measure(subjects: int) -> dict[str, float]:
    """Peak RSS (MiB) of each stage of STAGES in a pipeline of `subjects` x 50 trials."""
    from pipeline import make_repo_copy, run  # the tests' throwaway-repo helpers

    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo_copy(Path(tmp), scale_params(subjects))
        done = run(repo, "dvc", "repro", env={"DREAMDIFFUSION_PROGRESS": "0"})
        peaks = dict(re.findall(r"^(\w+): done in [\d.]+ s, peak RSS ([\d,.]+) MiB", done.stdout, flags=re.M))
    return {stage: float(peaks[stage].replace(",", "")) for stage in STAGES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, nargs="+", default=[1, 4, 16], help="50 trials each")
    args = parser.parse_args()
    print(f"scale model: {PIXELS} px, 50 stimulus images, 50 trials per subject; peak RSS in MiB")
    print("| trials | " + " | ".join(STAGES) + " |")
    print("|---|" + "---|" * len(STAGES))
    rows = []
    for subjects in args.subjects:
        peaks = measure(subjects)
        rows.append(peaks)
        print(f"| {50 * subjects} | " + " | ".join(f"{peaks[s]:,.0f}" for s in STAGES) + " |", flush=True)
    if len(rows) > 1:
        growth = {s: rows[-1][s] - rows[0][s] for s in STAGES}
        trials = 50 * (args.subjects[-1] - args.subjects[0])
        print("growth from first to last: " + ", ".join(f"{s} {growth[s]:+,.0f} MiB ({growth[s] * 1024 / trials:+.1f} KiB "
                                                        f"per trial)" for s in STAGES))


if __name__ == "__main__":
    main()
