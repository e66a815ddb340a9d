"""Clear errors for bad input: config typos, wrong types, bad batches, empty data, bad sizes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import gmnn.models.guards as base
from gmnn.cli import main, make_cli
from gmnn.data import ToyDataModule
from gmnn.models import DenseMoE
from tests.conftest import tiny_trainer
from tests.test_cli import ROOT

DENSE = str(ROOT / "configs/toy/dense.yaml")
COMMON = dict(input_shape=[2], num_classes=3, num_experts=2, expert_hidden=[4], gate_hidden=[4])


def _loader(x: torch.Tensor, y: torch.Tensor) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=4)


@pytest.mark.parametrize(
    ("argument", "named"),
    [
        ("--model.init_args.num_expert=3", "num_expert"),  # unknown key
        ("--model.init_args.num_experts=three", "num_experts"),  # wrong type
        ("--trainer.max_epoch=3", "max_epoch"),
        ("--data.init_args.batch_size=1.5", "batch_size"),
    ],
)
def test_config_typos_give_jsonargparse_message_and_nonzero_exit(
    argument: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        make_cli(["fit", "--config", DENSE, argument])
    assert exit_info.value.code not in (0, None)
    err = capsys.readouterr().err
    assert "error:" in err and named in err


def test_unknown_key_in_a_yaml_file_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text(Path(DENSE).read_text().replace("gate_hidden:", "gate_hiden:"))
    with pytest.raises(SystemExit) as exit_info:
        make_cli(["fit", "--config", str(config)])
    assert exit_info.value.code not in (0, None)
    assert "gate_hiden" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("--model.init_args.temperature=0", "temperature must be a finite number > 0, got 0.0"),
        ("--data.init_args.batch_size=0", "batch_size must be an integer >= 1, got 0"),
        ("--data.init_args.num_samples=0", "num_samples must be an integer >= 1, got 0"),
    ],
)
def test_the_gmnn_command_ends_bad_values_with_one_line(
    argument: str, message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GMNN_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", DENSE, argument, "--trainer.logger=false"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"gmnn: error: {message}" in err and "Traceback" not in err


def test_k_larger_than_num_experts_is_refused_by_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs/toy/topk.yaml"), "--model.init_args.k=9", "--trainer.logger=false"])
    assert exit_info.value.code == 1
    assert "k must be an integer in [1, num_experts=4], got 9" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ToyDataModule(batch_size=0), r"batch_size must be an integer >= 1, got 0"),
        (lambda: ToyDataModule(batch_size=-4), r"batch_size must be an integer >= 1, got -4"),
        (lambda: ToyDataModule(num_samples=0), r"num_samples must be an integer >= 1"),
        (lambda: ToyDataModule(num_samples=3, val_fraction=0.1), r"val_fraction=0.1 of num_samples=3 is 0 samples"),
        (lambda: ToyDataModule(num_samples=5, test_fraction=0.05), r"test_fraction=0.05 of num_samples=5 is 0"),
    ],
)
def test_empty_splits_and_bad_batch_sizes_fail_at_construction(make: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("stage", ["fit", "validate", "test"])
def test_labels_out_of_range_fail_on_the_first_batch_of_every_stage(stage: str) -> None:
    good = _loader(torch.randn(8, 2), torch.randint(0, 3, (8,)))
    bad = _loader(torch.randn(8, 2), torch.tensor([0, 1, 3, 0, 1, 2, 0, 1]))
    trainer = tiny_trainer(max_epochs=1, num_sanity_val_steps=0)
    name = {"fit": "train", "validate": "val", "test": "test"}[stage]
    with pytest.raises(ValueError, match=rf"{name} batch 0: labels must lie in \[0, num_classes=3\), got values in \[0, 3\]"):
        if stage == "fit":
            trainer.fit(DenseMoE(**COMMON), bad, good)
        else:
            getattr(trainer, stage)(DenseMoE(**COMMON), bad)


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (torch.randn(8, 3), torch.zeros(8, dtype=torch.long), r"input must have shape \[batch, 2\] \(the model's input_shape\), got \[4, 3\]"),
        (torch.randn(8, 1, 2), torch.zeros(8, dtype=torch.long), r"got \[4, 1, 2\]"),
        (torch.randn(8, 2), torch.zeros(8), r"labels must be an integer tensor, got dtype torch.float32"),
        (torch.randn(8, 2), torch.zeros(8, 2, dtype=torch.long), r"labels must have shape \[4\] \(one per input\), got \[4, 2\]"),
    ],
)
def test_batches_that_do_not_fit_the_model_name_both_shapes(x: torch.Tensor, y: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_trainer(max_epochs=1).fit(DenseMoE(**COMMON), _loader(x, y))


def test_every_cpu_batch_is_checked_with_its_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU reading a batch's label range costs no device sync, so every batch is checked."""
    calls: list[str] = []
    original = base.check_batch
    monkeypatch.setattr(base, "check_batch", lambda *args: calls.append(args[-1]) or original(*args))
    data = _loader(torch.randn(16, 2), torch.randint(0, 3, (16,)))
    trainer = tiny_trainer(max_epochs=3, num_sanity_val_steps=0)
    model = DenseMoE(**COMMON)
    trainer.fit(model, data, data)  # 3 epochs x 4 train and 4 val batches
    assert sorted(calls) == sorted([f"{stage} batch {i}" for stage in ("train", "val") for i in range(4)] * 3)
    calls.clear()
    trainer.test(model, data)
    assert calls == [f"test batch {i}" for i in range(4)]


def test_an_empty_training_set_is_an_error_not_a_silent_no_op() -> None:
    empty = _loader(torch.randn(0, 2), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="the training set is empty"):
        tiny_trainer(max_epochs=1).fit(DenseMoE(**COMMON), empty)


def test_a_missing_data_root_names_the_folder_and_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs/mnist/protocol.yaml"), f"--data.init_args.root={tmp_path}",
              "--trainer.logger=false"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"MNIST files missing in {tmp_path / 'MNIST' / 'raw'}" in err and "train-images-idx3-ubyte" in err
    assert "download=True" in err and "Traceback" not in err
