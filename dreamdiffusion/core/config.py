"""Typed configs: parse a params section (a plain dict) into a frozen dataclass, strictly.

Every stage declares its section as a dataclass whose fields use `param(...)`. Parsing
rejects unknown keys (naming the allowed ones), wrong types, NaN and +-inf anywhere, and
out-of-range values (naming key and value), so a typo in params.yaml fails loudly instead of
being ignored. A section's `__post_init__` checks what ties its fields together; its errors
start with the field name (`bandpass: ...`), which parsing turns into `section.bandpass: ...`.

Every YAML the project reads as params (params.yaml, presets, `key=value` overrides) goes through one
loader (`load_yaml_text`, `load_yaml_file`, `load_params_document`): files over `MAX_YAML_BYTES` are
refused before they are parsed, anchors and aliases are refused (a few lines of aliases can expand into
gigabytes: the "billion laughs" attack), a repeated key is an error, and a params file may hold only the
known top-level sections. Values in messages are shortened (`shown`), and no message exceeds
`MAX_MESSAGE_CHARS`, so a hostile file gives a one-line error, never a huge one.
"""
from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import stat
import types
import typing
from pathlib import Path
from typing import Any

import yaml

PRECISIONS = ["fp32", "bf16", "fp16", "auto"]  # the choices of every stage's `mixed_precision` (dreamdiffusion.core.compute)
PARAMS_SECTIONS = ("seed", "tracking", "compute", "download", "preprocess", "foundation", "pretrain", "finetune",
                   "generate", "evaluate")  # the top-level keys of params.yaml (tests/test_params_bounds.py checks)
MAX_YAML_BYTES = 1 << 20  # params.yaml is ~12 KiB; a larger params file is refused unparsed
MAX_YAML_DEPTH = 32  # nesting levels (params.yaml has 4); deeper would exhaust PyYAML's recursion
MAX_PARAMS = 2000  # leaves of a params file (params.yaml has ~200), each an MLflow param of the parent run
MAX_LIST_ITEMS = 1000  # items of any list-valued param
MAX_MESSAGE_CHARS = 1000
# Upper bounds shared by the size and count params: generous (the paper's scale fits with room to
# spare: 1024-wide, 24-deep encoders, 512 px images, 250 PLMS steps, 2000 epochs) but finite.
MAX_EPOCHS = 10_000
MAX_STEPS = 10_000_000  # optimizer steps
MAX_SAMPLING_STEPS = 1000  # diffusion sampling steps: the schedulers' 1000 training timesteps
MAX_BATCH = 4096
MAX_WIDTH = 8192  # channels, widths, embedding dimensions
MAX_LAYERS = 256  # depth, layers per block, attention heads
MAX_IMAGE_SIZE = 1024  # pixels per side
MAX_DRAWS = 10_000  # random draws (MinD-Vis: 1000), n of n-way, generated val trials, KID subsets
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 300
_SHORT.maxlong = 100
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 10
_SHORT.maxlevel = 3


def shown(value) -> str:
    """`repr(value)`, with long strings, numbers, lists and mappings elided (`...`) to a readable length."""
    return _SHORT.repr(value)


