"""The stage registry, derived from the code: every module of ``align_kit/stages/`` is a stage, named after
its file, except the helpers it shares (``HELPERS``). Adding ``stages/<name>.py`` adds ``stage: <name>``.

The names come from listing the package folder (``pkgutil``), not from importing it, so the recipe loader,
which sits below the stages, can name and check them; a stage module is imported by name when a recipe asks
for it (as the CLI loads its command modules). A stage module defines ``TRAINER_CONFIG`` (the config class a
recipe's ``trainer:`` block fills), ``OPTIONS`` (the dataclass of the block named after the stage, or None),
``run(recipe) -> Path`` and, optionally, ``VALIDATORS`` (checks run when a recipe is loaded).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

from align_kit.errors import ConfigError, did_you_mean

STAGE_PACKAGE = "align_kit.stages"
HELPERS = frozenset({"common"})  # modules of the stage package that are not stages
REQUIRED = ("TRAINER_CONFIG", "OPTIONS", "run")


def stage_names(folder: str | Path = Path(__file__).parent / "stages") -> tuple[str, ...]:
    """The stage modules in ``folder``, sorted (private ``_x`` modules and ``HELPERS`` left out)."""
    names = (m.name for m in pkgutil.iter_modules([str(folder)]))
    return tuple(sorted(n for n in names if n not in HELPERS and not n.startswith("_")))


STAGES = stage_names()


def get_stage(name: str) -> ModuleType:
    """The stage module of ``stage: name``. An unknown name is a ConfigError with a suggestion; a stage module
    that fails to import, or lacks what a stage defines, raises (a bug, never skipped)."""
    if name not in STAGES:
        raise ConfigError(f"stage: unknown stage '{name}'{did_you_mean(str(name), STAGES)}; valid: {', '.join(STAGES)}")
    module = importlib.import_module(f"{STAGE_PACKAGE}.{name}")
    missing = [attr for attr in REQUIRED if not hasattr(module, attr)]
    if missing:
        raise TypeError(f"{module.__name__} is in the stage package but defines no {', '.join(missing)}; a stage "
                        f"module defines {', '.join(REQUIRED)} (or add it to registry.HELPERS if it is a helper)")
    return module
