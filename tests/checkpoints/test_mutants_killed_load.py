"""Tests written for mutmut's survivors in ``CheckpointHooks.load_from_checkpoint`` and
``GateCheckpointHooks.load_from_checkpoint`` (``gmnn/checkpoints/hooks.py``): each fails on the named mutants
(``load_from_checkpoint <n>`` of ``CheckpointHooks``, ``Gate <n>`` of ``GateCheckpointHooks``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from gmnn.checkpoints.variants import CLASS_KEY, class_path_of
from gmnn.models import MoEModule
from tests.models.every_variant import build


def _write(path: Path, model: Any, **hparams: Any) -> Path:
    """A checkpoint of ``model`` as Lightning writes one, its hyperparameters updated with ``hparams``."""
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {**model.hparams, **hparams},
                CLASS_KEY: class_path_of(model), "pytorch-lightning_version": pl.__version__}, path)
    return path


def test_a_checkpoint_of_a_class_that_is_not_a_gmnn_model_is_refused_by_name(tmp_path: Path) -> None:
    """Kills load_from_checkpoint 11 (the ``ValueError`` raised with no message)."""
    path = tmp_path / "linear.ckpt"
    torch.save({"state_dict": {}, CLASS_KEY: "torch.nn.modules.linear.Linear"}, path)
    with pytest.raises(ValueError) as error:
        MoEModule.load_from_checkpoint(path)
    assert str(error.value) == (
        f"checkpoint {path} holds a Linear, not a gmnn model: load it with Linear.load_from_checkpoint"
    )


def test_four_positional_arguments_pass_weights_only_and_map_location(tmp_path: Path) -> None:
    """Kills load_from_checkpoint 17, 18, 19 (``weights_only`` also set as a keyword when it is the fourth positional
    argument: ``TypeError``, multiple values) and 32, Gate 8 (the positional arguments dropped: ``map_location``
    never called)."""
    model = build("TopKMoE", dict(k=1))
    path = _write(tmp_path / "m.ckpt", model)
    seen: list[str] = []

    def on_cpu(storage: Any, location: str) -> Any:
        seen.append(location)
        return storage

    loaded = type(model).load_from_checkpoint(path, on_cpu, None, True, True)
    assert type(loaded) is type(model) and set(seen) == {"cpu"}
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


@pytest.mark.parametrize(("passed", "expected"), [({}, True), ({"weights_only": False}, False)])
def test_lightning_reads_the_file_as_weights_only_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, passed: dict[str, Any], expected: bool
) -> None:
    """Kills load_from_checkpoint 20, 21, 22 (the key ``weights_only`` never found: a passed ``False`` overridden),
    23, 24, 27 (``weights_only`` not ``True`` by default) and 33 (the keywords dropped): the ``weights_only`` of
    Lightning's ``torch.load``."""
    model = build("TopKMoE", dict(k=1))
    path = _write(tmp_path / "m.ckpt", model)
    calls: list[Any] = []
    load = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("weights_only", "absent"))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    type(model).load_from_checkpoint(path, **passed)
    # the first read is gmnn's own (read_checkpoint: always weights_only), the last Lightning's
    assert calls == [True, expected]


def test_a_loaded_gated_model_takes_its_experts_from_the_checkpoint_not_init_experts_from(tmp_path: Path) -> None:
    """Kills Gate 1, 2, 4, 5 (``init_experts_from`` not set to ``None``: the saved path, here a missing file, read)
    and load_from_checkpoint 33, Gate 9 (the keywords dropped)."""
    model = build("TopKMoE", dict(k=1))
    path = _write(tmp_path / "m.ckpt", model, init_experts_from=str(tmp_path / "gone.ckpt"))
    loaded = type(model).load_from_checkpoint(path)
    assert loaded.hparams["init_experts_from"] is None
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_a_keyword_that_makes_the_model_not_fit_is_named(tmp_path: Path) -> None:
    """Kills load_from_checkpoint 34-39 (``explain_overrides`` given no error, path or keywords, or ``None`` for
    one of them)."""
    model = build("TopKMoE", dict(k=1))
    path = _write(tmp_path / "m.ckpt", model)
    with pytest.raises(ValueError) as error:
        type(model).load_from_checkpoint(path, num_experts=4)
    assert str(error.value) == (
        f"checkpoint {path} does not fit: num_experts=3 in the checkpoint but num_experts=4 was passed to "
        "load_from_checkpoint"
    )
