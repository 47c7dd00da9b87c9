"""How many sampling steps does the fine-tuned model need? Val n-way per number of DDIM steps, no retraining.

    python benchmarks/val_steps.py --steps 4 5 6        # every val trial (159 in the demo), one image each
    python benchmarks/val_steps.py --steps 6 --trials 60

Generates from the val trials with the model `finetune` kept (models/finetune, on models/foundation), as
the stage's validation does (its seeds, guidance `finetune.val_guidance`, batches of `finetune.val_batch_size`
trials), once per step count, and scores each set with the foundation's judge: n-way top-1 against the
judge's class of the ground-truth image (`finetune.nway`, `finetune.nway_draws`), with its standard error
over trials, and FID / IS against the val ground-truth images (as `evaluate` computes them on test: the
foundation's feature extractor; one image per trial, so noisier than the test figure). `generate.steps` and `finetune.val_steps` sample the same way, so this is what either would
score on val. The sampling is the only thing that changes: the model, and so fine-tuning's own choice among
its epochs, stays as trained. Test trials are never read. Runs the CPU kernels `compute.cpu_kernels` names,
as the stages do. Needs `dvc repro finetune` first.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dreamdiffusion.core.kernels import apply_kernel_choice, kernel_choice  # noqa: E402  (imports no torch)


def val_images(generator, eeg, seeds: list[int], steps: int, guidance: float, batch_size: int):
    """Images (N, 3, H, W) from the val EEG (N, C, T), `batch_size` trials per sampling call."""
    import torch

    return torch.cat([generator.images(eeg[i : i + batch_size], seeds[i : i + batch_size], "ddim", steps, guidance)
                      for i in range(0, len(eeg), batch_size)])


def fid_is(images, truth, foundation) -> tuple[float, float]:
    """(FID, IS mean) of images (N, 3, H, W) against `truth` (N, 3, H, W), both in [0, 1], as PNGs."""
    import tempfile

    from PIL import Image

    from dreamdiffusion.evaluate.fidelity import fidelity_metrics
    from dreamdiffusion.generate.run import to_uint8

    kwargs = foundation.fidelity_kwargs()
    with tempfile.TemporaryDirectory() as gen, tempfile.TemporaryDirectory() as ref:
        for folder, batch in ((gen, images), (ref, truth)):
            for i, pixels in enumerate(to_uint8(batch)):
                Image.fromarray(pixels).save(Path(folder) / f"{i:05d}.png")
        out = fidelity_metrics(sorted(str(p) for p in Path(gen).glob("*.png")), ref,
                               feature_extractor=kwargs["feature_extractor"],
                               weights_path=kwargs["feature_extractor_weights_path"], kid_subset_size=min(100, len(images)),
                               isc_splits=min(10, len(images)))
    return out["fid"], out["is_mean"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 5, 6])
    parser.add_argument("--trials", type=int, default=0, help="val trials, evenly spaced (0: all)")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    args = parser.parse_args()
    apply_kernel_choice(kernel_choice(args.params))

    import numpy as np
    import torch

    from dreamdiffusion.core.compute import ComputeConfig, apply_threads
    from dreamdiffusion.core.config import load_params
    from dreamdiffusion.core.nway import nway_topk, true_classes_from
    from dreamdiffusion.finetune.config import FinetuneConfig
    from dreamdiffusion.finetune.load import load_generator
    from dreamdiffusion.foundation.images import to_float_images
    from dreamdiffusion.foundation.judge import predict
    from dreamdiffusion.preprocess.processed import load_images, load_paired_eeg

    params = load_params(args.params, {"finetune": FinetuneConfig, "compute": ComputeConfig, "seed": int})
    config, seed = params["finetune"], params["seed"]
    apply_threads(params["compute"])
    val = load_paired_eeg(ROOT / "data/processed/eeg.h5", splits=("val",))
    count = len(val.label) if args.trials <= 0 else min(args.trials, len(val.label))
    probe = np.linspace(0, len(val.label) - 1, count).round().astype(int)  # as finetune picks its val trials
    eeg = torch.from_numpy(val.eeg[probe])
    generator = load_generator(ROOT / "models/finetune", ROOT / "models/foundation", parts=("stable_diffusion", "judge"))
    judge = generator.foundation
    truth = to_float_images(load_images(ROOT / "data/processed/images.h5").images[val.image_index[probe]])
    true_classes = true_classes_from(predict(judge.judge, judge.judge_transform, truth, config.val_batch_size).numpy())
    seeds = [seed + int(r) for r in probe]
    print(f"{count} val trials, guidance {config.val_guidance}, {config.nway}-way (capped at the judge's classes), "
          f"{config.nway_draws} draws; threads {torch.get_num_threads()}")
    print("steps  val n-way top-1  +- s.e.  val FID  val IS  sampling seconds")
    for steps in args.steps:
        start = time.perf_counter()
        images = val_images(generator, eeg, seeds, steps, config.val_guidance, config.val_batch_size)
        probs = predict(judge.judge, judge.judge_transform, images, config.val_batch_size).softmax(-1).numpy()
        seconds = time.perf_counter() - start
        hits = np.asarray(nway_topk(probs, true_classes, config.nway, 1, config.nway_draws, seed), dtype=float)
        fid, inception = fid_is(images, truth, judge)
        print(f"{steps:5d}  {hits.mean():15.3f}  {hits.std(ddof=1) / np.sqrt(len(hits)):7.3f}  {fid:7.2f}  "
              f"{inception:6.2f}  {seconds:16.1f}", flush=True)


if __name__ == "__main__":
    main()
