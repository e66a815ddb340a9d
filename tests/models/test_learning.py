"""A small model actually learns."""

import time

from gmnn.data import ToyDataModule
from gmnn.models import DenseMoE
from tests.conftest import tiny_trainer


def test_dense_moe_solves_the_4x4_checkerboard() -> None:
    data = ToyDataModule("checkerboard_4x4", num_samples=16000, batch_size=128, seed=0)
    model = DenseMoE(input_shape=[2], num_classes=2, num_experts=4, expert_hidden=[32, 32], gate_hidden=[32], lr=0.01)
    start = time.perf_counter()
    trainer = tiny_trainer(max_epochs=20, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, data)
    accuracy = trainer.test(model, data, verbose=False)[0]["test/acc"]
    seconds = time.perf_counter() - start
    assert accuracy >= 0.95, f"test accuracy {accuracy:.3f} after {seconds:.0f}s"
