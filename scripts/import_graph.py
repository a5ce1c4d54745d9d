"""Print the module import graph of scoresde (from the source, with ``ast``) and check that it flows one way.

    python scripts/import_graph.py            # the graph, one line per module
    python scripts/import_graph.py --check    # exit 1 if a core module imports Lightning, wandb or scoresde.lightning
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "scoresde"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved), at any depth of the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import plotting` names modules: record them, not just the package
            found.update(f"{target}.{a.name}" for a in node.names) if node.module is None else found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(ROOT.rglob("*.py"))}


def violations(g: dict[str, set[str]]) -> list[str]:
    """Core modules (outside scoresde.lightning) that import Lightning, wandb or scoresde.lightning."""
    bad = []
    for mod, deps in g.items():
        if mod.startswith("scoresde.lightning"):
            continue
        for dep in deps:
            if dep.split(".")[0] in ("lightning", "pytorch_lightning", "wandb") or dep.startswith("scoresde.lightning"):
                bad.append(f"{mod} imports {dep}")
    return bad


def main() -> int:
    g = graph()
    if "--check" not in sys.argv:
        for mod, deps in g.items():
            inner = sorted(d.removeprefix("scoresde.") for d in deps if d.startswith("scoresde") and d != mod)
            print(f"{mod.removeprefix('scoresde.') or 'scoresde'}: {', '.join(inner)}")
    bad = violations(g)
    for line in bad:
        print("violation:", line, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
