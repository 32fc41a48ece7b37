"""The package's import graph, read from the source with ``ast`` (every module, every import: module level and
inside functions; ``if TYPE_CHECKING:`` blocks left out, they never run).

The rules it holds:

1. No cycle. Importing ``a.b.c`` also runs ``a/__init__.py`` and ``a/b/__init__.py``: a package whose
   ``__init__`` imports align_kit modules when it runs (at its top level, not inside a function) counts as
   imported too, except by its own modules (a package's ``__init__`` may gather its modules' names).
2. Layers: only the entry points import ``align_kit.stages`` (or a module in it). The entry points are the
   stage package itself, the CLI (``align_kit.cli``, ``align_kit.__main__``, ``align_kit.commands``) and the
   pipeline (``align_kit.pipeline``), which runs stages. Everything the stages use (config, the run folder,
   guards, the RL loop, data, models...) sits below them. The recipe loader reaches a stage's trainer config
   and options through ``align_kit.registry``, which lists the stage modules from the folder and imports one
   by name when a recipe asks for it, as the CLI does with its command modules.

Negative controls plant a cycle and a back-arrow in a throwaway package and check that both are found.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import align_kit

ROOT = Path(align_kit.__file__).resolve().parent
ENTRY_POINTS = ("align_kit.stages", "align_kit.commands", "align_kit.cli", "align_kit.__main__", "align_kit.pipeline")


def module_files(package_dir: Path) -> dict[str, Path]:
    base = package_dir.parent
    out = {}
    for path in package_dir.rglob("*.py"):
        parts = list(path.relative_to(base).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _runtime_nodes(tree: ast.AST, top_level: bool = False):
    """Every node except those under ``if TYPE_CHECKING:`` (and, ``top_level``, those inside functions)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        if not (top_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))):
            stack.extend(ast.iter_child_nodes(node))


def _imported_names(tree: ast.AST, mod: str, is_pkg: bool, top_level: bool = False) -> list[str]:
    """Dotted names an ``import`` / ``from ... import`` statement may refer to (relative ones resolved)."""
    names = []
    for node in _runtime_nodes(tree, top_level):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names += [f"{source}.{a.name}" for a in node.names]  # a module, or a name in `source`
    return names


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """``module -> modules of the package it imports`` (with the parent packages each import runs)."""
    mods = module_files(package_dir)
    top = package_dir.name
    trees = {mod: ast.parse(path.read_text(encoding="utf-8")) for mod, path in mods.items()}
    ours = lambda name: name == top or name.startswith(top + ".")  # noqa: E731
    # packages whose __init__ imports align_kit modules when it runs
    active = {mod for mod, path in mods.items() if path.name == "__init__.py"
              and any(ours(n) for n in _imported_names(trees[mod], mod, True, top_level=True))}

    def ancestors(name: str) -> set[str]:
        parts = name.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts))}

    def resolve(name: str, importer: str) -> set[str]:
        while name and name not in mods:  # `from a.b import name` where name is not a module
            name = name.rpartition(".")[0]
        # the packages the import runs, but not the importer's own: it is being imported already
        parents = (ancestors(name) & active) - ancestors(importer)
        return ({name} | parents) if name else parents

    graph = {}
    for mod, path in mods.items():
        names = _imported_names(trees[mod], mod, path.name == "__init__.py")
        graph[mod] = set().union(*(resolve(n, mod) for n in names if ours(n))) - {mod}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def is_entry_point(module: str) -> bool:
    return any(module == e or module.startswith(e + ".") for e in ENTRY_POINTS)


def back_arrows(graph: dict[str, set[str]], layer: str = "align_kit.stages") -> list[str]:
    return sorted(f"{m} -> {t}" for m, targets in graph.items() if not is_entry_point(m)
                  for t in targets if t == layer or t.startswith(layer + "."))


def test_the_package_has_no_import_cycle():
    graph = import_graph(ROOT)
    assert len(graph) == len(list(ROOT.rglob("*.py"))) > 50  # every module was read, none merged
    # function-level imports are edges too (the PPO stage imports the loop inside run())
    assert "align_kit.ppo.loop" in graph["align_kit.stages.ppo"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_only_entry_points_import_the_stages():
    graph = import_graph(ROOT)
    assert back_arrows(graph) == []
    # the modules the issue named: none of them reaches into align_kit.stages any more
    for module in ("align_kit.config", "align_kit.runlog", "align_kit.rundir", "align_kit.guards", "align_kit.ppo.loop",
                   "align_kit.identity", "align_kit.registry"):
        assert not any(t.startswith("align_kit.stages") for t in graph.get(module, ())), module


def test_the_modules_below_the_stages_load_without_them():
    """At run time too: importing the recipe loader, the registry, the run folder, the guards and the run
    identity does not import the stage package (a fresh interpreter, so nothing was imported before)."""
    code = ("import sys, align_kit.config, align_kit.registry, align_kit.rundir, align_kit.guards, align_kit.identity; "
            "print(sorted(m for m in sys.modules if m.startswith('align_kit.stages')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT.parent).stdout
    assert out.strip() == "[]"


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "align_kit"
    for rel, text in {"__init__.py": "", **files}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    return pkg


def test_a_planted_cycle_and_back_arrow_are_found(tmp_path):
    pkg = _package(tmp_path, {
        "a.py": "from align_kit import b\n",
        "b.py": "def f():\n    from align_kit.c import g\n",  # inside a function: still an edge
        "c.py": "from . import a\n",  # relative
        "stages/__init__.py": "from align_kit import registry\n",  # runs on `import align_kit.stages.s`
        "registry.py": "",
        "stages/s.py": "",
        "quiet/__init__.py": "def f():\n    from align_kit import a\n",  # imports nothing when it runs
        "quiet/q.py": "",
        "user.py": "from align_kit.quiet import q\n",
        "gather/__init__.py": "from align_kit.gather.one import f\n",  # a package gathering its modules' names
        "gather/one.py": "from align_kit.gather.two import g\n",
        "gather/two.py": "",
        "low.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from align_kit.stages import s\n",
        "config.py": "def load():\n    import align_kit.stages.s\n",
    })
    graph = import_graph(pkg)
    assert find_cycle(graph) == ["align_kit.a", "align_kit.b", "align_kit.c", "align_kit.a"]
    # importing a submodule runs its package's __init__; a TYPE_CHECKING import does not count
    assert back_arrows(graph) == ["align_kit.config -> align_kit.stages", "align_kit.config -> align_kit.stages.s"]
    assert graph["align_kit.user"] == {"align_kit.quiet.q"}
    assert graph["align_kit.gather.one"] == {"align_kit.gather.two"}  # its own package's __init__ is no edge
