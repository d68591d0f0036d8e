"""The layout's two rules, checked on the source: imports are relative inside a folder and absolute
across folders, and data flows one way (no module imports from a later stage)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the package it installs as (pyproject's package-dir)
FOLDERS = {"ciebench": "ciebench", "metrics": "ciebench.metrics", "baselines": "ciebench.baselines",
           "cielr_ref": "ciebench.cielr_ref", "leaderboard": "ciebench.leaderboard"}


def _packages() -> dict[Path, str]:
    found = {}
    for top, name in FOLDERS.items():
        for init in (ROOT / top).rglob("__init__.py"):
            found[init.parent] = ".".join([name, *init.parent.relative_to(ROOT / top).parts])
    return found


PACKAGES = _packages()
SUBPACKAGES = set(PACKAGES.values())


def _imports():
    """(file, line, importing package, imported module, was relative) for every `from X import`."""
    for folder, package in PACKAGES.items():
        for path in folder.glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.ImportFrom):
                    continue
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                elif node.module and node.module.split(".")[0] == "ciebench":
                    target = node.module
                else:
                    continue
                if target == package and node.names and all(f"{target}.{a.name}" in SUBPACKAGES for a in node.names):
                    target = f"{target}.{node.names[0].name}"  # `from . import datasets`: another folder
                yield path.relative_to(ROOT), node.lineno, package, target, bool(node.level)


def _folder_of(module: str) -> str:
    return module if module in SUBPACKAGES else module.rsplit(".", 1)[0]


def test_relative_inside_a_folder_absolute_across_folders():
    wrong = [f"{path}:{line}: {'relative' if relative else 'absolute'} import of {target}"
             for path, line, package, target, relative in _imports()
             if relative != (_folder_of(target) == package)]
    assert wrong == []


def test_data_flows_one_way():
    """Earlier stages never import later ones: the command line is imported by nobody; datasets and
    metrics know nothing of editors, runs, the scorer or the leaderboard."""
    later = {
        "ciebench.datasets": ("ciebench.cli", "ciebench.runner", "ciebench.scoring", "ciebench.leaderboard",
                              "ciebench.baselines", "ciebench.cielr_ref"),
        "ciebench.metrics": ("ciebench.cli", "ciebench.runner", "ciebench.leaderboard", "ciebench.baselines",
                             "ciebench.cielr_ref"),
        "ciebench.baselines": ("ciebench.cli", "ciebench.runner", "ciebench.scoring", "ciebench.leaderboard"),
        "ciebench.cielr_ref": ("ciebench.cli", "ciebench.runner", "ciebench.scoring", "ciebench.leaderboard"),
        "ciebench.leaderboard": ("ciebench.cli", "ciebench.runner"),
    }
    wrong = []
    for path, line, package, target, _ in _imports():
        if package != "ciebench.cli" and path.name != "__main__.py" and (target == "ciebench.cli" or target.startswith("ciebench.cli.")):
            wrong.append(f"{path}:{line}: imports the command line ({target})")
        for stage, forbidden in later.items():
            if package == stage or package.startswith(stage + "."):
                wrong += [f"{path}:{line}: {stage} imports {target}" for f in forbidden
                          if target == f or target.startswith(f + ".")]
    assert wrong == []
