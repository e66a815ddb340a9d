"""Tests written for mutmut's survivors in ``gmnn/checkpoints/{hooks,reading,variants}.py`` (CONTRIBUTING.md,
"Mutation testing", the functions the fourth run did not reach): each fails on the named mutants.

The mutant names are those of ``mutmut results`` (``x_<function>__mutmut_<n>``, shortened here to
``<function> <n>``). The hook tests call the hooks directly on a tiny model with a stand-in trainer (only
``ckpt_path`` and ``state.fn`` are read), so no fit runs.
"""

from __future__ import annotations

import fractions
import io
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from gmnn.checkpoints import reading
from gmnn.checkpoints.compatibility import RNG_KEY
from gmnn.checkpoints.hooks import TEMPERATURE_KEY
from gmnn.checkpoints.variants import CLASS_KEY
from gmnn.models import DenseMoE, GatelessMoE

COMMON: dict[str, Any] = dict(input_shape=[2], num_classes=3, num_experts=4, expert_hidden=[8])


def _trainer(fn: str, ckpt_path: str | None) -> SimpleNamespace:
    """What the hooks read of a Lightning ``Trainer``."""
    return SimpleNamespace(ckpt_path=ckpt_path, state=SimpleNamespace(fn=fn))


def _draws() -> tuple[list[float], float, float]:
    """One draw of each global generator (torch, NumPy, Python)."""
    return torch.rand(3).tolist(), float(np.random.rand()), random.random()


# --- hooks.py ----------------------------------------------------------------------------------------------


def test_the_refusal_names_the_trainers_checkpoint_path_and_otherwise_the_checkpoint() -> None:
    """Kills ``check_and_restore_random_state`` 1 (the trainer never read: its path never named), 2, 7, 8 (the
    name ``None`` or a changed ``"the checkpoint"``), 3, 6 (a trainer's path never named), 4 (a path read from no
    trainer: ``AttributeError``), 5 (``checkpoint None`` named for a trainer without a path), 9, 10, 12, 13 (the
    model or the checkpoint not passed or ``None``), 11, 14 (no source: ``None`` / the default ``"checkpoint"``);
    ``on_load_checkpoint`` 1 of ``CheckpointHooks`` and of ``GateCheckpointHooks`` (the hook given ``None``)."""
    model = DenseMoE(gate_hidden=[8], **COMMON)  # 4 experts
    other = DenseMoE(gate_hidden=[8], **{**COMMON, "num_experts": 3})
    checkpoint = {"state_dict": other.state_dict(), "hyper_parameters": {"num_experts": 3}}
    rest = ("does not fit this DenseMoE: num_experts=3 in the checkpoint but 4 in the model. "
            "Build the model with the checkpoint's settings (e.g. its saved config.yaml).")
    cases = [(None, "the checkpoint"), (_trainer("validate", "/runs/last.ckpt"), "checkpoint /runs/last.ckpt"),
             (_trainer("validate", None), "the checkpoint")]
    for trainer, source in cases:
        model._trainer = trainer
        with pytest.raises(ValueError) as error:
            model.on_load_checkpoint(dict(checkpoint))
        assert str(error.value) == f"{source} {rest}"


def test_the_random_state_is_restored_only_when_fitting_and_only_when_saved() -> None:
    """Kills ``check_and_restore_random_state`` 15, 16, 17 (restored with no trainer, or an ``AttributeError``),
    18 (restored when validating, not when fitting), 19, 20 (never restored), 21 (a ``KeyError`` for a checkpoint
    without random states), 22 (``set_rng_states(None)``); ``CheckpointHooks.on_save_checkpoint`` 2, 3 (the class
    path of ``None``: the checkpoint refused; no random states saved); ``class_path_of`` 1, 2 (the module or the
    name of ``NoneType``: the checkpoint refused as another class's); ``GateCheckpointHooks.on_save_checkpoint`` 1,
    2 (nothing or ``None`` saved as the temperature) and ``GateCheckpointHooks.on_load_checkpoint`` 3, 5, 6, 7, 12,
    14, 15, 16 (a checkpoint without ``epoch``: ``int(None)`` or ``float(None)``, a ``TypeError``)."""
    model = DenseMoE(gate_hidden=[8], **COMMON)
    checkpoint: dict[str, Any] = {"state_dict": model.state_dict()}
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    model.on_save_checkpoint(checkpoint)
    saved_draws = _draws()  # what the generators give right after the saved state
    for trainer in (None, _trainer("validate", "a.ckpt"), _trainer("test", None)):
        model._trainer = trainer
        before = torch.get_rng_state()
        model.on_load_checkpoint(checkpoint)
        assert torch.equal(torch.get_rng_state(), before), trainer  # not restored outside fit
    model._trainer = _trainer("fit", "a.ckpt")
    model.on_load_checkpoint({"state_dict": model.state_dict()})  # nothing to restore: no error, no change
    assert _draws() != saved_draws
    model.on_load_checkpoint(checkpoint)
    assert _draws() == saved_draws


