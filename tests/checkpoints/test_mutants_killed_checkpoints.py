"""Tests written for mutmut's survivors in ``gmnn/checkpoints/`` and ``gmnn/cli/resume.py`` (CONTRIBUTING.md,
"Mutation testing", fourth run): each fails on the named mutants.

Values are worked out by hand in the comments; the mutant names are those of ``mutmut results``
(``x_<function>__mutmut_<n>``, shortened here to ``<function> <n>``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from gmnn.checkpoints import compatibility, reading, reuse
from gmnn.cli import resume


def _save(path: Path, **entries: Any) -> Path:
    """A checkpoint file of ``entries`` (tensors and plain values only)."""
    torch.save(entries, path)
    return path


class _Tiny(nn.Module):
    """A module with ``hparams`` as a LightningModule has them."""

    def __init__(self, width: int = 2, **hparams: Any) -> None:
        super().__init__()
        self.layer = nn.Linear(width, 1)
        self.hparams = {"width": width, **hparams}


# --- compatibility.py -----------------------------------------------------------------------------------


def test_a_tuple_and_a_list_of_the_same_values_are_the_same_setting() -> None:
    """Killed: ``_plain`` 1 (tuples never made lists: ``(4,)`` in the model and ``[4]`` in the checkpoint would
    be named as a difference)."""
    model = _Tiny(width=2, hidden=(4,))
    # the checkpoint has width 3 (the layer's weight is [1, 3]) and the same hidden sizes as a list
    checkpoint = {"state_dict": {"layer.weight": torch.zeros(1, 3), "layer.bias": torch.zeros(1)},
                  "hyper_parameters": {"width": 3, "hidden": [4]}}
    with pytest.raises(ValueError) as error:
        compatibility.check_checkpoint_matches(model, checkpoint, "ck")
    assert str(error.value) == (
        "ck does not fit this _Tiny: width=3 in the checkpoint but 2 in the model. "
        "Build the model with the checkpoint's settings (e.g. its saved config.yaml)."
    )


def test_explain_overrides_names_every_changed_keyword_and_only_those(tmp_path: Path) -> None:
    """Killed: ``explain_overrides`` 27, 29 (the saved or the passed value read as ``None``: an override equal to
    the checkpoint's value named as changed) and 33 (the ``"; "`` between the changes)."""
    path = _save(tmp_path / "a.ckpt", state_dict={}, hyper_parameters={"k": 1, "width": 3, "hidden": [4]})
    error = ValueError("checkpoint does not fit this TopKMoE")
    # k and width differ; hidden (4,) passed equals the saved [4]; extra is not in the checkpoint
    out = compatibility.explain_overrides(error, path, {"k": 2, "hidden": (4,), "width": 5, "extra": 1})
    assert str(out) == (
        f"checkpoint {path} does not fit: k=1 in the checkpoint but k=2 was passed to load_from_checkpoint; "
        "width=3 in the checkpoint but width=5 was passed to load_from_checkpoint"
    )
    # every override equal to the checkpoint's values: the error is returned as it was
    assert compatibility.explain_overrides(error, path, {"k": 1, "hidden": [4]}) is error
    assert compatibility.explain_overrides(error, path, {"width": 3}) is error


def test_explain_overrides_leaves_other_errors_and_file_objects_alone(tmp_path: Path) -> None:
    """Killed: ``explain_overrides`` 1 (``or`` -> ``and`` before ``hasattr``: an error that is not "does not fit"
    restated), 2 (``not overrides and ...``: the file read although nothing was passed), 8, 12, 13 (``hasattr`` of
    ``None`` / ``"XXreadXX"`` / ``"READ"``: a file object read again) and 16, 18 (``hyper_parameters``
    defaulting to ``None``: a checkpoint without them raises ``TypeError``)."""
    path = _save(tmp_path / "a.ckpt", state_dict={}, hyper_parameters={"k": 1})
    other = ValueError("something else went wrong")
    assert compatibility.explain_overrides(other, path, {"k": 2}) is other
    misfit = ValueError("checkpoint does not fit this TopKMoE")
    # nothing passed: the file is not read at all (this one does not exist)
    assert compatibility.explain_overrides(misfit, tmp_path / "missing.ckpt", {}) is misfit
    # an open file is not read again (it holds k=1, and k=2 is passed)
    handle = io.BytesIO(path.read_bytes())
    assert compatibility.explain_overrides(misfit, handle, {"k": 2}) is misfit
    # a checkpoint without hyper-parameters: nothing to compare with
    bare = _save(tmp_path / "bare.ckpt", state_dict={})
    assert compatibility.explain_overrides(misfit, bare, {"k": 2}) is misfit


# --- reading.py ------------------------------------------------------------------------------------------


def test_the_first_line_of_an_error_names_its_type_and_at_most_120_characters() -> None:
    """Killed: ``_first_line`` 1-8 (no test of the selection reached it): the lines set to ``None`` or read from
    ``str(None)``, the type of ``None``, the ``if lines`` forced either way, the second line, 121 characters, and
    ``'XXXX'`` for an empty message."""
    assert reading._first_line(OSError("  first line\nsecond line  ")) == "OSError: first line"
    assert reading._first_line(ValueError("")) == "ValueError: "
    assert reading._first_line(RuntimeError("a" * 121)) == "RuntimeError: " + "a" * 120


def test_a_folder_given_as_a_checkpoint_cannot_be_opened(tmp_path: Path) -> None:
    """``_load_failure`` of an ``IsADirectoryError``: the reason quotes the error's first line."""
    with pytest.raises(reading.UnreadableCheckpoint) as error:
        reading.read_checkpoint(tmp_path, "--ckpt_path")
    reason = f"it cannot be opened (IsADirectoryError: [Errno 21] Is a directory: '{tmp_path}')"
    assert error.value.reason == reason
    assert str(error.value) == f"--ckpt_path {tmp_path} cannot be read: {reason}"


def test_cuda_random_states_are_restored_only_where_the_same_number_of_gpus_is_present(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed: ``set_rng_states`` 15 (``"cuda" in states or ...``: CUDA states of the checkpoint set on a machine
    without CUDA). ``set_rng_states`` 8 (``astype(None)``: the NumPy key array as float64) is equivalent: NumPy's
    ``set_state`` casts the keys to uint32, and every uint32 is exact in float64."""
    restored: list[list[torch.Tensor]] = []
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    states = compatibility.rng_states()
    states["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    compatibility.set_rng_states(states)
    assert restored == []
    # CUDA present, but two GPUs here and one state in the checkpoint
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    compatibility.set_rng_states(states)
    assert restored == []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    compatibility.set_rng_states(states)
    assert len(restored) == 1 and torch.equal(restored[0][0], torch.zeros(16, dtype=torch.uint8))


# --- reuse.py --------------------------------------------------------------------------------------------


def test_names_on_one_side_only_come_first_then_the_shapes_that_differ() -> None:
    """Killed: ``_mismatched`` 7 (the shapes compared over the union of the names: ``KeyError`` for a name on
    one side only)."""
    one, two = torch.zeros(1), torch.zeros(2)
    source = {"a": one, "b": one, "d": one}
    target = {"a": two, "c": one, "d": one}
    # b and c are on one side only; a differs in shape; d matches
    assert reuse._mismatched(source, target) == ["b", "c", "a"]


# --- cli/resume.py ---------------------------------------------------------------------------------------


def test_a_value_is_shown_as_text() -> None:
    """Killed: ``_shown`` 4 (the value itself returned, not its text). ``_shown`` 3 (``str(plain)`` also for a
    string) is equivalent: ``str`` of a string is that string."""
    assert resume._shown((1, 2)) == "[1, 2]"
    assert resume._shown(0.5) == "0.5"
    assert resume._shown("relu") == "relu"


def _tensorboard(init_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """A config of ``validate`` with a TensorBoard logger whose version is not pinned."""
    args = {"save_dir": "logs", "name": "lightning_logs", "version": None, "sub_dir": None, **(init_args or {})}
    return {"trainer": {"logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": args}}}


def test_evaluation_logs_into_the_run_of_a_checkpoint_file_and_not_of_a_special_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed: ``log_into_checkpoint_run`` 8 (``or`` -> ``and`` after ``in SPECIAL_PATHS``: a file named ``last``
    in the working folder taken for the checkpoint), 9 (``not ckpt_path and ...``: no ``ckpt_path`` reaches
    ``Path(None)``, a ``TypeError``), 51, 52 (the ``sub_dir`` key renamed: TensorBoard's logger not recognised)
    and 59 (``save_dir`` set to ``"None"``)."""
    run = tmp_path.resolve() / "logs" / "exp" / "version_3"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    (run / "checkpoints" / "epoch=1.ckpt").write_bytes(b"")
    (run / "checkpoints" / "last").write_bytes(b"")
    # no checkpoint: nothing to log into
    config = {"ckpt_path": None, **_tensorboard()}
    assert resume.log_into_checkpoint_run(config, "validate") is None
    # "last" is a special name even where a file of that name is in the working folder
    monkeypatch.chdir(run / "checkpoints")
    config = {"ckpt_path": "last", **_tensorboard()}
    assert resume.log_into_checkpoint_run(config, "validate") is None
    assert config["trainer"]["logger"]["init_args"] == _tensorboard()["trainer"]["logger"]["init_args"]
    # a checkpoint file of the run: <save_dir>/<name>/<version>/<sub_dir> is version_3/validate
    config = {"ckpt_path": "epoch=1.ckpt", **_tensorboard()}
    assert resume.log_into_checkpoint_run(config, "validate") == run / "validate"
    assert config["trainer"]["logger"]["init_args"] == {
        "save_dir": str(tmp_path.resolve() / "logs"), "name": "exp", "version": "version_3", "sub_dir": "validate"}


def test_evaluation_logs_into_the_checkpoint_run_only_where_it_is_a_gmnn_run_and_the_version_is_free(
    tmp_path: Path
) -> None:
    """Killed: ``log_into_checkpoint_run`` 37 (``... or init_args is None`` -> ``and``: a run without
    ``config.yaml`` logged into), 38 (``!= "checkpoints" or`` -> ``and``: a checkpoint outside a
    ``checkpoints/`` folder taken for the run's) and 47-49 (the ``version`` key renamed: a version pinned by the
    user replaced)."""
    run = tmp_path.resolve() / "logs" / "exp" / "version_0"
    for folder in ("checkpoints", "other"):
        (run / folder).mkdir(parents=True)
        (run / folder / "a.ckpt").write_bytes(b"")
    untouched = _tensorboard()["trainer"]["logger"]["init_args"]
    # no config.yaml: not a gmnn run
    config = {"ckpt_path": str(run / "checkpoints" / "a.ckpt"), **_tensorboard()}
    assert resume.log_into_checkpoint_run(config, "test") is None
    assert config["trainer"]["logger"]["init_args"] == untouched
    (run / "config.yaml").write_text("model: {}\n")
    # a checkpoint in another folder than checkpoints/
    config = {"ckpt_path": str(run / "other" / "a.ckpt"), **_tensorboard()}
    assert resume.log_into_checkpoint_run(config, "test") is None
    assert config["trainer"]["logger"]["init_args"] == untouched
    # the version pinned by the user
    config = {"ckpt_path": str(run / "checkpoints" / "a.ckpt"), **_tensorboard({"version": "mine"})}
    assert resume.log_into_checkpoint_run(config, "test") is None
    assert config["trainer"]["logger"]["init_args"] == {**untouched, "version": "mine"}
    # else the run's folder: logs/exp/version_0/test
    config = {"ckpt_path": str(run / "checkpoints" / "a.ckpt"), **_tensorboard()}
    assert resume.log_into_checkpoint_run(config, "test") == run / "test"


def test_csv_evaluation_logs_into_the_checkpoint_run_and_keeps_its_checkpoint_folders(tmp_path: Path) -> None:
    """Killed: ``log_into_checkpoint_run`` 79-82 (the ``checkpoint`` / ``last_checkpoint`` keys renamed: their
    ``dirpath`` left unset, so <run>/validate/checkpoints), 83, 88 (``and`` -> ``or`` / ``is None``: a callback
    missing from the config looked up, a ``KeyError``), 84, 85 (``_get`` of ``None`` or key ``None``: never set),
    89, 90, 93-95 (the ``dirpath`` test read from ``None`` / another key or inverted: the user's dirpath replaced)
    and 96 (``dirpath`` set to ``None``)."""
    run = tmp_path.resolve() / "logs" / "exp" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"")

    def csv_config(**callbacks: Any) -> dict[str, Any]:
        logger = {"class_path": "lightning.pytorch.loggers.CSVLogger",
                  "init_args": {"save_dir": "logs", "name": "lightning_logs", "version": None}}
        return {"ckpt_path": str(ckpt), "trainer": {"logger": logger}, **callbacks}

    config = csv_config(checkpoint={"dirpath": None, "monitor": "val_loss"}, last_checkpoint={"dirpath": None})
    assert resume.log_into_checkpoint_run(config, "validate") == run / "validate"
    # CSVLogger's log_dir is <save_dir>/<name>/<version> = logs/exp/version_0/validate
    assert config["trainer"]["logger"]["init_args"] == {
        "save_dir": str(tmp_path.resolve() / "logs"), "name": "exp/version_0", "version": "validate"}
    assert config["checkpoint"] == {"dirpath": str(run / "checkpoints"), "monitor": "val_loss"}
    assert config["last_checkpoint"] == {"dirpath": str(run / "checkpoints")}
    # no checkpoint callback in the config, and a dirpath the user set: both left as they are
    config = csv_config(last_checkpoint={"dirpath": "elsewhere"})
    assert resume.log_into_checkpoint_run(config, "validate") == run / "validate"
    assert "checkpoint" not in config
    assert config["last_checkpoint"] == {"dirpath": "elsewhere"}


def test_a_namespace_of_the_command_line_is_compared_as_the_plain_dict_a_checkpoint_holds() -> None:
    """Killed: ``_plain_value`` 1 (``hasattr(None, "as_dict")``: a jsonargparse ``Namespace``, which is no
    ``Mapping``, left as it is and never equal to the checkpoint's dict)."""
    from jsonargparse import Namespace

    value = Namespace(hidden=(8, 4), gate=Namespace(kind="mlp", sizes=(2,)))
    assert resume._plain_value(value) == {"hidden": [8, 4], "gate": {"kind": "mlp", "sizes": [2]}}
    assert resume._shown(value) == "{'hidden': [8, 4], 'gate': {'kind': 'mlp', 'sizes': [2]}}"


def _csv_run(root: Path, name: str, rows: str | None) -> Any:
    """A CSV logger of ``root/name/version_0``, its ``metrics.csv`` holding ``rows`` (none: no file)."""
    from gmnn.pl import CSVLogger

    logger = CSVLogger(str(root), name=name, version=0)
    if rows is not None:
        Path(logger.log_dir).mkdir(parents=True)
        (Path(logger.log_dir) / "metrics.csv").write_text(rows)
    return logger


def test_resuming_keeps_the_rows_of_every_csv_run_after_other_loggers(tmp_path: Path) -> None:
    """Killed: ``keep_csv_metrics`` 5 and 12 (``continue`` -> ``break``: a CSV logger after another logger, or after a
    CSV logger without a ``metrics.csv``, lost the rows of its earlier epochs)."""
    import types
    import warnings

    other = types.SimpleNamespace()  # any logger that is not a CSVLogger
    empty = _csv_run(tmp_path, "empty", None)
    kept = _csv_run(tmp_path, "kept", "epoch,step,val/loss\n0,9,0.5\n1,19,\n")
    trainer = types.SimpleNamespace(is_global_zero=True, loggers=[other, empty, kept])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resume.keep_csv_metrics(trainer)
    assert kept.experiment.metrics_keys == ["epoch", "step", "val/loss"]
    assert kept.experiment.metrics == [{"epoch": "0", "step": "9", "val/loss": "0.5"}, {"epoch": "1", "step": "19"}]
    # killed too: 27 (the filter never matching): the warning that earlier files will be deleted is false here
    assert not [w for w in caught if "exists and is not empty" in str(w.message)]


def test_another_variants_checkpoint_is_named_by_its_class_and_one_without_settings_by_its_parameters() -> None:
    """Killed: ``check_checkpoint_matches`` 1, 2 (the default ``source`` is ``"checkpoint"``), 17, 18 (the short
    class name is what follows the last dot: ``TopKMoE``, not ``models.topk.TopKMoE``) and 31, 33 (a checkpoint
    without ``hyper_parameters``: its differing parameters are named, where reading the settings of ``None``
    raised a ``TypeError``). Sixth run."""
    model = _Tiny()  # width 2: layer.weight [1, 2]
    saved = "gmnn.models.topk.TopKMoE"
    with pytest.raises(ValueError) as error:
        compatibility.check_checkpoint_matches(model, {compatibility.CLASS_KEY: saved})
    assert str(error.value) == (
        f"checkpoint holds a TopKMoE ({saved}), but the model is a _Tiny: "
        f"use --model={saved} (or TopKMoE.load_from_checkpoint / MoEModule.load_from_checkpoint)"
    )
    wider = {"state_dict": {"layer.weight": torch.zeros(1, 3), "layer.bias": torch.zeros(1)}}  # no hyper_parameters
    with pytest.raises(ValueError) as error:
        compatibility.check_checkpoint_matches(model, wider)
    assert str(error.value) == (
        "checkpoint does not fit this _Tiny: parameters that differ: layer.weight. "
        "Build the model with the checkpoint's settings (e.g. its saved config.yaml)."
    )


def test_parameters_that_differ_are_the_missing_the_extra_and_the_reshaped_ones_of_any_module() -> None:
    """Killed: ``check_checkpoint_matches`` 56, 57 (``^`` and ``|`` mixed up: the list of differing parameters
    lost the missing and extra ones, or named only the shared ones) and 39, 42 (a module without ``hparams``
    read as ``None``: a ``TypeError`` instead of the message). Sixth run."""
    # _Tiny (width 2): layer.weight [1, 2], layer.bias [1]; the checkpoint: layer.weight [1, 3] (reshaped),
    # extra.weight (extra), no layer.bias (missing), and the same width, so only the parameters can be named
    state = {"layer.weight": torch.zeros(1, 3), "extra.weight": torch.zeros(1)}
    with pytest.raises(ValueError) as error:
        compatibility.check_checkpoint_matches(_Tiny(), {"state_dict": state, "hyper_parameters": {"width": 2}}, "ck")
    assert str(error.value) == (
        "ck does not fit this _Tiny: parameters that differ: extra.weight, layer.bias, layer.weight. "
        "Build the model with the checkpoint's settings (e.g. its saved config.yaml)."
    )
    with pytest.raises(ValueError) as error:  # a plain module: no hparams at all
        compatibility.check_checkpoint_matches(nn.Linear(2, 1), {"state_dict": {"weight": torch.zeros(1, 3), "bias": torch.zeros(1)},
                                                                 "hyper_parameters": {"width": 3}}, "ck")
    assert str(error.value) == (
        "ck does not fit this Linear: parameters that differ: weight. "
        "Build the model with the checkpoint's settings (e.g. its saved config.yaml)."
    )


def test_at_most_five_differing_parameters_and_every_differing_setting_are_named() -> None:
    """Killed: ``check_checkpoint_matches`` 65 (six parameters named instead of five) and 69 (the ``"; "`` between
    two differing settings). Sixth run."""
    model = nn.Sequential(*[nn.Linear(1, 1, bias=False) for _ in range(6)])  # 0.weight .. 5.weight, [1, 1] each
    state = {f"{i}.weight": torch.zeros(1, 2) for i in range(6)}  # all six reshaped
    with pytest.raises(ValueError) as error:
        compatibility.check_checkpoint_matches(model, {"state_dict": state}, "ck")
    assert str(error.value) == (
        "ck does not fit this Sequential: parameters that differ: 0.weight, 1.weight, 2.weight, 3.weight, 4.weight. "
        "Build the model with the checkpoint's settings (e.g. its saved config.yaml)."
    )
    checkpoint = {"state_dict": {"layer.weight": torch.zeros(1, 3), "layer.bias": torch.zeros(1)},
                  "hyper_parameters": {"width": 3, "depth": 1}}
    with pytest.raises(ValueError) as error:
        compatibility.check_checkpoint_matches(_Tiny(depth=2), checkpoint, "ck")
    assert str(error.value) == (
        "ck does not fit this _Tiny: width=3 in the checkpoint but 2 in the model; depth=1 in the checkpoint but 2 in "
        "the model. Build the model with the checkpoint's settings (e.g. its saved config.yaml)."
    )
