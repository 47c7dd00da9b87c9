"""Nested params dicts: merge overrides into a base, section by section."""
from __future__ import annotations


def merge_nested(base: dict, override: dict) -> dict:
    """Recursively update `base` with `override` (a new dict); keys either lacks are kept."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge_nested(base.get(key) or {}, value) if isinstance(value, dict) else value
    return out