def test_the_class_path_and_temperature_are_saved() -> None:
    """Kills ``CheckpointHooks.on_save_checkpoint`` 1 (``None`` saved as the class path); checks the class path,
    temperature and random-state keys a gated model saves."""
    model = GatelessMoE(**COMMON)
    model.temperature = 0.75
    checkpoint: dict[str, Any] = {}
    model.on_save_checkpoint(checkpoint)
    assert checkpoint[CLASS_KEY] == "gmnn.models.gateless.GatelessMoE"
    assert checkpoint[TEMPERATURE_KEY] == 0.75
    assert sorted(checkpoint[RNG_KEY]) == sorted(["torch", "numpy", "python", *(["cuda"] if torch.cuda.is_available() else [])])


def test_a_loaded_temperature_is_the_saved_one_else_that_of_the_saved_epoch() -> None:
    """Kills ``GateCheckpointHooks.on_load_checkpoint`` 2 (``set_temperature(None)``), 4, 8, 9 (the epoch read under
    another key: epoch 0), 10 (epoch 1 when none was saved), 11 (the temperature set to ``None``), 13 (the saved
    temperature read under another key: the schedule's kept)."""
    model = GatelessMoE(temperature_by_epoch=[2.0, 1.0, 0.5], **COMMON)  # temperature of epoch 0, 1, 2, 3, ...
    model.on_load_checkpoint({"epoch": 2})  # no temperature saved (an older checkpoint): that of epoch 2
    assert model.temperature == 0.5
    model.on_load_checkpoint({})  # neither: epoch 0
    assert model.temperature == 2.0
    model.on_load_checkpoint({"epoch": 1, TEMPERATURE_KEY: 0.25})  # the saved one wins over the schedule's 1.0
    assert model.temperature == 0.25


# --- reading.py --------------------------------------------------------------------------------------------


def _checkpoint_bytes(**entries: Any) -> bytes:
    """The bytes ``torch.save`` writes for ``entries`` (the zip format)."""
    buffer = io.BytesIO()
    torch.save(entries, buffer)
    return buffer.getvalue()


def test_an_empty_or_truncated_file_is_named_with_the_default_option(tmp_path: Path) -> None:
    """Kills ``read_checkpoint`` 1, 2 (the default option), 5, 6, 8, 9, 10, 13, 14 (a path taken for a file
    object, or its name lost), 26, 27, 29, 30, 32 (the damage not looked for), 40-45 (the option, the name or
    the reason dropped); ``_damage`` 1-4 (the empty file: ``!= 0``, ``== 1``, its message), 5-7 (the file opened
    in another mode), 9-15 (an incomplete zip archive not recognised), 16, 17 (its message)."""
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(reading.UnreadableCheckpoint) as error:
        reading.read_checkpoint(empty)
    assert str(error.value) == f"checkpoint {empty} cannot be read: it is empty (0 bytes)"
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(_checkpoint_bytes(state_dict={"w": torch.zeros(4)})[:100])  # starts with PK\x03\x04
    with pytest.raises(reading.UnreadableCheckpoint) as error:
        reading.read_checkpoint(truncated, "--ckpt_path")
    assert str(error.value) == (f"--ckpt_path {truncated} cannot be read: "
                                "it is truncated or not a checkpoint (an incomplete zip archive)")
    assert error.value.reason == "it is truncated or not a checkpoint (an incomplete zip archive)"


def test_a_checkpoint_in_the_older_format_is_read(tmp_path: Path) -> None:
    """Kills ``_damage`` 8 (a file not in the zip format taken for an incomplete zip archive); ``_load`` 2, 3, 4,
    16, 20, 25 (a path: ``hasattr`` broken, nothing or ``None`` loaded, ``is_zipfile(None)``); ``read_checkpoint``
    3, 4 (the default map location ``"cpu"`` changed: torch cannot restore to it), 31, 33, 34, 36, 37 (no
    checkpoint or a wrong call of ``_load``), 47-50 (the ``state_dict`` check changed), 60 (``dict(None)``)."""
    for zipped in (False, True):
        path = tmp_path / f"{zipped}.ckpt"
        torch.save({"state_dict": {"w": torch.arange(3.0)}}, path, _use_new_zipfile_serialization=zipped)
        assert torch.equal(reading.read_checkpoint(path)["state_dict"]["w"], torch.tensor([0.0, 1.0, 2.0]))


