"""gmnn.cli.logging_speed: Lightning's move of a logged value's accumulator, skipped only when nothing would move."""

from __future__ import annotations

import dataclasses
import importlib
import sys
import types
import warnings

import pytest
import torch

from gmnn.cli import logging_speed
from gmnn.cli.logging_speed import all_on, install, requested_device

CPU, META = torch.device("cpu"), torch.device("meta")


def result_module(package: str = "pytorch_lightning"):
    return importlib.import_module(f"{package}.{logging_speed.RESULT_MODULE}")


@pytest.fixture
def lightning_to(monkeypatch: pytest.MonkeyPatch):
    """Lightning's own ``_ResultMetric.to`` in place for the test (restored after it), counting its calls."""
    cls = result_module()._ResultMetric
    original = getattr(cls.to, "__wrapped_to__", cls.to)
    calls = []

    def counted(self, *args, **kwargs):
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "to", counted)
    return cls, calls


def new_result_metric(cls, value: float = 2.0):
    module = result_module()
    meta = module._Metadata(fx="training_step", name="train/loss", on_step=True, on_epoch=True)
    meta.sync = module._Sync()
    metric = cls(meta, True)
    metric.update(torch.tensor(value), 4)
    return metric


def test_a_metric_already_on_the_device_is_returned_without_lightnings_walk(lightning_to):
    cls, calls = lightning_to
    metric = new_result_metric(cls)
    value, meta = metric.value, metric.meta
    assert install("pytorch_lightning")
    assert metric.to(CPU) is metric and metric.to("cpu") is metric
    assert calls == []  # Lightning's walk never ran
    assert metric.value is value and metric.meta is meta and float(metric.value) == 8.0


def test_a_move_elsewhere_runs_lightnings_method_and_moves_every_state(lightning_to):
    cls, calls = lightning_to
    metric = new_result_metric(cls)
    install("pytorch_lightning")
    metric.to(META)
    assert calls == [(META,)]
    assert metric.value.device == META and metric.cumulated_batch_size.device == META
    assert metric._forward_cache.device == META and metric._defaults["value"].device == META
    calls.clear()
    metric.to(META)  # now everything is there
    assert calls == []


def test_other_arguments_and_unknown_values_run_lightnings_method(lightning_to):
    cls, calls = lightning_to
    metric = new_result_metric(cls)
    install("pytorch_lightning")
    metric.to(torch.float64)  # a dtype: not a device
    assert calls == [(torch.float64,)] and metric.value.dtype == torch.float64

    class Holder:  # a kind of value the check cannot look into
        def __init__(self) -> None:
            self.tensor = torch.zeros(1)

    calls.clear()
    metric.extra = Holder()
    metric.to(CPU)
    assert calls == [(CPU,)]


def test_install_wraps_once_and_the_environment_variable_turns_it_off(lightning_to, monkeypatch):
    cls, _ = lightning_to
    counted = cls.to
    monkeypatch.setenv(logging_speed.ENV, "0")
    assert not install("pytorch_lightning") and cls.to is counted
    monkeypatch.setenv(logging_speed.ENV, "1")
    assert install("pytorch_lightning")
    wrapped = cls.to
    assert wrapped.__wrapped_to__ is counted
    assert install("pytorch_lightning") and cls.to is wrapped
    assert not install("gmnn")  # a package without Lightning's result module: nothing changes


def test_a_result_class_without_its_own_to_is_left_alone(monkeypatch):
    """A Lightning version whose ``_ResultMetric`` inherits ``to`` (or lacks the module) is not wrapped."""
    package = "fake_lightning"
    names = [package] + [f"{package}.{'.'.join(logging_speed.RESULT_MODULE.split('.')[:i])}"
                         for i in range(1, len(logging_speed.RESULT_MODULE.split(".")) + 1)]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))

    class Inherits(torch.nn.Module):
        pass

    sys.modules[names[-1]]._ResultMetric = Inherits
    assert not install(package) and "to" not in Inherits.__dict__


