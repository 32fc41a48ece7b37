"""Print the installed versions of align_kit's dependency closure (with the dev, cluster and eval extras) as pip
constraints: ``python .ci/freeze_constraints.py > constraints.txt`` after a fresh ``pip install -e ".[dev,cluster,eval]"``
on the machine whose figures the README reports. Local version labels are dropped (``torch==2.13.0``
matches the CPU and the CUDA builds alike)."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str = "align_kit", extras: tuple[str, ...] = ("dev", "cluster", "eval")) -> dict[str, str]:
    versions: dict[str, str] = {}
    todo = [(root, list(extras))]
    while todo:
        name, wanted = todo.pop()
        try:
            dist = distribution(name)
        except PackageNotFoundError:  # an extra's package that is not installed here
            continue
        key = _norm(dist.metadata["Name"])
        if key in versions:
            continue
        versions[key] = dist.version.split("+")[0]
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in wanted or [""]):
                todo.append((req.name, list(req.extras)))
    versions.pop(_norm(root), None)
    return versions


if __name__ == "__main__":
    import platform

    print(f"# align_kit's tested versions (Python {platform.python_version()}); made by .ci/freeze_constraints.py")
    for name, version in sorted(closure().items()):
        print(f"{name}=={version}")
