"""python -m dreamdiffusion.finetune.official import CHECKPOINT --out DIR [--ldm-config config15.yaml]

Imports an official DreamDiffusion checkpoint without running code from it: a generation
checkpoint (checkpoint_best.pth / checkpoint.pth) becomes a `models/finetune` folder, an encoder
checkpoint of the official pretraining script a `models/pretrain` folder. Prints the mapping
report (keys mapped / dropped per part); exit status 1 with a one-line error on a refused file.
"""
from __future__ import annotations

import argparse
import json
import sys

from dreamdiffusion.core.fileio import DataError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m dreamdiffusion.finetune.official", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="convert an official checkpoint into our model folder")
    imp.add_argument("checkpoint", help="checkpoint_best.pth, checkpoint.pth, or an encoder checkpoint")
    imp.add_argument("--out", required=True, help="output folder (e.g. models/finetune); replaced atomically")
    imp.add_argument("--ldm-config", default=None,
                     help="the official LDM yaml (pretrains/models/config15.yaml); default: Stable Diffusion 1.5's")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the command; 0 on success, 1 with the error on stderr."""
    from dreamdiffusion.finetune.official.convert import import_checkpoint, read_ldm_config

    args = parse_args(argv)
    try:
        report = import_checkpoint(args.checkpoint, args.out, read_ldm_config(args.ldm_config))
    except (DataError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