def test_the_other_lightning_namespace_is_wrapped_too():
    pytest.importorskip("lightning")
    cls = result_module("lightning.pytorch")._ResultMetric
    original = cls.__dict__["to"]
    try:
        assert install("lightning.pytorch")
        assert cls.to.__wrapped_to__ is getattr(original, "__wrapped_to__", original)
    finally:
        cls.to = original


def test_make_cli_installs_it():
    from gmnn.cli.app import make_cli

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_cli(["--config", "configs/toy/dense.yaml", "--trainer.logger=false"], run=False)
    assert hasattr(result_module()._ResultMetric.to, "__wrapped_to__")


@dataclasses.dataclass
class Record:
    name: str
    tensor: torch.Tensor


def test_all_on_looks_into_containers_and_dataclasses_and_gives_up_on_unknown_values():
    on_cpu, on_meta = torch.zeros(2), torch.zeros(2, device="meta")
    assert all_on({"a": [1, "x", (on_cpu, None)], "b": Record("r", on_cpu), "f": torch.mean, "g": len}, CPU) is True
    assert all_on({"a": [1, (on_cpu, on_meta)]}, CPU) is False
    assert all_on({"a": Record("r", on_meta)}, CPU) is False
    assert all_on({"a": torch.nn.Linear(1, 1)}, CPU) is None
    assert all_on([object()], CPU) is None
    assert all_on([on_meta, object()], CPU) is False  # the first tensor elsewhere decides
    assert all_on([torch.nn.Parameter(on_cpu)], CPU) is True


def test_a_tensor_subclass_runs_lightnings_method(lightning_to):
    """A subclass's ``to`` may do more than move it (here: change the dtype), so the walk runs for it."""
    cls, calls = lightning_to

    class Widening(torch.Tensor):
        def to(self, *args, **kwargs):
            return torch.Tensor.to(self, *args, **kwargs).double()

    metric = new_result_metric(cls)
    install("pytorch_lightning")
    metric.value = torch.zeros(()).as_subclass(Widening)
    metric.to(CPU)
    assert calls == [(CPU,)] and metric.value.dtype == torch.float64
    assert all_on({"a": torch.zeros(1).as_subclass(Widening)}, CPU) is None


def test_requested_device_reads_only_a_lone_device():
    assert requested_device((CPU,), {}) == CPU
    assert requested_device(("meta",), {}) == META
    assert requested_device((CPU,), {"non_blocking": True}) is None
    assert requested_device((torch.float32,), {}) is None
    assert requested_device(("no such device",), {}) is None
    assert requested_device((), {"device": CPU}) is None
    assert requested_device((), {}) is None
    assert requested_device((CPU, torch.float64), {}) is None  # a device and a dtype: not a lone device


def test_a_run_logs_the_same_values_with_and_without_the_fast_path(tmp_path, lightning_to):
    """Every logged value (per step, per epoch, synced evaluation means) is the same either way."""
    import pytorch_lightning as pl

    cls, calls = lightning_to

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(3, 1)

        def training_step(self, batch, batch_idx):
            loss = self.layer(batch[0]).square().mean()
            self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch[0]))
            self.log("train/half", loss / 2, on_step=False, on_epoch=True, batch_size=len(batch[0]))
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val/loss", self.layer(batch[0]).abs().mean(), sync_dist=True, batch_size=float(len(batch[0])))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def run() -> dict[str, float]:
        torch.manual_seed(0)
        data = torch.utils.data.TensorDataset(torch.randn(40, 3))
        loader = torch.utils.data.DataLoader(data, batch_size=6)
        logger = pl.loggers.CSVLogger(tmp_path, name=f"run{len(list(tmp_path.iterdir()))}")
        trainer = pl.Trainer(max_epochs=2, logger=logger, log_every_n_steps=1, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(Tiny(), loader, loader)
        logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
        logged["csv"] = (tmp_path / logger.name / "version_0" / "metrics.csv").read_text()
        return logged

    lightning = run()
    lightning_calls = len(calls)
    install("pytorch_lightning")
    calls.clear()
    fast = run()
    assert fast == lightning
    assert lightning_calls >= 40 and len(calls) < lightning_calls / 5  # most calls took the fast path
