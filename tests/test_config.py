"""Typed params: unknown keys, wrong types and out-of-range values are errors naming them."""
import dataclasses
import os
import time

import pytest

from dreamdiffusion.core.config import MAX_MESSAGE_CHARS, MAX_PARAMS, MAX_YAML_BYTES, ConfigError, UniqueKeyLoader, load_params, load_params_document, param, parse_config, with_overrides


@dataclasses.dataclass(frozen=True)
class Inner:
    depth: int = param(2, min=1)


@dataclasses.dataclass(frozen=True)
class Example:
    mode: str = param("a", choices=["a", "b"])
    rate: float = param(0.5, min=0.0, max=1.0)
    steps: int = param(10, min=1)
    flag: bool = param(True)
    bands: list[float] = param([], min=0.0)
    levels: list[int] = param([1], min=1, max=8, max_items=3)
    path: str | None = param(None)
    name: str = param("x", pattern=r"[a-z]+", help="a plain name")
    inner: Inner = dataclasses.field(default_factory=Inner)

    def __post_init__(self):
        if self.steps == 1 and self.rate == 0.0:
            raise ConfigError(f"rate: {self.rate} must be positive when steps is 1")


def test_defaults_and_values_parse():
    cfg = parse_config(Example, {"mode": "b", "rate": 1, "bands": [1, 2.5], "inner": {"depth": 3}}, "ex")
    assert cfg == Example(mode="b", rate=1.0, bands=[1.0, 2.5], inner=Inner(3))
    assert isinstance(cfg.rate, float)
    assert parse_config(Example, None, "ex") == Example()


@pytest.mark.parametrize("values, needle", [
    ({"modee": "a"}, "unknown key(s) modee; allowed keys: mode, rate, steps"),
    ({"mode": "c"}, "ex.mode: value 'c' is not one of ['a', 'b']"),
    ({"rate": 1.5}, "ex.rate: value 1.5 is above the maximum 1.0"),
    ({"steps": 0}, "ex.steps: value 0 is below the minimum 1"),
    ({"steps": 2.5}, "ex.steps: expected an integer, got 2.5"),
    ({"steps": True}, "ex.steps: expected an integer, got True"),
    ({"flag": "yes"}, "ex.flag: expected true or false, got 'yes'"),
    ({"bands": [1, -2]}, "ex.bands: value -2.0 is below the minimum 0.0"),
    ({"bands": 3}, "ex.bands: expected a list, got 3"),
    ({"levels": [1, 9]}, "ex.levels: value 9 is above the maximum 8"),
    ({"levels": [1, 1, 1, 1]}, "ex.levels: 4 items, above the maximum 3"),
    ({"path": 5}, "ex.path: value 5 is not a"),
    ({"inner": {"depth": 0}}, "ex.inner.depth: value 0 is below the minimum 1"),
    ({"inner": {"width": 3}}, "ex.inner: unknown key(s) width"),
    ({"rate": float("nan")}, "ex.rate: value nan is not a finite number"),
    ({"bands": [1.0, float("-inf")]}, "ex.bands[1]: value -inf is not a finite number"),
    ({"path": float("inf")}, "ex.path: value inf is not a finite number"),
    ({"name": "a/b"}, "ex.name: value 'a/b' is not allowed: a plain name"),
    ({"steps": 1, "rate": 0.0}, "ex.rate: 0.0 must be positive when steps is 1"),
])
def test_bad_values_name_key_and_value(values, needle):
    with pytest.raises(ConfigError) as err:
        parse_config(Example, values, "ex")
    assert needle in str(err.value)


