"""`python -m dreamdiffusion.tools.presets {list,show,apply,run} [preset] [-- dvc exp run args]`."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

from dreamdiffusion.core.config import ConfigError, load_params_document
from dreamdiffusion.tools.presets import available, leaves, load_preset, merge, preset_path, validate


def apply(overrides: dict, params_file: Path) -> None:
    """Write `overrides` into `params_file` in place, keeping its comments and layout (ruamel round trip)."""
    from ruamel.yaml import YAML

    round_trip = YAML()
    round_trip.preserve_quotes = True
    round_trip.indent(mapping=2, sequence=4, offset=2)  # params.yaml's own block style
    round_trip.representer.add_representer(
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null"))
    document = round_trip.load(params_file.read_text())
    for key, value in leaves(overrides):
        *parents, leaf = key.split(".")
        node = document
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    tmp = params_file.with_name(f".{params_file.name}.tmp")
    with open(tmp, "w") as handle:
        round_trip.dump(document, handle)
    tmp.replace(params_file)


def exp_run_command(overrides: dict, extra: list[str]) -> list[str]:
    """`dvc exp run` with one `-S key=value` per leaf (values as YAML flow, as DVC parses them)."""
    sets = []
    for key, value in leaves(overrides):
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
        sets += ["-S", f"{key}={text.removesuffix(chr(10) + '...').strip()}"]
    return ["dvc", "exp", "run", *sets, *extra]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dreamdiffusion.tools.presets", description=__doc__)
    parser.add_argument("action", choices=["list", "show", "apply", "run"])
    parser.add_argument("preset", nargs="?", help="a preset name (see `list`) or a preset file")
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("extra", nargs="*", help="after `--`: more `dvc exp run` arguments")
    args = parser.parse_args(argv)
    if args.action == "list":
        print("\n".join(available()))
        return 0
    try:
        if args.preset is None:
            raise ConfigError(f"{args.action}: name a preset ({', '.join(available())})")
        overrides = load_preset(args.preset)
        validate(merge(load_params_document(args.params), overrides))
    except ConfigError as err:
        print(f"presets: error: {err}", file=sys.stderr)
        return 2
    if args.action == "show":
        print(f"# {preset_path(args.preset)}\n" + "\n".join(f"{k} = {v!r}" for k, v in leaves(overrides)))
    elif args.action == "apply":
        apply(overrides, args.params)
        print(f"applied {preset_path(args.preset)} to {args.params} ({len(leaves(overrides))} params)")
    else:
        return subprocess.run(exp_run_command(overrides, args.extra)).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
