"""How decodable is one synthetic EEG trial? Linear-probe accuracy for a few snr values.

    .venv/bin/python benchmarks/synthetic_decodability.py [--snr 0.1 0.2 0.4] [--seed 0]

For each snr: generate the paired part of the synthetic world (no extra images, no corpus)
in a temporary folder, then fit a logistic regression on single trials, loader-style
(450 <= T <= 600, crop 20:460, linear resampling to 512, 16 time bins), on the train split and
score it on val. Prints accuracy, chance and the time taken (generation and probe).
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from dreamdiffusion.core.fileio import safe_torch_load
from dreamdiffusion.download.synthetic import SyntheticConfig, generate_world, probe_features
from dreamdiffusion.pretrain.probe import probe_classifier


def probe_decodability(eeg_file: Path, splits_file: Path, split: int = 0, bins: int = 16,
                       C: float = 0.01) -> dict:
    """Single-trial class decoding by logistic regression: train on `train`, score on `val`."""
    start = time.perf_counter()
    features, labels, trials = probe_features(eeg_file, bins)
    parts = safe_torch_load(splits_file)["splits"][split]
    train, val = (np.isin(trials, parts[name]) for name in ("train", "val"))
    model = probe_classifier(C)
    model.fit(features[train], labels[train])
    return {"train_acc": float(model.score(features[train], labels[train])),
            "val_acc": float(model.score(features[val], labels[val])),
            "n_train": int(train.sum()), "n_val": int(val.sum()),
            "chance": float(1 / len(np.unique(labels))), "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = SyntheticConfig()
    parser.add_argument("--snr", type=float, nargs="+",
                        default=[default.snr / 2, default.snr, default.snr * 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", type=int, default=default.classes)
    parser.add_argument("--block-drift", type=float, default=0.0)
    parser.add_argument("--C", type=float, default=0.01, help="inverse L2 strength of the probe")
    args = parser.parse_args()
    print(f"{'snr':>6} {'val_acc':>8} {'train_acc':>9} {'chance':>6} {'n_train':>7} {'n_val':>5} "
          f"{'gen_s':>6} {'probe_s':>7}")
    for snr in args.snr:
        config = dataclasses.replace(default, snr=snr, classes=args.classes, block_drift=args.block_drift,
                                     extra_images_per_class=0, corpus_recordings=0)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            manifest = generate_world(config, args.seed, Path(tmp))
            generated = time.perf_counter() - start
            probe = probe_decodability(Path(tmp) / manifest.eeg_file, Path(tmp) / manifest.splits_file,
                                       C=args.C)
        print(f"{snr:6.3f} {probe['val_acc']:8.3f} {probe['train_acc']:9.3f} {probe['chance']:6.3f} "
              f"{probe['n_train']:7d} {probe['n_val']:5d} {generated:6.1f} {probe['seconds']:7.1f}",
              flush=True)


if __name__ == "__main__":
    main()