def test_load_params_reads_only_declared_sections(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 3\nex:\n  steps: 4\nother:\n  anything: 1\n")
    sections = ("seed", "ex", "other", "missing")
    params = load_params(path, {"seed": int, "ex": Example}, sections)
    assert params == {"seed": 3, "ex": Example(steps=4)}
    with pytest.raises(ConfigError, match="required top-level key 'missing'"):
        load_params(path, {"missing": int}, sections)
    path.write_text("seed: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(path, {"seed": int})


def test_an_unknown_top_level_key_is_refused_naming_the_known_sections(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 3\nseeed: 4\n")
    with pytest.raises(ConfigError, match=r"params.yaml: unknown top-level key\(s\) 'seeed'; known sections: "
                                          r"seed, tracking, compute, download, preprocess, foundation"):
        load_params(path, {"seed": int})


@pytest.mark.parametrize("text, needle", [
    ("seed: &s 1\n", "anchor 's': YAML anchors (&name) and aliases (*name) are not allowed"),
    ("a: &x [1]\nb: *x\n", "anchor 'x'"),
    ("seed: [*undefined]\n", "alias 'undefined'"),
    ("seed: 1\nseed: 2\n", "duplicate key 'seed'"),
])
def test_anchors_aliases_and_repeated_keys_are_refused(tmp_path, text, needle):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_params_document(path, ("seed", "a", "b"))
    assert needle in str(err.value) and str(path) in str(err.value)


def test_an_alias_bomb_is_refused_at_its_first_alias_quickly(tmp_path):
    path = tmp_path / "params.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 30)]  # 10**30 leaves expanded
    path.write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="anchor 'a0'") as err:
        load_params_document(path, tuple(f"a{i}" for i in range(30)))
    assert time.perf_counter() - start < 1.0 and len(str(err.value)) < 500


def test_a_file_over_the_size_limit_is_refused_unparsed(tmp_path, monkeypatch):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\n" + "# padding\n" * (MAX_YAML_BYTES // 10))
    parsed = []
    monkeypatch.setattr(UniqueKeyLoader, "get_single_data", lambda self: parsed.append(1))
    with pytest.raises(ConfigError, match=f"params.yaml: {path.stat().st_size:,} bytes of YAML, over the limit of "
                                          f"{MAX_YAML_BYTES:,}"):
        load_params_document(path)
    with pytest.raises(ConfigError, match="override ex.steps: .* over the limit"):
        with_overrides(parse_config(Example, {}, "ex"), ["steps=" + "1" * (MAX_YAML_BYTES + 1)], "ex")
    assert not parsed
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="fifo.yaml: not a regular file"):  # would block on open
        load_params_document(fifo)


def test_deep_nesting_and_too_many_params_are_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: " + "[" * 100_000 + "\n")  # would exhaust PyYAML's recursion
    with pytest.raises(ConfigError, match="params.yaml: line 1, column 38: not valid YAML: nested deeper than 32"):
        load_params_document(path)
    path.write_text("seed: 1\nfinetune:\n" + "".join(f"  junk{i}: {i}\n" for i in range(MAX_PARAMS)))
    with pytest.raises(ConfigError, match=f"params.yaml: {MAX_PARAMS + 1:,} params, above the maximum {MAX_PARAMS:,}"):
        load_params_document(path)


def test_long_values_are_shortened_in_messages():
    with pytest.raises(ConfigError) as err:
        parse_config(Example, {"mode": "m" * 100_000}, "ex")
    assert str(err.value).startswith("ex.mode: value 'mmm") and "..." in str(err.value) and len(str(err.value)) < 400
    with pytest.raises(ConfigError) as err:
        parse_config(Example, {"bands": "b" * 100_000}, "ex")
    assert len(str(err.value)) < 400
    with pytest.raises(ConfigError, match=r"ex.bands: 1,001 items, above the maximum 1,000 of a list param"):
        parse_config(Example, {"bands": [1.0] * 1001}, "ex")
    with pytest.raises(ConfigError) as err:
        parse_config(Example, {f"k{i}": 1 for i in range(100_000)}, "ex")
    assert "unknown key(s) k0, k1" in str(err.value) and "and more" in str(err.value) and len(str(err.value)) < 400
    assert len(str(ConfigError("x" * 10_000))) < MAX_MESSAGE_CHARS + 50


def test_with_overrides_sets_nested_keys_and_revalidates():
    config = parse_config(Example, {}, "ex")
    changed = with_overrides(config, ["steps=3", "inner.depth=5", "bands=[1.0, 2.0]"], "ex")
    assert (changed.steps, changed.inner.depth, changed.bands) == (3, 5, [1.0, 2.0])
    assert config.steps == 10 and config.inner.depth == 2  # the original is untouched
    for bad, needle in (("steps=0", "ex.steps"), ("stepz=3", r"unknown key\(s\) stepz"),
                        ("steps.x=1", "'steps' is not a section"), ("steps", "key=value")):
        with pytest.raises(ConfigError, match=needle):
            with_overrides(config, [bad], "ex")
