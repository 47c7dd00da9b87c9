"""Is the pretraining gain real? Linear probes of the pretrained vs a random-init encoder, over seeds.

    python benchmarks/pretrain_probe_seeds.py --seeds 0 1 2
    python benchmarks/pretrain_probe_seeds.py --seeds 0 1 -S model.patch=4 -S epochs=10

Trains the `pretrain` params section (with -S overrides, dotted keys inside it) on the processed
corpus for each seed, exactly as the stage does (no checkpoints), then probes the frozen encoder
and random-init encoders of the same config (`probe_random_inits` of them, averaged, as the stage
does; cls token and mean of the tokens). Two estimates per probe: paired train -> val (the stage's
metric, 159 val trials in the demo) and 5-fold cross-validation on the train split grouped by
stimulus image (lower variance); test trials are never read. Prints one row per seed and each gain
as mean +- std over seeds. Needs data/processed/{corpus,eeg}.h5 (`dvc repro preprocess`).
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="pretrain.<key>=<value>")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    from dreamdiffusion.core.config import load_params, with_overrides
    from dreamdiffusion.preprocess.processed import load_corpus, load_paired_eeg
    from dreamdiffusion.pretrain.config import PretrainConfig
    from dreamdiffusion.pretrain.train import train
    from dreamdiffusion.pretrain.probe import POOLINGS, probe_with_random_init

    config = with_overrides(load_params(args.params, {"pretrain": PretrainConfig})["pretrain"], args.overrides, "pretrain")
    corpus = load_corpus("data/processed/corpus.h5")
    paired = load_paired_eeg("data/processed/eeg.h5", splits=("train", "val"))
    print(f"corpus {len(corpus.eeg)} windows from {sorted(set(corpus.sources))}; overrides {args.overrides or 'none'}; "
          f"random-init baseline over {config.probe_random_inits} encoders")
    print("seed  seconds  val_mse  " + "  ".join(f"{p}: trained/random val (cv)" for p in POOLINGS))
    gains = {(pooling, kind): [] for pooling in POOLINGS for kind in ("val", "cv")}
    for seed in args.seeds:
        start = time.perf_counter()
        result = train(config, corpus, seed)
        seconds = time.perf_counter() - start
        trained, random_init = probe_with_random_init(result.model.encoder, paired, seed, config.probe_c,
                                                      config.probe_random_inits, cross_validate=True)
        cells = []
        for pooling in POOLINGS:
            gains[pooling, "val"].append(trained[pooling]["top1"] - random_init[pooling]["top1"])
            gains[pooling, "cv"].append(trained[pooling]["cv_top1"] - random_init[pooling]["cv_top1"])
            cells.append(f"{pooling}: {trained[pooling]['top1']:.3f}/{random_init[pooling]['top1']:.3f} "
                         f"({trained[pooling]['cv_top1']:.3f}/{random_init[pooling]['cv_top1']:.3f})")
        print(f"{seed:4d}  {seconds:7.1f}  {result.history[-1]['val_loss']:.3f}  " + "  ".join(cells), flush=True)
    for (pooling, kind), values in gains.items():
        print(f"{pooling} probe gain over random init ({kind}): {np.mean(values):+.3f} +- {np.std(values):.3f} "
              f"(min {min(values):+.3f}, {len(values)} seeds)")


if __name__ == "__main__":
    main()
