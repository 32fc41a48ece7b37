"""``${VAR}`` and ``${VAR:-default}`` in recipe strings, data cards and task paths: one expansion for all.

Below the recipe loader (config), the data cards and the benchmark tasks, which all use it.
"""

from __future__ import annotations

import os
import re

from align_kit.errors import ConfigError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value):
    """Expand ``${VAR}`` and ``${VAR:-default}`` in strings, recursively.

    >>> os.environ.pop("ALIGN_KIT_DOCTEST", None); expand_env({"p": "${ALIGN_KIT_DOCTEST:-../shared}/x"})
    {'p': '../shared/x'}
    """
    if isinstance(value, str):
        def sub(m):
            if m.group(1) in os.environ:
                return os.environ[m.group(1)]
            if m.group(2) is not None:
                return m.group(2)
            raise ConfigError(f"environment variable {m.group(1)} is not set (used as ${{{m.group(1)}}} in the recipe)")
        return _ENV.sub(sub, value)
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    return value