class ConfigError(ValueError):
    """A params section does not match its typed config (the message is cut to `MAX_MESSAGE_CHARS`)."""

    def __init__(self, message: str):
        cut = len(message) - MAX_MESSAGE_CHARS
        super().__init__(message if cut <= 0 else f"{message[:MAX_MESSAGE_CHARS]}... ({cut:,} more characters)")


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, stricter: a key repeated in one mapping is an error (PyYAML keeps the last
    silently), and so is any anchor or alias (`&name`, `*name`): params never need them, and nested
    aliases expand a few lines into gigabytes once the document is walked (hashed, logged, printed).
    Nesting deeper than `MAX_YAML_DEPTH` is refused too."""

    def __init__(self, stream):
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or event.anchor is not None:
            kind = "alias" if isinstance(event, yaml.AliasEvent) else "anchor"
            raise yaml.composer.ComposerError(None, None, f"{kind} {shown(event.anchor)}: YAML anchors (&name) and "
                                              "aliases (*name) are not allowed", event.start_mark)
        if self.depth >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                                              event.start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {shown(key)}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def param(default: Any = dataclasses.MISSING, *, choices=None, min=None, max=None, max_items: int | None = None,
          pattern: str | None = None, help: str = "", run_key: bool = True):
    """A config field with optional allowed `choices`, inclusive `min`/`max` bounds (of each item of a
    list; `max_items` bounds its length, `MAX_LIST_ITEMS` always does) and a full-match regular
    expression `pattern` for strings (`help` then says what it allows). Every size or count gets a
    finite `max`, so a typo cannot ask for unbounded memory or time. `run_key=False` declares a field
    that does not change what is trained (cadence, reporting), so changing it resumes the same run
    (see `training.run_key`)."""
    meta = {"choices": choices, "min": min, "max": max, "max_items": max_items, "pattern": pattern, "help": help,
            "run_key": run_key}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


# Scalar annotations: what the error calls them, and which YAML values they accept (bool is not a number).
SCALARS = {
    bool: ("true or false", lambda value: isinstance(value, bool)),
    int: ("an integer", lambda value: isinstance(value, int) and not isinstance(value, bool)),
    float: ("a number", lambda value: isinstance(value, (int, float)) and not isinstance(value, bool)),
    str: ("a string", lambda value: isinstance(value, str)),
}


def _coerce(tp, value, key: str):
    """Check `value` against the annotation `tp`; return it (lists become tuples-safe lists)."""
    if isinstance(value, float) and not math.isfinite(value):  # NaN passes every min/max comparison
        raise ConfigError(f"{key}: value {shown(value)} is not a finite number (NaN and +-inf are refused)")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(option, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: value {shown(value)} is not a {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {shown(value)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {shown(value)} ({type(value).__name__})")
        if len(value) > MAX_LIST_ITEMS:
            raise ConfigError(f"{key}: {len(value):,} items, above the maximum {MAX_LIST_ITEMS:,} of a list param")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(item_tp, item, f"{key}[{i}]") for i, item in enumerate(value)]
    if tp is Any:
        return value
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"{key}: expected a mapping, got {shown(value)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {shown(value)}")
        return parse_config(tp, value, key)
    if tp in SCALARS:
        expected, accepts = SCALARS[tp]
        if accepts(value):
            return float(value) if tp is float else value
        raise ConfigError(f"{key}: expected {expected}, got {shown(value)}")
    raise ConfigError(f"{key}: unsupported annotation {tp!r}")


def _check_range(field: dataclasses.Field, value, key: str) -> None:
    """Apply the `choices`/`min`/`max` metadata of `field` to `value` (each item of a list) and `max_items`."""
    items = value if isinstance(value, list) else [value]
    meta = field.metadata
    if meta.get("max_items") is not None and len(items) > meta["max_items"]:
        raise ConfigError(f"{key}: {len(items)} items, above the maximum {meta['max_items']}")
    for item in items:
        if item is None:
            continue
        if meta.get("choices") is not None and item not in meta["choices"]:
            raise ConfigError(f"{key}: value {shown(item)} is not one of {list(meta['choices'])}")
        if meta.get("min") is not None and item < meta["min"]:
            raise ConfigError(f"{key}: value {shown(item)} is below the minimum {meta['min']}")
        if meta.get("max") is not None and item > meta["max"]:
            raise ConfigError(f"{key}: value {shown(item)} is above the maximum {meta['max']}")
        if meta.get("pattern") is not None and isinstance(item, str) and not re.fullmatch(meta["pattern"], item):
            allowed = meta["help"] or f"expected {meta['pattern']}"
            raise ConfigError(f"{key}: value {shown(item)} is not allowed: {allowed}")


def parse_config(cls, values: dict | None, section: str):
    """Build dataclass `cls` from `values`, the params found under `section`."""
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ConfigError(f"{section}: expected a mapping of keys, got {shown(values)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields), key=str)
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {', '.join(str(key)[:100] for key in unknown[:10])}"
                          f"{' and more' if len(unknown) > 10 else ''}; allowed keys: {', '.join(fields)}")
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
            raise ConfigError(f"{section}: override {shown(item)} is not of the form key=value")
        *parents, leaf = key.split(".")
        node = values
        for parent in parents:
            if not isinstance(node.get(parent), dict):
                raise ConfigError(f"{section}.{key}: {shown(parent)} is not a section of {section}")
            node = node[parent]
        node[leaf] = load_yaml_text(value, f"override {section}.{key}")
    return parse_config(type(config), values, section)


def to_dict(config) -> dict:
    """Plain-dict view of a config (for logging and for checkpoints that carry their config)."""
    return dataclasses.asdict(config)


def too_large(size: int, where: str) -> ConfigError:
    """The error for YAML of `size` bytes over `MAX_YAML_BYTES`."""
    return ConfigError(f"{where}: {size:,} bytes of YAML, over the limit of {MAX_YAML_BYTES:,} "
                       f"(params.yaml is ~12 KiB); refused before parsing")


def load_yaml_text(text: str, where: str) -> Any:
    """`text` parsed by `UniqueKeyLoader` (at most `MAX_YAML_BYTES`); errors name `where`."""
    if (size := len(text.encode())) > MAX_YAML_BYTES:
        raise too_large(size, where)
    try:
        loader = UniqueKeyLoader(text)
    except yaml.reader.ReaderError as err:  # a character YAML does not allow
        raise ConfigError(f"{where}: not valid YAML: {str(err).splitlines()[0]} "
                          f"(character {err.position + 1})") from None
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        at = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = "; ".join(filter(None, (err.context, err.problem)))
        raise ConfigError(f"{where}:{at} not valid YAML: {problem}") from None
    finally:
        loader.dispose()


def load_yaml_file(path: str | Path) -> Any:
    """A YAML file parsed by `load_yaml_text`; refused unread when missing, not a regular file or too large."""
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block, a device never end
            raise ConfigError(f"{path}: not a regular file")
        if info.st_size > MAX_YAML_BYTES:
            raise too_large(info.st_size, str(path))
        with open(path, encoding="utf-8") as handle:
            text = handle.read(MAX_YAML_BYTES + 1)  # the file may have grown since stat
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    return load_yaml_text(text, str(path))


def load_params_document(path: str | Path, sections: tuple[str, ...] = PARAMS_SECTIONS) -> dict:
    """The whole params file, untyped, through `load_yaml_file`; a top-level key not in `sections` is refused."""
    path = Path(path)
    document = load_yaml_file(path)
    document = {} if document is None else document
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(document).__name__}")
    unknown = [key for key in document if key not in sections]
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {', '.join(shown(key) for key in unknown[:10])}"
                          f"{' and more' if len(unknown) > 10 else ''}; known sections: {', '.join(sections)}")
    if (count := leaf_count(document)) > MAX_PARAMS:
        raise ConfigError(f"{path}: {count:,} params, above the maximum {MAX_PARAMS:,} (params.yaml has ~200)")
    return document


def leaf_count(node) -> int:
    """Values of a nested mapping that are not themselves mappings (a list is one)."""
    return sum(leaf_count(value) for value in node.values()) if isinstance(node, dict) else 1


# the top-level params that are not sections, with their bounds (a seed of 32 bits: what every RNG here takes)
SCALAR_PARAMS = {"seed": param(0, min=0, max=2**32 - 1)}


def load_params(path: str | Path, spec: dict[str, Any],
                sections: tuple[str, ...] = PARAMS_SECTIONS) -> dict[str, Any]:
    """Read the sections named in `spec` from a params YAML file (top-level keys among `sections`)
    and type each one.

    `spec` maps a top-level key to a dataclass (a section) or a plain type (a scalar such as
    `seed`). Only those keys are returned: a stage cannot read what it did not declare.
    """
    path = Path(path)
    document = load_params_document(path, sections)
    out = {}
    for key, tp in spec.items():
        if dataclasses.is_dataclass(tp):
            out[key] = parse_config(tp, document.get(key), key)
        elif key not in document:
            raise ConfigError(f"{path}: required top-level key {shown(key)} is missing")
        else:
            out[key] = _coerce(tp, document[key], key)
            if key in SCALAR_PARAMS:
                _check_range(SCALAR_PARAMS[key], out[key], key)
    return out