def test_a_file_object_is_read_from_its_start_and_rewound_and_named(tmp_path: Path) -> None:
    """Kills ``read_checkpoint`` 7, 11, 12, 15, 28 (a file object taken for a path), 16-25 (its name or the
    default name), 46 (a dictionary without ``state_dict`` returned), 51-59 (the message without a
    ``state_dict``); ``_load`` 1, 5, 6, 7, 10 (a file object read as a path or not passed), 14, 15 (not
    rewound to its start)."""
    data = _checkpoint_bytes(state_dict={"w": torch.arange(3.0)}, epoch=4)
    buffer = io.BytesIO(data)
    for _ in range(2):  # rewound after each read, so read alike twice
        checkpoint = reading.read_checkpoint(buffer)
        assert buffer.tell() == 0
        assert type(checkpoint) is dict and sorted(checkpoint) == ["epoch", "state_dict"] and checkpoint["epoch"] == 4
        assert torch.equal(checkpoint["state_dict"]["w"], torch.tensor([0.0, 1.0, 2.0]))
    no_state = io.BytesIO(_checkpoint_bytes(epoch=1))
    with pytest.raises(reading.UnreadableCheckpoint) as error:
        reading.read_checkpoint(no_state)
    assert str(error.value) == "checkpoint the file object cannot be read: it holds no state_dict (not a Lightning checkpoint)"
    path = tmp_path / "no_state.ckpt"
    path.write_bytes(_checkpoint_bytes(epoch=1))
    with path.open("rb") as handle, pytest.raises(reading.UnreadableCheckpoint) as error:
        reading.read_checkpoint(handle, "init_experts_from")
    assert str(error.value) == (f"init_experts_from {path} cannot be read: "
                                "it holds no state_dict (not a Lightning checkpoint)")
    assert str(reading.UnreadableCheckpoint("o", "p", "r")) == "o p cannot be read: r"


def test_a_file_that_is_no_checkpoint_is_refused_with_its_error(tmp_path: Path) -> None:
    """Kills ``read_checkpoint`` 38 (the error of ``torch.load`` swallowed: an ``UnboundLocalError``), 39 (the
    reason of ``None``)."""
    text = tmp_path / "notes.ckpt"
    text.write_bytes(b"hello")
    with pytest.raises(reading.UnreadableCheckpoint) as error:
        reading.read_checkpoint(text)
    assert str(error.value).startswith(f"checkpoint {text} cannot be read: it is truncated or not a checkpoint (")
    assert "NoneType" not in str(error.value)
    no_state = tmp_path / "no_state.ckpt"
    no_state.write_bytes(_checkpoint_bytes(epoch=1))
    with pytest.raises(reading.UnreadableCheckpoint, match="it holds no state_dict"):
        reading.read_checkpoint(no_state)


def test_pickled_objects_are_refused_even_where_torch_would_load_them_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kills ``_load`` 9, 12, 13 (a file object), 18, 22, 24 (a path) loaded with ``weights_only`` ``None``,
    left out or ``False``: ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` makes torch's default ``False``, so only an
    explicit ``weights_only=True`` keeps the pickled ``Fraction`` from being built."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    data = _checkpoint_bytes(state_dict={}, ratio=fractions.Fraction(1, 2))
    path = tmp_path / "pickled.ckpt"
    path.write_bytes(data)
    reason = ("it holds pickled objects (fractions.Fraction), not only tensors and plain values, "
              "and gmnn never runs code from a checkpoint")
    for source, name in ((io.BytesIO(data), "the file object"), (path, str(path))):
        with pytest.raises(reading.UnreadableCheckpoint) as error:
            reading.read_checkpoint(source, "--ckpt_path")
        assert str(error.value) == f"--ckpt_path {name} cannot be read: {reason}"


def test_the_map_location_is_passed_and_a_zip_file_on_disk_is_memory_mapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kills ``read_checkpoint`` 35 (no map location passed); ``_load`` 8, 11 (a file object), 17, 21 (a path:
    the map location dropped), 19, 23 (a zip file on disk read whole instead of memory-mapped: ``_load``'s
    documented ``mmap``)."""
    path = tmp_path / "a.ckpt"
    torch.save({"state_dict": {"w": torch.arange(3.0)}}, path)
    calls: list[dict[str, Any]] = []
    load = torch.load

    def spy(source: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return load(source, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert torch.equal(reading.read_checkpoint(path)["state_dict"]["w"], torch.tensor([0.0, 1.0, 2.0]))
    assert reading.read_checkpoint(path, map_location="meta")["state_dict"]["w"].device.type == "meta"
    assert reading.read_checkpoint(io.BytesIO(path.read_bytes()), map_location="meta")["state_dict"]["w"].is_meta
    assert calls == [{"map_location": "cpu", "weights_only": True, "mmap": True},
                     {"map_location": "meta", "weights_only": True, "mmap": True},
                     {"map_location": "meta", "weights_only": True}]
