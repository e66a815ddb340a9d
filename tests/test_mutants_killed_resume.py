"""Tests written for mutmut's survivors in ``gmnn/cli/resume.py`` (CONTRIBUTING.md, "Mutation testing"): each
fails on the named mutants.

The functions are called directly with tiny dicts and tiny checkpoint files in ``tmp_path`` (no ``gmnn fit``);
the mutant names are those of ``mutmut results`` (``x_<function>__mutmut_<n>``, shortened here to
``<function> <n>``). Expected values are worked out by hand in the comments.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from gmnn.checkpoints.reading import UnreadableCheckpoint
from gmnn.checkpoints.variants import CLASS_KEY
from gmnn.cli import resume

DENSE = "gmnn.models.dense.DenseMoE"


def _save(path: Path, **entries: Any) -> Path:
    """A checkpoint file of ``entries`` (tensors and plain values only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(entries, path)
    return path


def _empty(path: Path) -> Path:
    """An empty file: ``read_checkpoint`` refuses it with "it is empty (0 bytes)"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _cannot_read(path: Path) -> str:
    """The exact message of ``read_checkpoint(path, "--ckpt_path")`` for an empty file."""
    return f"--ckpt_path {path} cannot be read: it is empty (0 bytes)"


class _Tiny(nn.Module):
    """A module with ``hparams`` as a LightningModule has them."""

    def __init__(self, width: int = 2) -> None:
        super().__init__()
        self.layer = nn.Linear(width, 1)
        self.hparams = {"width": width}


# --- _get, _logger_kind, experiment_of, _saved_experiment ------------------------------------------------


def test_get_reads_dicts_and_attributes_and_falls_back_to_the_default() -> None:
    """Kills ``_get`` 1, 2 (a bool or a string read as a namespace: ``True.real`` is 1, ``"abc".upper`` a method;
    a dict answered with the default), 3-14, 16-20, 22-26 (the getter of a dict or of an object without ``get``
    broken, the key or the default not passed, ``None`` values not replaced by the default)."""
    assert resume._get(None, "a", 5) == 5
    assert resume._get(True, "real", 7) == 7
    assert resume._get("abc", "upper", 7) == 7
    assert resume._get({"a": 1}, "a") == 1
    assert resume._get({"a": 1}, "b", 4) == 4
    assert resume._get({"a": None}, "a", 3) == 3
    assert resume._get({"a": 0}, "a", 3) == 0  # a false value that is not None is kept
    assert resume._get(SimpleNamespace(a=1), "a") == 1
    assert resume._get(SimpleNamespace(a=1), "b", 4) == 4
    assert resume._get(SimpleNamespace(a=None), "a", 6) == 6
    assert resume._get(SimpleNamespace(a=1), "b") is None


def test_logger_kind_is_the_class_name_after_the_last_dot() -> None:
    """Kills ``_logger_kind`` 1-14 (``partition`` instead of ``rpartition``, the key, the separator, the index and
    the ``""`` default when the entry has no ``class_path``)."""
    assert resume._logger_kind({"class_path": "lightning.pytorch.loggers.CSVLogger"}) == "CSVLogger"
    assert resume._logger_kind(SimpleNamespace(class_path="TensorBoardLogger")) == "TensorBoardLogger"
    assert resume._logger_kind({"init_args": {}}) == ""
    assert resume._logger_kind(None) == ""


def test_experiment_of_keeps_the_model_data_seed_optimizer_and_schedule() -> None:
    """Kills ``experiment_of`` 1 (every value read as ``config.get(None)``)."""
    config = {"model": {"k": 1}, "data": "d", "seed_everything": 3, "optimizer": "o", "trainer": {"max_epochs": 2}}
    assert resume.experiment_of(config) == {"model": {"k": 1}, "data": "d", "seed_everything": 3, "optimizer": "o",
                                            "lr_scheduler": None}


def test_saved_experiment_reads_the_run_config_yaml(tmp_path: Path) -> None:
    """Kills ``_saved_experiment`` 1-10 (the file name, the missing-file check, the YAML not read, a config that is
    not a mapping passed on)."""
    run = tmp_path / "version_0"
    run.mkdir()
    assert resume._saved_experiment(run) is None  # no config.yaml
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"k": 2}, "seed_everything": 1, "trainer": {}}))
    assert resume._saved_experiment(run) == {"model": {"k": 2}, "data": None, "seed_everything": 1,
                                             "optimizer": None, "lr_scheduler": None}
    (run / "config.yaml").write_text("- a list\n- not a config\n")
    assert resume._saved_experiment(run) is None


# --- differences -------------------------------------------------------------------------------------------


def test_differences_names_every_dotted_key_that_changed() -> None:
    """Kills ``differences`` 1 (the default prefix ``"XXXX"``), 3-20 (the keys of only one side left out, every key
    but the last dropped, ``key=str`` dropped: the int and str keys cannot be sorted together, the saved or
    current value or the prefix not passed down), 25-31 (equal values named, changed ones not, the trailing dot
    kept or the leading one stripped), 32 (``rstrip("XX.XX")`` also strips the ``X`` that ends a key)."""
    saved = {"model": {"k": 1, "hidden": [4], "X": 1, "same": "a"}, "data": "mnist", 1: "one"}
    current = {"model": {"k": 2, "hidden": (4,), "X": 2, "same": "a", "new": 0.5}, "seed_everything": 3, 1: "uno"}
    # keys sorted as strings: "1" < "data" < "model" < "seed_everything"; inside model: X < hidden < k < new < same
    assert resume.differences(saved, current) == [
        "1: 'one' -> 'uno'",
        "data: 'mnist' -> None",
        "model.X: 1 -> 2",
        "model.k: 1 -> 2",
        "model.new: None -> 0.5",
        "seed_everything: None -> 3",
    ]
    assert resume.differences(saved, saved) == []
    assert resume.differences(1, 2) == [": 1 -> 2"]


def test_differences_of_a_mapping_and_a_plain_value_and_of_tuples() -> None:
    """Kills ``differences`` 2 (``or``: a mapping against a plain value taken apart), 21-24 (tuples not compared as
    lists, or every value passed to ``list``)."""
    assert resume.differences({"a": 1}, 5, "x.") == ["x: {'a': 1} -> 5"]
    assert resume.differences((1, 2), [1, 2]) == []
    assert resume.differences([1, 2], (1, 2)) == []
    assert resume.differences((1, 2), (1, 3), "t.") == ["t: (1, 2) -> (1, 3)"]


# --- unreadable, _full_class_path, _model_options -----------------------------------------------------------


def test_unreadable_says_why_or_none(tmp_path: Path) -> None:
    """Kills ``unreadable`` 1, 3 (another file read: a good checkpoint reported unreadable)."""
    good = _save(tmp_path / "good.ckpt", state_dict={})
    assert resume.unreadable(good) is None
    assert resume.unreadable(_empty(tmp_path / "empty.ckpt")) == "it is empty (0 bytes)"


def test_full_class_path_is_where_the_class_is_defined() -> None:
    """Kills ``_full_class_path`` 1-10 (the module and the class name split elsewhere, not imported, not looked up)."""
    assert resume._full_class_path("gmnn.models.DenseMoE") == DENSE
    assert resume._full_class_path(DENSE) == DENSE
    assert resume._full_class_path("gmnn.models.NoSuchMoE") == "gmnn.models.NoSuchMoE"
    assert resume._full_class_path("no_such_module_here.X") == "no_such_module_here.X"


def test_model_options_names_each_model_init_argument_once() -> None:
    """Kills ``_model_options`` 1-38: the list check, the ``--model.`` prefix, ``continue`` -> ``break`` after the
    subcommand, the value after the first ``=``, the ``init_args.`` prefix, the name before the first ``.``,
    the four names that are not init arguments, and each name once."""
    args = [
        "fit", "--trainer.max_epochs=1", "--model.init_args.k=2", "--model.k", "3", "--model.init_args.hidden.0=4",
        "--model.temperature=a=b", "--model.class_path=x", "--model.init_args={k: 2}", "--model.dict_kwargs.x=1",
        "--model.help", "--model.init_args.k=5",
    ]
    assert resume._model_options(args) == ["k", "hidden", "temperature"]
    assert resume._model_options(tuple(args)) == ["k", "hidden", "temperature"]
    assert resume._model_options(None) == []
    assert resume._model_options("--model.k=2") == []


# --- check_readable, read_tensors_only, check_ckpt_path -----------------------------------------------------


def test_check_readable_reads_only_local_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kills ``check_readable`` 1-10 (which paths are left to Lightning: ``None``, ``last`` even when a file of that
    name is in the working folder, a URL even when a local path of that spelling exists, a missing file) and
    11-16 (the file or the option named in the error)."""
    monkeypatch.chdir(tmp_path)
    _empty(tmp_path / "last")
    _empty(tmp_path / "s3:" / "bucket.ckpt")  # "s3://bucket.ckpt" is this file for pathlib
    for left_alone in (None, "last", "s3://bucket.ckpt", str(tmp_path / "missing.ckpt")):
        assert resume.check_readable(left_alone) is None
    assert resume.check_readable(str(_save(tmp_path / "good.ckpt", state_dict={}))) is None
    empty = str(_empty(tmp_path / "empty.ckpt"))
    with pytest.raises(UnreadableCheckpoint) as error:
        resume.check_readable(empty)
    assert str(error.value) == _cannot_read(empty)


def test_read_tensors_only_sets_weights_only_when_unset() -> None:
    """Kills ``read_tensors_only`` 1-19 (each part of the condition, the key and the value ``True``)."""
    config: dict[str, Any] = {"ckpt_path": "a.ckpt", "weights_only": None}
    resume.read_tensors_only(config)
    assert config == {"ckpt_path": "a.ckpt", "weights_only": True}
    config = {"ckpt_path": "a.ckpt", "weights_only": False}
    resume.read_tensors_only(config)
    assert config == {"ckpt_path": "a.ckpt", "weights_only": False}
    config = {"ckpt_path": None, "weights_only": None}
    resume.read_tensors_only(config)
    assert config == {"ckpt_path": None, "weights_only": None}
    config = {"ckpt_path": "a.ckpt"}  # a subcommand without --weights_only
    resume.read_tensors_only(config)
    assert config == {"ckpt_path": "a.ckpt"}


def test_check_ckpt_path_refuses_missing_unreadable_and_misfit_files(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Kills ``check_ckpt_path`` 1-10 (which paths are left to Lightning, the "does not exist" message), 11-19, 21,
    22 (the file not read or not passed on, the model not checked) and 13, 15-17, 20, 23 (the option named in the
    error)."""
    monkeypatch.chdir(tmp_path)
    model = _Tiny(width=2)
    for left_alone in (None, "last", "best", "s3://bucket/a.ckpt"):
        assert resume.check_ckpt_path(model, left_alone) is None
    missing = str(tmp_path / "missing.ckpt")
    with pytest.raises(ValueError) as error:
        resume.check_ckpt_path(model, missing)
    assert str(error.value) == f"--ckpt_path {missing} does not exist"
    good = _save(tmp_path / "good.ckpt", state_dict=_Tiny(width=2).state_dict(), hyper_parameters={"width": 2})
    assert resume.check_ckpt_path(model, str(good)) is None
    wider = _save(tmp_path / "wider.ckpt", state_dict=_Tiny(width=3).state_dict(), hyper_parameters={"width": 3})
    with pytest.raises(ValueError) as error:
        resume.check_ckpt_path(model, str(wider))
    assert str(error.value) == (
        f"--ckpt_path {wider} does not fit this _Tiny: width=3 in the checkpoint but 2 in the model. "
        "Build the model with the checkpoint's settings (e.g. its saved config.yaml)."
    )
    empty = str(_empty(tmp_path / "empty.ckpt"))
    with pytest.raises(UnreadableCheckpoint) as error:
        resume.check_ckpt_path(model, empty)
    assert str(error.value) == _cannot_read(empty)


# --- warn_ignored_model_options ----------------------------------------------------------------------------


def test_warn_ignored_model_options_names_the_options_the_checkpoint_replaces(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Kills ``warn_ignored_model_options`` 1-7, 10-15 (the path or the options not read), 17, 18, 20, 22, 24,
    28-58 (the checkpoint's or the config's values not read or compared: equal values named, changed ones not,
    names the checkpoint lacks looked up in it), 59-61 (the line and the ``"; "`` between the options)."""
    path = _save(tmp_path / "a.ckpt", state_dict={},
                 hyper_parameters={"k": 1, "hidden": [4], "temperature": 1.0, "name": "a"})
    config = {"ckpt_path": str(path),
              "model": {"class_path": "x", "init_args": {"k": 2, "hidden": (4,), "temperature": 1.0, "name": "b",
                                                         "extra": 3}}}
    args = ["fit", "--model.init_args.k=2", "--model.hidden=[4]", "--model.temperature=1.0", "--model.name=b",
            "--model.extra=3", "--model.missing=1"]
    resume.warn_ignored_model_options(config, args)
    # k and name differ; hidden (4,) is the checkpoint's [4]; temperature is equal; extra and missing are not saved
    assert capsys.readouterr().err == (
        f"gmnn: warning: --ckpt_path {path}: the model comes from the checkpoint, ignoring "
        "--model.init_args.k=2 (the checkpoint's: 1); --model.init_args.name=b (the checkpoint's: a)\n"
    )
    resume.warn_ignored_model_options(config, ["--model.temperature=1.0"])
    assert capsys.readouterr().err == ""


def test_warn_ignored_model_options_reads_only_a_local_file_when_model_options_are_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Kills ``warn_ignored_model_options`` 8, 9 (a missing file, or no ``ckpt_path``, read), 16 (a file read
    although no model option was given), 19, 21 (a checkpoint without hyper-parameters) and 23, 25-27 (the option
    named when the file cannot be read)."""
    monkeypatch.chdir(tmp_path)
    model = {"class_path": "x", "init_args": {"k": 2}}
    resume.warn_ignored_model_options({"ckpt_path": None, "model": model}, ["--model.k=2"])
    resume.warn_ignored_model_options({"ckpt_path": str(tmp_path / "missing.ckpt"), "model": model}, ["--model.k=2"])
    empty = str(_empty(tmp_path / "empty.ckpt"))
    resume.warn_ignored_model_options({"ckpt_path": empty, "model": model}, ["fit", "--trainer.max_epochs=2"])
    bare = _save(tmp_path / "bare.ckpt", state_dict={})
    resume.warn_ignored_model_options({"ckpt_path": str(bare), "model": model}, ["--model.k=2"])
    assert capsys.readouterr().err == ""
    with pytest.raises(UnreadableCheckpoint) as error:
        resume.warn_ignored_model_options({"ckpt_path": empty, "model": model}, ["--model.k=2"])
    assert str(error.value) == _cannot_read(empty)


# --- check_config_fits_checkpoint --------------------------------------------------------------------------


def _config(ckpt_path: Any, class_path: str | None = "gmnn.models.DenseMoE", **init_args: Any) -> dict[str, Any]:
    """A config as the CLI parses it: ``ckpt_path`` and a model entry."""
    model: dict[str, Any] = {"init_args": init_args}
    if class_path is not None:
        model["class_path"] = class_path
    return {"ckpt_path": ckpt_path, "model": model}


def test_config_that_fits_the_checkpoint_passes(tmp_path: Path) -> None:
    """Kills ``check_config_fits_checkpoint`` 34-40, 47-76 (the hyper-parameters, the classes or the expert counts
    not read or compared: a fitting config refused), 36, 38 (a checkpoint without hyper-parameters) and 73 (a
    checkpoint that names no class)."""
    path = _save(tmp_path / "a.ckpt", state_dict={}, hyper_parameters={"num_experts": 3}, **{CLASS_KEY: DENSE})
    assert resume.check_config_fits_checkpoint(_config(str(path), num_experts=3)) is None
    bare = _save(tmp_path / "bare.ckpt", state_dict={}, **{CLASS_KEY: DENSE})
    assert resume.check_config_fits_checkpoint(_config(str(bare))) is None
    unnamed = _save(tmp_path / "unnamed.ckpt", state_dict={}, hyper_parameters={"num_experts": 3})
    assert resume.check_config_fits_checkpoint(_config(str(unnamed), "gmnn.models.TopKMoE", num_experts=3)) is None


def test_the_saved_class_comes_first_from_the_checkpoint_then_from_its_hyper_parameters(tmp_path: Path) -> None:
    """Kills ``check_config_fits_checkpoint`` 42 (``and``: the hyper-parameters' class read although the checkpoint
    names one) and 43-46 (the checkpoint's own class entry, or the hyper-parameters' one, not read)."""
    both = _save(tmp_path / "both.ckpt", state_dict={}, hyper_parameters={"num_experts": 3,
                                                                         "_class_path": "gmnn.models.topk.TopKMoE"},
                 **{CLASS_KEY: DENSE})
    assert resume.check_config_fits_checkpoint(_config(str(both), num_experts=3)) is None
    hp_only = _save(tmp_path / "hp.ckpt", state_dict={}, hyper_parameters={"num_experts": 3, "_class_path": DENSE})
    with pytest.raises(ValueError) as error:
        resume.check_config_fits_checkpoint(_config(str(hp_only), "gmnn.models.TopKMoE", num_experts=3))
    assert str(error.value) == (
        f"--ckpt_path {hp_only} holds a DenseMoE with num_experts=3, but the config asks for a TopKMoE with "
        "num_experts=3; use the config of the run that wrote it"
    )


def test_another_variant_is_refused_naming_both(tmp_path: Path) -> None:
    """Kills ``check_config_fits_checkpoint`` 1-14, 17, 18, 20-26 (the path or the model not read: the check
    skipped), 41, 71 (``or``: the same expert count let another variant through), 77-79, 82, 84-96 (the message:
    the short class names, the counts, the hint when there is no config.yaml beside the run)."""
    path = _save(tmp_path / "a.ckpt", state_dict={}, hyper_parameters={"num_experts": 3}, **{CLASS_KEY: DENSE})
    with pytest.raises(ValueError) as error:
        resume.check_config_fits_checkpoint(_config(str(path), "gmnn.models.TopKMoE", num_experts=3))
    assert str(error.value) == (
        f"--ckpt_path {path} holds a DenseMoE with num_experts=3, but the config asks for a TopKMoE with "
        "num_experts=3; use the config of the run that wrote it"
    )


def test_another_expert_count_is_refused_pointing_at_the_run_config(tmp_path: Path) -> None:
    """Kills ``check_config_fits_checkpoint`` 71 (``or``: the same variant let another expert count through) and
    80, 81, 83 (the hint to the run's own ``config.yaml``)."""
    run = tmp_path / "version_0"
    path = _save(run / "checkpoints" / "last.ckpt", state_dict={}, hyper_parameters={"num_experts": 3},
                 **{CLASS_KEY: DENSE})
    (run / "config.yaml").write_text("model: {}\n")
    with pytest.raises(ValueError) as error:
        resume.check_config_fits_checkpoint(_config(str(path), num_experts=4))
    assert str(error.value) == (
        f"--ckpt_path {path} holds a DenseMoE with num_experts=3, but the config asks for a DenseMoE with "
        f"num_experts=4; use --config {run / 'config.yaml'}"
    )


def test_config_check_reads_only_an_existing_file_for_a_config_with_a_model_class(tmp_path: Path) -> None:
    """Kills ``check_config_fits_checkpoint`` 15, 16, 19 (a missing file, no ``ckpt_path`` or a model without a
    class read) and 27-33 (the file or the option named when it cannot be read)."""
    empty = str(_empty(tmp_path / "empty.ckpt"))
    assert resume.check_config_fits_checkpoint(_config(None, num_experts=3)) is None
    assert resume.check_config_fits_checkpoint(_config(str(tmp_path / "missing.ckpt"), num_experts=3)) is None
    assert resume.check_config_fits_checkpoint(_config(empty, None, num_experts=3)) is None
    with pytest.raises(UnreadableCheckpoint) as error:
        resume.check_config_fits_checkpoint(_config(empty, num_experts=3))
    assert str(error.value) == _cannot_read(empty)
