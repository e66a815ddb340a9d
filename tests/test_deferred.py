"""gmnn._deferred: torchmetrics imported in two steps, every name still there; other layouts imported as usual."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(code: str, env: dict[str, str] | None = None) -> str:
    import os

    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


HEAVY = ("torchvision", "transformers", "scipy.signal", "torchmetrics.functional.image", "torchmetrics.functional.text")


COMPILER = ("torch._dynamo", "torch._inductor", "sympy")


def imported_by_the_command(env: dict[str, str] | None = None) -> set[str]:
    """Which of HEAVY and COMPILER a fresh interpreter has imported after what the command and a model's module import."""
    out = run(
        f"""
        import sys
        import gmnn.cli.app, gmnn.models, gmnn.data, gmnn.callbacks
        from gmnn.models.regression import RegressionMoE
        from gmnn import pl
        pl.Trainer  # the Lightning namespace itself
        print(" ".join(m for m in {HEAVY + COMPILER!r} if m in sys.modules))
        """,
        env=env,
    )
    return set(out.split())


@pytest.fixture(scope="module")
def deferred() -> set[str]:
    return imported_by_the_command()


@pytest.fixture(scope="module")
def not_deferred() -> set[str]:
    return imported_by_the_command({"GMNN_DEFER_IMPORTS": "0"})


def test_the_command_imports_no_metric_domain_it_does_not_use(deferred: set[str]) -> None:
    assert not deferred & set(HEAVY)


def test_every_name_of_torchmetrics_is_there_when_asked_for() -> None:
    out = run(
        """
        import sys
        import gmnn.cli.app
        import torchmetrics
        from torchmetrics import Metric, MetricCollection
        from torchmetrics.classification import MulticlassAccuracy
        assert torchmetrics.__version__
        missing = [name for name in torchmetrics.__all__ if not hasattr(torchmetrics, name)]
        assert not missing, missing
        assert torchmetrics.Metric is Metric and torchmetrics.MetricCollection is MetricCollection
        assert torchmetrics.Accuracy.__module__ == "torchmetrics.classification.accuracy"
        from torchmetrics.functional import accuracy
        assert "accuracy" in dir(torchmetrics.functional) and "Accuracy" in dir(torchmetrics)
        import scipy.signal
        assert hasattr(scipy.signal, "hamming")  # torchmetrics' own patch, run with the rest of its __init__
        assert "__getattr__" not in vars(torchmetrics) and "__getattr__" not in vars(torchmetrics.functional)
        assert torchmetrics.__spec__.loader.__class__.__name__ == "SourceFileLoader"
        print(len(torchmetrics.__all__))
        """
    )
    assert int(out) > 50


def test_turned_off_it_imports_as_usual(not_deferred: set[str]) -> None:
    assert "torchmetrics.functional.image" in not_deferred


def test_a_library_import_leaves_torchmetrics_alone() -> None:
    """Only the command defers: ``import gmnn.models`` from a user's code imports torchmetrics as usual."""
    out = run(
        """
        import sys
        import gmnn.models
        from gmnn._deferred import DeferredInitFinder
        print('torchmetrics.functional.image' in sys.modules, any(isinstance(f, DeferredInitFinder) for f in sys.meta_path))
        """
    )
    assert out.strip() == "True False"


