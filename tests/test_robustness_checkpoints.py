"""Checkpoints: refused when they do not fit, portable from GPU to CPU, complete enough to reproduce metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.serialization
from torch.utils.data import DataLoader, TensorDataset

from gmnn.cli import make_cli
from gmnn.data import ToyDataModule
from gmnn.models import DenseMoE, MoEModule, TopKMoE
from tests.conftest import tiny_trainer
from tests.test_cli import ROOT

COMMON = dict(input_shape=[2], num_classes=3, num_experts=4, expert_hidden=[8], gate_hidden=[8])
SMALL = ["--data.init_args.num_samples=400"]


def _data() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(16, 2), torch.randint(0, 3, (16,))), batch_size=8)


def _checkpoint(model: MoEModule, path: Path) -> Path:
    trainer = tiny_trainer(max_epochs=1)
    trainer.fit(model, _data())
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A 2-epoch toy fit through the CLI: its run folder and its last logged metrics."""
    save_dir = tmp_path_factory.mktemp("runs")
    cli = make_cli(
        ["fit", "--config", str(ROOT / "configs/toy/dense.yaml"), "--trainer.max_epochs=2",
         "--model.init_args.num_experts=3", f"--trainer.logger.init_args.save_dir={save_dir}", *SMALL]
    )
    return Path(cli.trainer.logger.log_dir), dict(cli.trainer.callback_metrics)


def test_load_from_checkpoint_refuses_another_expert_count(tmp_path: Path) -> None:
    path = _checkpoint(DenseMoE(**COMMON), tmp_path / "four.ckpt")
    with pytest.raises(ValueError, match=r"four.ckpt does not fit: num_experts=4 in the checkpoint but num_experts=6 was passed to load_from_checkpoint"):
        MoEModule.load_from_checkpoint(path, num_experts=6)


def test_trainer_ckpt_path_refuses_another_variant_and_expert_count(tmp_path: Path) -> None:
    path = _checkpoint(TopKMoE(k=2, **COMMON), tmp_path / "topk.ckpt")
    with pytest.raises(ValueError, match=r"holds a TopKMoE \(gmnn.models.topk.TopKMoE\), but the model is a DenseMoE"):
        tiny_trainer(max_epochs=2).fit(DenseMoE(**COMMON), _data(), ckpt_path=path)
    with pytest.raises(ValueError, match=rf"checkpoint {path} does not fit this TopKMoE: num_experts=4 in the checkpoint but 2"):
        tiny_trainer().test(TopKMoE(k=2, **{**COMMON, "num_experts": 2}), _data(), ckpt_path=path)


def test_cli_refuses_a_mismatched_ckpt_path_before_training(toy_run: tuple[Path, dict], tmp_path: Path) -> None:
    ckpt = toy_run[0] / "checkpoints" / "last.ckpt"
    common = ["--config", str(ROOT / "configs/toy/dense.yaml"), f"--trainer.logger.init_args.save_dir={tmp_path}", *SMALL]
    saved = toy_run[0] / "config.yaml"
    with pytest.raises(ValueError, match=rf"--ckpt_path {ckpt} holds a DenseMoE with num_experts=3, but the config "
                       rf"asks for a DenseMoE with num_experts=4; use --config {saved}"):
        make_cli(["fit", "--ckpt_path", str(ckpt), *common])
    with pytest.raises(ValueError, match=r"holds a DenseMoE with num_experts=3, but the config asks for a TopKMoE"):
        make_cli(["test", "--ckpt_path", str(ckpt), *common, "--model=gmnn.models.TopKMoE", "--model.init_args.num_experts=3"])
    # the data decides num_classes: a 3-class problem cannot reuse an 8-class (split_discs) checkpoint
    with pytest.raises(ValueError, match=r"does not fit this DenseMoE: num_classes=8 in the checkpoint but 3 in the model"):
        make_cli(["test", "--ckpt_path", str(ckpt), *common, "--model.init_args.num_experts=3",
                  "--data.init_args.problem=gaussian_clusters"])
    with pytest.raises(ValueError, match=r"--ckpt_path nowhere.ckpt does not exist"):
        make_cli(["test", "--ckpt_path", "nowhere.ckpt", *common])
    assert not list(tmp_path.rglob("*.ckpt")), "nothing may run before the checkpoint is checked"


def _save_as_if_on_gpu(checkpoint: dict, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Write ``checkpoint`` with every tensor tagged as stored on ``cuda:0``, as a GPU run writes it."""
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(checkpoint, path)


def test_a_gpu_checkpoint_loads_on_cpu(toy_run: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu_path = toy_run[0] / "checkpoints" / "last.ckpt"
    gpu_path = tmp_path / "gpu.ckpt"
    _save_as_if_on_gpu(torch.load(cpu_path, weights_only=False), gpu_path, monkeypatch)
    if not torch.cuda.is_available():  # the fake really is a GPU checkpoint
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(gpu_path, weights_only=False)
    model = MoEModule.load_from_checkpoint(gpu_path, map_location="cpu").eval()
    reference = MoEModule.load_from_checkpoint(cpu_path).eval()
    x = torch.randn(8, 2)
    assert model.device.type == "cpu"
    torch.testing.assert_close(model(x).log_probs, reference(x).log_probs, rtol=0, atol=0)
    assert MoEModule.load_from_checkpoint(gpu_path).device.type == "cpu"  # Lightning's default keeps storages on CPU
    test = make_cli(["test", "--config", str(toy_run[0] / "config.yaml"), "--ckpt_path", str(gpu_path),
                     f"--trainer.logger.init_args.save_dir={tmp_path}"])
    assert 0 <= test.trainer.callback_metrics["test/acc"] <= 1


def test_checkpoint_holds_model_and_data_settings(toy_run: tuple[Path, dict]) -> None:
    checkpoint = torch.load(toy_run[0] / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["hyper_parameters"]["num_experts"] == 3
    assert checkpoint["datamodule_hyper_parameters"]["num_samples"] == 400
    assert checkpoint["datamodule_hyper_parameters"]["problem"] == "split_discs"


def test_saved_config_and_checkpoint_reproduce_the_logged_metrics(toy_run: tuple[Path, dict], tmp_path: Path) -> None:
    run_dir, logged = toy_run
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    again = ["--config", str(run_dir / "config.yaml"), "--ckpt_path", ckpt, f"--trainer.logger.init_args.save_dir={tmp_path}"]
    validate = make_cli(["validate", *again])
    for name in [k for k in logged if k.startswith("val/")]:  # every val/* metric the fit logged in its last epoch
        torch.testing.assert_close(validate.trainer.callback_metrics[name], logged[name], msg=name)
    test = make_cli(["test", *again])
    # reference: the checkpoint alone (its hyperparameters and its data module's settings), no config
    checkpoint = torch.load(ckpt, weights_only=False)
    settings = {k: v for k, v in checkpoint["datamodule_hyper_parameters"].items() if not k.startswith("_")}
    assert checkpoint["datamodule_hyper_parameters"]["_class_path"] == "gmnn.data.ToyDataModule"
    data = ToyDataModule(**settings)
    (expected,) = tiny_trainer().test(MoEModule.load_from_checkpoint(ckpt), datamodule=data, verbose=False)
    assert set(expected) <= set(test.trainer.callback_metrics)
    for name, value in expected.items():
        torch.testing.assert_close(test.trainer.callback_metrics[name].item(), value, msg=name)
