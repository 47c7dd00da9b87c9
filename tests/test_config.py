"""Typed params: unknown keys, wrong types and out-of-range values are errors naming them."""
import dataclasses

import pytest

from dreamdiffusion.config import ConfigError, load_params, param, parse_config, with_overrides


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
    params = load_params(path, {"seed": int, "ex": Example})
    assert params == {"seed": 3, "ex": Example(steps=4)}
    with pytest.raises(ConfigError, match="required top-level key 'missing'"):
        load_params(path, {"missing": int})
    path.write_text("seed: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(path, {"seed": int})


def test_with_overrides_sets_nested_keys_and_revalidates():
    config = parse_config(Example, {}, "ex")
    changed = with_overrides(config, ["steps=3", "inner.depth=5", "bands=[1.0, 2.0]"], "ex")
    assert (changed.steps, changed.inner.depth, changed.bands) == (3, 5, [1.0, 2.0])
    assert config.steps == 10 and config.inner.depth == 2  # the original is untouched
    for bad, needle in (("steps=0", "ex.steps"), ("stepz=3", r"unknown key\(s\) stepz"),
                        ("steps.x=1", "'steps' is not a section"), ("steps", "key=value")):
        with pytest.raises(ConfigError, match=needle):
            with_overrides(config, [bad], "ex")
