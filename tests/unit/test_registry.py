"""Registries derived from the code: the stages are the modules of ``align_kit/stages/`` (KTO its own entry),
the CLI's command groups the modules of ``align_kit/commands/``; a broken one stops with its error instead of
being left out; the "did you mean" helper sits with the errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import align_kit
from align_kit import registry
from align_kit.errors import ConfigError, closest, did_you_mean

PACKAGE = Path(align_kit.__file__).parent


def test_stages_are_the_modules_of_the_stage_folder():
    from trl import DPOConfig, KTOConfig

    on_disk = {p.stem for p in (PACKAGE / "stages").glob("*.py")} - {"__init__", "common"}
    assert set(registry.STAGES) == on_disk == {"pretrain", "sft", "reward", "dpo", "kto", "ppo"}
    for name in registry.STAGES:
        module = registry.get_stage(name)
        assert module.__name__ == f"align_kit.stages.{name}" and callable(module.run)
        # each stage's run is its module's own (KTO's used to be run_kto in stages/dpo.py, re-exported)
        assert module.run.__module__ == module.__name__, (name, module.run.__module__)
    assert registry.get_stage("kto").TRAINER_CONFIG is KTOConfig and registry.get_stage("dpo").TRAINER_CONFIG is DPOConfig
    with pytest.raises(ConfigError, match=r"unknown stage 'kot' \(did you mean 'kto'\?\); valid: dpo, kto, ppo"):
        registry.get_stage("kot")


def test_a_kto_recipe_loads_through_its_own_entry():
    from trl import KTOConfig

    from align_kit.config import recipe_from_dict

    recipe = recipe_from_dict({"stage": "kto", "model": {"name_or_path": "builtin:tiny-llama"},
                               "data": {"train": [{"name": "quickstart-preferences"}]}, "kto": {"reference": "copy"},
                               "trainer": {"loss_type": "kto"}})
    assert isinstance(recipe.trainer_config(), KTOConfig) and recipe.options.reference == "copy"
    with pytest.raises(ConfigError, match="unknown KTO loss 'sigmoid'"):
        recipe_from_dict({"stage": "kto", "model": {"name_or_path": "builtin:tiny-llama"},
                          "data": {"train": [{"name": "quickstart-preferences"}]}, "trainer": {"loss_type": "sigmoid"}})


def test_a_stage_module_without_run_fails_loudly(tmp_path, monkeypatch):
    (tmp_path / "fakestages").mkdir()
    (tmp_path / "fakestages" / "__init__.py").write_text("")
    (tmp_path / "fakestages" / "half.py").write_text("TRAINER_CONFIG = OPTIONS = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "STAGE_PACKAGE", "fakestages")
    monkeypatch.setattr(registry, "STAGES", registry.stage_names(tmp_path / "fakestages"))
    assert registry.STAGES == ("half",)
    with pytest.raises(TypeError, match="fakestages.half is in the stage package but defines no run"):
        registry.get_stage("half")
    sys.modules.pop("fakestages.half", None)


def test_commands_are_the_modules_of_the_commands_folder_and_a_broken_one_stops_the_cli(monkeypatch):
    from align_kit import cli, commands

    on_disk = {p.stem for p in (PACKAGE / "commands").glob("*.py")} - {"__init__"}
    assert set(commands.MODULES) == on_disk and "ppo" not in commands.MODULES
    parser = cli.build_parser()
    assert {"train", "pipeline", "eval", "export", "plan", "data"} <= set(parser._subparsers._group_actions[0].choices)
    monkeypatch.setattr(cli, "MODULES", (*commands.MODULES, "ppo"))  # what the old hand-kept list named
    with pytest.raises(ModuleNotFoundError, match="align_kit.commands.ppo"):
        cli.build_parser()


def test_the_suggestion_helper_lives_with_the_errors():
    import align_kit.families as families

    assert closest("lama", ["llama", "qwen"]) == "llama" and did_you_mean("sfft", ["sft"]) == " (did you mean 'sft'?)"
    assert "closest" not in vars(families)  # config, stages and data no longer import the model families for it
