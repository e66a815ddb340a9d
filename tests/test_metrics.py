"""Decomposition metrics: exact values on hand-built gates, DDP-style merging, no NaN."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gmnn.metrics import (
    DecompositionMetrics,
    ExpertAllocation,
    ExpertUsage,
    ImportanceCV,
    MutualInformation,
    PerTaskEntropy,
    SampleEntropy,
)

E = 4


def _one_hot_routing(n_per_class: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(E).repeat_interleave(n_per_class)
    return F.one_hot(labels, E).float(), labels


def _values(gate: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor | None = None) -> dict[str, float]:
    metrics = DecompositionMetrics(E, E)
    metrics.update_from(gate, labels, labels if predictions is None else predictions)
    return {k: float(v) for k, v in metrics.compute().items()}


def test_each_class_to_its_own_expert_is_a_perfect_decomposition() -> None:
    values = _values(*_one_hot_routing())
    assert values["mutual_information"] == pytest.approx(math.log2(E))
    assert values["mutual_information_label"] == pytest.approx(math.log2(E))
    assert values["sample_entropy"] == pytest.approx(0.0)
    assert values["expert_usage"] == pytest.approx(math.log2(E))
    assert values["per_task_entropy"] == pytest.approx(0.0)
    assert values["importance_cv"] == pytest.approx(0.0)


def test_uniform_gate_has_maximal_entropies_and_no_information() -> None:
    labels = torch.arange(E).repeat(3)
    values = _values(torch.full((len(labels), E), 1 / E), labels)
    assert values["sample_entropy"] == pytest.approx(2.0)
    assert values["expert_usage"] == pytest.approx(2.0)
    assert values["per_task_entropy"] == pytest.approx(2.0)
    assert values["mutual_information"] == pytest.approx(0.0, abs=1e-6)


def test_one_expert_taking_everything() -> None:
    labels = torch.arange(E).repeat(3)
    gate = F.one_hot(torch.full_like(labels, 2), E).float()
    values = _values(gate, labels)
    assert values["expert_usage"] == pytest.approx(0.0)
    assert values["mutual_information"] == pytest.approx(0.0, abs=1e-6)
    assert values["sample_entropy"] == pytest.approx(0.0)
    assert values["importance_cv"] == pytest.approx(math.sqrt(E - 1))


def test_hand_computed_two_by_two_mutual_information() -> None:
    # counts [[3, 1], [1, 3]]: p = [[3/8, 1/8], [1/8, 3/8]], marginals 1/2
    experts = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    classes = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0])
    metric = MutualInformation(2, 2)
    metric.update(F.one_hot(experts, 2).float(), classes)
    expected = 2 * (3 / 8) * math.log2((3 / 8) / (1 / 4)) + 2 * (1 / 8) * math.log2((1 / 8) / (1 / 4))
    assert torch.equal(metric.counts, torch.tensor([[3, 1], [1, 3]]))
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-6)  # 0.18872...
    assert expected == pytest.approx(0.188722, abs=1e-6)


def test_sample_entropy_and_usage_by_hand() -> None:
    gate = torch.tensor([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    entropy, usage = SampleEntropy(E), ExpertUsage(E)
    entropy.update(gate)
    usage.update(gate)
    assert float(entropy.compute()) == pytest.approx(0.5)  # (1 + 0) / 2
    # mean gate [0.75, 0.25, 0, 0]
    assert float(usage.compute()) == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))


def test_allocation_matrix_and_per_expert_accuracy() -> None:
    gate = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    labels = torch.tensor([0, 0, 1, 0])
    predictions = torch.tensor([0, 1, 1, 0])
    allocation = ExpertAllocation(2, 2)
    allocation.update(gate, labels, predictions)
    result = allocation.compute()
    torch.testing.assert_close(result["allocation"], torch.tensor([[0.7, 0.3], [0.3, 0.7]]))
    torch.testing.assert_close(result["expert_accuracy"], torch.tensor([0.5, 1.0]))
    assert result["routed"].tolist() == [2, 2]
    per_task = PerTaskEntropy(2, 2)
    per_task.update(gate, labels)
    h = -(0.7 * math.log2(0.7) + 0.3 * math.log2(0.3))
    assert float(per_task.compute()) == pytest.approx(h, abs=1e-6)


def test_importance_cv_by_hand() -> None:
    metric = ImportanceCV(2)
    metric.update(torch.tensor([[1.0, 0.0], [0.5, 0.5]]))  # importance [1.5, 0.5]: mean 1, std 0.5
    assert float(metric.compute()) == pytest.approx(0.5)


def test_two_halves_equal_one_update_and_reset_clears() -> None:
    gate = torch.softmax(torch.randn(40, E) * 3, -1)
    labels, predictions = torch.randint(0, 3, (40,)), torch.randint(0, 3, (40,))
    whole, halves = DecompositionMetrics(E, 3), DecompositionMetrics(E, 3)
    whole.update_from(gate, labels, predictions)
    halves.update_from(gate[:17], labels[:17], predictions[:17])
    halves.update_from(gate[17:], labels[17:], predictions[17:])
    expected = whole.compute()
    for name, value in halves.compute().items():
        torch.testing.assert_close(value, expected[name])
    allocation_whole, allocation_halves = ExpertAllocation(E, 3), ExpertAllocation(E, 3)
    allocation_whole.update(gate, labels, predictions)
    allocation_halves.update(gate[:17], labels[:17], predictions[:17])
    allocation_halves.update(gate[17:], labels[17:], predictions[17:])
    for key, value in allocation_halves.compute().items():
        torch.testing.assert_close(value, allocation_whole.compute()[key], equal_nan=True)
    halves.reset()
    for metric in halves.values():
        assert all(not torch.any(getattr(metric, state)) for state in metric._defaults)


def test_zero_probabilities_give_finite_values() -> None:
    gate = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])
    values = _values(gate, torch.tensor([0, 1]), torch.tensor([1, 1]))
    assert all(math.isfinite(v) for v in values.values()), values
    assert values["sample_entropy"] == pytest.approx(0.5)
    empty = _values(torch.zeros(0, E), torch.zeros(0, dtype=torch.long))
    assert all(math.isfinite(v) for v in empty.values()), empty


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: MutualInformation(0, 2), "num_experts"),
        (lambda: PerTaskEntropy(2, 0), "num_classes"),
        (lambda: SampleEntropy(-1), "num_experts"),
    ],
)
def test_bad_arguments_name_the_parameter(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_shapes_name_the_input() -> None:
    with pytest.raises(ValueError, match="gate_probs"):
        SampleEntropy(E).update(torch.rand(3, E + 1))
    with pytest.raises(ValueError, match="classes"):
        MutualInformation(E, 2).update(torch.rand(3, E), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("variant", ["DenseMoE", "TopKMoE", "ProductOfExperts", "AttentionGateMoE"])
def test_every_variant_logs_the_metrics_on_val_and_test(variant: str) -> None:
    import gmnn.models
    from tests.conftest import tiny_trainer

    model = getattr(gmnn.models, variant)(input_shape=[2], num_classes=3, num_experts=E)
    x, y = torch.randn(48, 2), torch.arange(3).repeat(16)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    trainer = tiny_trainer(max_epochs=1, limit_train_batches=1)
    trainer.fit(model, data, data)
    names = ("mutual_information", "mutual_information_label", "sample_entropy", "expert_usage", "per_task_entropy")
    for name in names:
        assert math.isfinite(float(trainer.callback_metrics[f"val/{name}"])), name
    trainer.test(model, data, verbose=False)
    model.eval()
    with torch.no_grad():
        out = model(x)
    expected = DecompositionMetrics(E, 3)
    expected.update_from(out.gate_probs, y, out.chosen_expert_log_probs().argmax(-1))
    for name, value in expected.compute().items():  # keys carry no prefix
        assert float(trainer.callback_metrics[f"test/{name}"]) == pytest.approx(float(value), abs=1e-5), name


def test_gate_histogram_and_usage_of_the_allocation_metric() -> None:
    gate = torch.tensor([[1.0, 0.0], [0.7, 0.3], [0.2, 0.8]])
    allocation = ExpertAllocation(2, 2, bins=4)  # bins [0, .25) [.25, .5) [.5, .75) [.75, 1]
    allocation.update(gate, torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]))
    result = allocation.compute()
    assert result["histogram"].tolist() == [[1, 0, 1, 1], [1, 1, 0, 1]]
    torch.testing.assert_close(result["usage"], torch.tensor([1.9 / 3, 1.1 / 3]))
    torch.testing.assert_close(result["expert_accuracy"], torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="bins"):
        ExpertAllocation(2, 2, bins=0)
