"""The import rule of docs/architecture.md: a package imports only packages of lower layers (or its own).

Every ``import`` in gmnn's source is read with :mod:`ast`, function-level imports included (a lazy
import is still a dependency).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "gmnn"

#: Package prefix -> layer; a module may import its own package and lower layers only.
LAYERS: dict[str, int] = {
    "gmnn.validation": 0,
    "gmnn._moved": 0,
    "gmnn._deferred": 0,
    "gmnn.pl": 0,
    "gmnn.nn.functional": 1,
    "gmnn.nn.mixture": 2,
    "gmnn.nn.moe": 2,
    "gmnn.nn": 3,
    "gmnn.metrics": 4,
    "gmnn.analysis": 5,
    "gmnn.data": 5,
    "gmnn.checkpoints": 6,
    "gmnn.models": 7,
    "gmnn.callbacks": 8,
    "gmnn.cli": 9,
    "gmnn": 10,
}

#: Packages that must not import Lightning or matplotlib, even lazily.
PLAIN_TORCH = ("gmnn.nn", "gmnn.metrics", "gmnn.validation")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(name: str) -> str:
    """The longest prefix of ``name`` in :data:`LAYERS`."""
    return max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every gmnn import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
    return found


def violations() -> list[str]:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        here = module_name(path)
        own = package_of(here)
        for line, target in imports_of(path):
            third_party = target.split(".")[0] in ("pytorch_lightning", "lightning", "matplotlib")
            if third_party and any(own == p or own.startswith(p + ".") for p in PLAIN_TORCH):
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} {here} imports {target} (plain torch only)")
            if not target.startswith("gmnn"):
                continue
            theirs = package_of(target)
            if theirs != own and LAYERS[theirs] >= LAYERS[own] and not here.startswith(theirs + "."):
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} {here} (layer {LAYERS[own]}) imports {target} (layer {LAYERS[theirs]})")
    return bad


def test_every_import_goes_down_the_layers() -> None:
    assert violations() == []


def test_the_rule_sees_a_violation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block that imports a LightningModule is caught (the rule can fail)."""
    fake = tmp_path / "gmnn"
    (fake / "nn" / "mixture").mkdir(parents=True)
    (fake / "nn" / "mixture" / "bad.py").write_text("from gmnn.models.base import MoEModule\nimport pytorch_lightning\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake)
    assert len(violations()) == 2


def test_every_module_has_a_layer() -> None:
    for path in ROOT.rglob("*.py"):
        assert package_of(module_name(path)) in LAYERS


def test_importing_the_blocks_is_light_and_polite() -> None:
    """``import gmnn.nn`` loads no Lightning or matplotlib and changes no global state (collector, backend)."""
    code = (
        "import gc, sys, os\n"
        "os.environ['MPLBACKEND'] = 'svg'\n"
        "import gmnn.nn\n"
        "loaded = sorted(m for m in ('pytorch_lightning', 'lightning', 'matplotlib', 'torchmetrics') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
        "import gmnn.metrics, gmnn.analysis\n"  # torchmetrics brings matplotlib, never Lightning
        "loaded = sorted(m for m in ('pytorch_lightning', 'lightning') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
        "assert gc.isenabled() and gc.get_freeze_count() == 0\n"
        "import gmnn.callbacks, matplotlib\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
        "assert gc.isenabled() and gc.get_freeze_count() == 0\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
