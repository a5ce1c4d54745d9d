"""The package's face: `import scoresde` loads no Lightning and no wandb, no core module imports the Lightning layer,
and no function shadows its module."""

import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_import_scoresde_loads_no_lightning_and_no_wandb():
    code = (
        "import sys, scoresde, scoresde.solvers, scoresde.sampling, scoresde.likelihood, scoresde.latent, "
        "scoresde.inverse, scoresde.guidance, scoresde.plotting, scoresde.metrics\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'wandb')"
        " or m.startswith('scoresde.lightning'))\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing the core loaded {out}"


def test_no_core_module_imports_lightning_wandb_or_the_lightning_layer():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import_graph = importlib.import_module("import_graph")
    finally:
        sys.path.pop(0)
    g = import_graph.graph()
    assert "scoresde.solvers.registry" in g and "scoresde.lightning.commands._common" in g
    assert import_graph.violations(g) == []
    # a planted violation is found (the check can fail)
    assert import_graph.violations({"scoresde.sampling": {"lightning.pytorch"}}) == ["scoresde.sampling imports lightning.pytorch"]
    # the commands share _common and do not import each other
    commands = {m for m in g if m.startswith("scoresde.lightning.commands.") and not m.endswith("_common")}
    for m in commands:
        assert not (g[m] & commands), f"{m} imports another command: {g[m] & commands}"
    # the solvers' registry is imported by nobody below it (predictor-corrector gets its parts built by it)
    assert not any("scoresde.solvers.registry" in g[m] for m in g if m.startswith("scoresde.solvers.") and
                   m not in ("scoresde.solvers", "scoresde.solvers.registry"))


def test_no_public_function_shadows_its_module():
    import scoresde

    for name in dir(scoresde):
        value = getattr(scoresde, name)
        if callable(value) and not isinstance(value, type):
            assert not (ROOT / "scoresde" / f"{name}.py").exists(), f"scoresde.{name} is both a function and a module"
