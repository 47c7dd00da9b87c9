"""dvc.yaml declares, per stage, exactly the params the stage reads; params.yaml parses."""
import importlib.util
from pathlib import Path

import pytest
import yaml

from closure import closure
from dreamdiffusion.core.config import load_params, to_dict
from dreamdiffusion.core.sections import STAGES, section_configs, stage_params, stage_sections

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def stage_module(name):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(DVC))
def test_declared_params_are_exactly_what_the_stage_reads(name):
    declared = DVC[name].get("params", [])
    assert all(isinstance(p, str) for p in declared), "declare whole sections/keys of params.yaml"
    assert sorted(declared) == sorted(stage_sections(name))  # the registry is the one source
    assert stage_module(name).PARAMS == stage_params(name)


def test_registry_names_every_stage_of_dvc_yaml_in_order():
    assert tuple(DVC) == STAGES


@pytest.mark.parametrize("name", sorted(DVC))
def test_stage_runs_its_script_and_depends_on_it(name):
    stage = DVC[name]
    assert stage["cmd"] == f"python stages/{name}.py"
    assert f"stages/{name}.py" in stage["deps"]
    for dep in stage["deps"]:
        assert (ROOT / dep).exists() or dep.startswith(("data/", "models/")), f"{name}: missing dep {dep}"


@pytest.mark.parametrize("name", sorted(DVC))
def test_params_yaml_parses_into_each_stage_config(name):
    load_params(ROOT / "params.yaml", stage_module(name).PARAMS)


def test_params_yaml_has_no_orphan_sections():
    document = yaml.safe_load((ROOT / "params.yaml").read_text())
    read = {key for name in DVC for key in stage_module(name).PARAMS}
    assert set(document) == read


def test_lists_are_block_style():
    for line in (ROOT / "params.yaml").read_text().splitlines():
        value = line.split("#")[0].split(":", 1)[-1].strip()
        assert not (value.startswith("[") and value != "[]"), f"flow-style list: {line!r}"


@pytest.mark.parametrize("name", sorted(DVC))
def test_code_deps_are_exactly_the_stage_import_closure(name):
    """Editing any repository module a stage can import reruns that stage, and nothing else is listed."""
    code = {d for d in DVC[name]["deps"] if not d.startswith(("data/", "models/"))}
    needed = {str(p.relative_to(ROOT)) for p in closure(ROOT / "stages" / f"{name}.py")}
    assert not needed - code, f"{name}: dvc.yaml misses {sorted(needed - code)} (run python tests/closure.py)"
    assert not code - needed, f"{name}: dvc.yaml lists files the stage never imports: {sorted(code - needed)}"


def test_closure_follows_relative_and_function_level_imports():
    found = {str(p.relative_to(ROOT)) for p in closure(ROOT / "stages" / "finetune.py")}
    assert "dreamdiffusion/finetune/engine.py" in found  # relative import from finetune/train.py
    assert "dreamdiffusion/core/nway.py" in found  # imported inside a function of finetune/engine.py
    assert "dreamdiffusion/download/synthetic.py" not in found


@pytest.mark.parametrize("section", sorted(section_configs()))
def test_dataclass_defaults_are_params_yaml(section):
    """One source of defaults: a config built without params is the one params.yaml describes."""
    document = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert to_dict(section_configs()[section]()) == document[section]


def test_a_stage_script_imports_the_package_of_its_own_checkout(tmp_path):
    """A copy of the repository (a queued experiment's, say) runs its own `dreamdiffusion`, not the
    editable install's checkout: stages/_bootstrap.py puts the copy first on sys.path."""
    import shutil
    import subprocess
    import sys

    (tmp_path / "stages").mkdir()
    shutil.copy(ROOT / "stages/_bootstrap.py", tmp_path / "stages/_bootstrap.py")
    shutil.copytree(ROOT / "dreamdiffusion", tmp_path / "dreamdiffusion")
    (tmp_path / "dreamdiffusion/__init__.py").write_text("COPY = True\n")
    (tmp_path / "stages/probe.py").write_text("import _bootstrap\nimport dreamdiffusion\nprint(dreamdiffusion.__file__)\n")
    out = subprocess.run([sys.executable, "stages/probe.py"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tmp_path / "dreamdiffusion/__init__.py")
    for name in DVC:  # and every stage script imports it before anything else
        first = next(line for line in (ROOT / "stages" / f"{name}.py").read_text().splitlines()
                     if line.startswith(("import ", "from ")))
        assert first.startswith("import _bootstrap"), name


@pytest.mark.parametrize("name", sorted(DVC))
def test_every_uncached_output_is_a_metric_or_plot(name):
    """DVC saves a stage to its run cache (so experiments restore it instead of rerunning it) only when
    each output it does not cache is declared as a metric or a plot."""
    for entry in DVC[name].get("outs", []):
        options = next(iter(entry.values())) if isinstance(entry, dict) else {}
        assert options.get("cache", True), f"{name}: {entry} is uncached: declare it under metrics or plots"