@pytest.mark.parametrize("marked", [True, False])
def test_a_package_without_its_marker_imports_as_usual(tmp_path: Path, marked: bool) -> None:
    package = tmp_path / "deferred_demo"
    package.mkdir()
    (package / "light.py").write_text("VALUE = 1\n")
    (package / "heavy.py").write_text("import builtins\nbuiltins.HEAVY_RAN = True\nVALUE = 2\n")
    marker = "from deferred_demo.heavy import VALUE as HEAVY" if marked else "from deferred_demo.heavy import VALUE as OTHER"
    (package / "__init__.py").write_text(f"START = 0\n{marker}\nAFTER = 3\n")
    out = run(
        f"""
        import builtins, sys
        sys.path.insert(0, {str(tmp_path)!r})
        from gmnn import _deferred
        _deferred.DEFERRED["deferred_demo"] = (("from deferred_demo.heavy import VALUE as HEAVY",), (("deferred_demo.light", "VALUE"),))
        _deferred.install()
        import deferred_demo
        ran = getattr(builtins, "HEAVY_RAN", False)
        print(ran, deferred_demo.START, getattr(deferred_demo, "VALUE", None), getattr(builtins, "HEAVY_RAN", False), deferred_demo.AFTER)
        """
    )
    # deferred: the heavy part runs on the first name the head did not define (AFTER)
    assert out.split() == (["False", "0", "1", "False", "3"] if marked else ["True", "0", "None", "True", "3"])


def test_the_command_imports_no_compiler(deferred: set[str]) -> None:
    """Lightning's ``torch._dynamo`` imports are deferred: nothing of the compiler loads before a run needs it."""
    assert not deferred & set(COMPILER)


@pytest.mark.parametrize("namespace", ["pytorch_lightning", "lightning"])
def test_a_compiled_module_is_still_recognised(namespace: str) -> None:
    fabric = "lightning_fabric" if namespace == "pytorch_lightning" else "lightning.fabric"
    pytorch = "pytorch_lightning" if namespace == "pytorch_lightning" else "lightning.pytorch"
    out = run(
        f"""
        import sys
        import gmnn.cli.app
        import torch
        from {fabric} import wrappers
        from {pytorch}.utilities import compile as compile_
        from {pytorch}.trainer.connectors.logger_connector import result
        from gmnn._deferred import OptimizedModule
        module = torch.nn.Linear(2, 2)
        assert wrappers.OptimizedModule is OptimizedModule and compile_.OptimizedModule is OptimizedModule
        assert not isinstance(module, OptimizedModule) and 'torch._dynamo' not in sys.modules
        assert wrappers._unwrap_compiled(module) == (module, None)
        compiled = torch.compile(module, backend="eager")
        import torch._dynamo
        assert isinstance(compiled, OptimizedModule) and isinstance(compiled, torch._dynamo.OptimizedModule)
        assert issubclass(type(compiled), OptimizedModule) and not issubclass(torch.nn.Linear, OptimizedModule)
        assert not isinstance(module, OptimizedModule)
        assert wrappers._unwrap_compiled(compiled)[0] is module
        assert isinstance(compiled, (int, OptimizedModule)) and not isinstance(module, (int, OptimizedModule))  # as in _unwrap_objects
        # the two methods Lightning keeps out of the compiler: compiled code calls them without tracing them
        assert result._ResultCollection.log.__wrapped__.__name__ == "log"
        assert result._ResultCollection.log.__code__ is torch._disable_dynamo(lambda: 0).__code__
        print("ok")
        """,
        env={"GMNN_LIGHTNING": namespace},
    )
    assert out.strip() == "ok"


def test_turned_off_lightning_imports_the_compiler_as_usual(not_deferred: set[str]) -> None:
    assert "torch._dynamo" in not_deferred


@pytest.mark.parametrize("present", [True, False])
def test_a_module_without_its_line_imports_as_usual(tmp_path: Path, present: bool) -> None:
    (tmp_path / "edited_demo.py").write_text(("WHERE = 'old'\n" if present else "WHERE = 'other'\n") + "AFTER = 1\n")
    out = run(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from gmnn import _deferred
        _deferred.EDITS["edited_demo"] = (("WHERE = 'old'\\n", "WHERE = 'new'\\n"),)
        _deferred.install()
        import edited_demo
        print(edited_demo.WHERE, edited_demo.AFTER, type(edited_demo.__loader__).__name__)
        """
    )
    assert out.split() == ["new" if present else "other", "1", "SourceFileLoader"]
