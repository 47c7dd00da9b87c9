"""Typed configs: parse a params section (a plain dict) into a frozen dataclass, strictly.

Every stage declares its section as a dataclass whose fields use `param(...)`. Parsing
rejects unknown keys (naming the allowed ones), wrong types, NaN and +-inf anywhere, and
out-of-range values (naming key and value), so a typo in params.yaml fails loudly instead of
being ignored. A section's `__post_init__` checks what ties its fields together; its errors
start with the field name (`bandpass: ...`), which parsing turns into `section.bandpass: ...`.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

PRECISIONS = ["fp32", "bf16", "fp16", "auto"]  # the choices of every stage's `mixed_precision` (dreamdiffusion.compute)


class ConfigError(ValueError):
    """A params section does not match its typed config."""


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key repeated in one mapping is an error (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def param(default: Any = dataclasses.MISSING, *, choices=None, min=None, max=None, pattern: str | None = None,
          help: str = "", run_key: bool = True):
    """A config field with optional allowed `choices`, inclusive `min`/`max` bounds and a full-match
    regular expression `pattern` for strings (`help` then says what it allows). `run_key=False`
    declares a field that does not change what is trained (cadence, reporting), so changing it
    resumes the same run (see `training.run_key`)."""
    meta = {"choices": choices, "min": min, "max": max, "pattern": pattern, "help": help, "run_key": run_key}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp, value, key: str):
    """Check `value` against the annotation `tp`; return it (lists become tuples-safe lists)."""
    if isinstance(value, float) and not math.isfinite(value):  # NaN passes every min/max comparison
        raise ConfigError(f"{key}: value {value!r} is not a finite number (NaN and +-inf are refused)")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(option, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: value {value!r} is not a {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r} ({type(value).__name__})")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(item_tp, item, f"{key}[{i}]") for i, item in enumerate(value)]
    if tp is Any:
        return value
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return parse_config(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported annotation {tp!r}")


def _check_range(field: dataclasses.Field, value, key: str) -> None:
    """Apply the `choices`/`min`/`max` metadata of `field` to `value` (each item of a list)."""
    items = value if isinstance(value, list) else [value]
    meta = field.metadata
    for item in items:
        if item is None:
            continue
        if meta.get("choices") is not None and item not in meta["choices"]:
            raise ConfigError(f"{key}: value {item!r} is not one of {list(meta['choices'])}")
        if meta.get("min") is not None and item < meta["min"]:
            raise ConfigError(f"{key}: value {item!r} is below the minimum {meta['min']}")
        if meta.get("max") is not None and item > meta["max"]:
            raise ConfigError(f"{key}: value {item!r} is above the maximum {meta['max']}")
        if meta.get("pattern") is not None and isinstance(item, str) and not re.fullmatch(meta["pattern"], item):
            raise ConfigError(f"{key}: value {item!r} is not allowed: {meta['help'] or 'expected ' + meta['pattern']}")


def parse_config(cls, values: dict | None, section: str):
    """Build dataclass `cls` from `values`, the params found under `section`."""
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ConfigError(f"{section}: expected a mapping of keys, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{section}: unknown key(s) {', '.join(unknown)}; allowed keys: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        key = f"{section}.{name}"
        if name not in values:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: required key is missing")
            continue
        kwargs[name] = _coerce(hints[name], values[name], key)
        _check_range(field, kwargs[name], key)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        field_name = str(err).split(":", 1)[0]
        raise ConfigError(f"{section}.{err}" if field_name in fields else f"{section}: {err}") from None


def with_overrides(config, overrides: list[str], section: str):
    """`config` with dotted `key.sub=value` overrides (values parsed as YAML), re-validated."""
    values = to_dict(config)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{section}: override {item!r} is not of the form key=value")
        *parents, leaf = key.split(".")
        node = values
        for parent in parents:
            if not isinstance(node.get(parent), dict):
                raise ConfigError(f"{section}.{key}: {parent!r} is not a section of {section}")
            node = node[parent]
        node[leaf] = yaml.safe_load(value)
    return parse_config(type(config), values, section)


def to_dict(config) -> dict:
    """Plain-dict view of a config (for logging and for checkpoints that carry their config)."""
    return dataclasses.asdict(config)


def load_params_document(path: str | Path) -> dict:
    """The whole params file, untyped (duplicate keys refused); see `load_params`."""
    path = Path(path)
    try:
        with open(path) as handle:
            document = yaml.load(handle, Loader=UniqueKeyLoader) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(document).__name__}")
    return document


def load_params(path: str | Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Read the sections named in `spec` from a params YAML file and type each one.

    `spec` maps a top-level key to a dataclass (a section) or a plain type (a scalar such as
    `seed`). Only those keys are returned: a stage cannot read what it did not declare.
    """
    path = Path(path)
    document = load_params_document(path)
    out = {}
    for key, tp in spec.items():
        if dataclasses.is_dataclass(tp):
            out[key] = parse_config(tp, document.get(key), key)
        elif key not in document:
            raise ConfigError(f"{path}: required top-level key {key!r} is missing")
        else:
            out[key] = _coerce(tp, document[key], key)
    return out
