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
from tests.hand_set import two_expert_model

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


def _h(*p: float) -> float:
    return -sum(q * math.log2(q) for q in p)


@pytest.mark.parametrize("variant", ["DenseMoE", "TopKMoE", "ProductOfExperts", "AttentionGateMoE"])
def test_every_variant_logs_the_hand_computed_metrics_on_val_and_test(variant: str) -> None:
    from tests.conftest import tiny_trainer

    model = two_expert_model(variant)
    x, y = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 0, 1, 0])
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=2)
    trainer = tiny_trainer()
    # A -> expert 0, which predicts 0; B -> expert 1, which predicts 1. Counts (expert, prediction) [[2, 0], [0, 2]],
    # (expert, label) [[2, 0], [1, 1]]. Class 0 (A, A, B) has mean gate [7/12, 5/12], class 1 (B) [1/4, 3/4].
    expected = {
        "mutual_information": 1.0,
        "mutual_information_label": 0.5 * math.log2(4 / 3) + 0.25 * math.log2(2 / 3) + 0.25 * math.log2(2),
        "sample_entropy": _h(0.75, 0.25),
        "expert_usage": 1.0,
        "per_task_entropy": (_h(7 / 12, 5 / 12) + _h(0.25, 0.75)) / 2,
        "importance_cv": 0.0,
        "acc": 0.75,  # every variant predicts [0, 0, 1, 1] (the dense mixture: [0.675, 0.325] on A, [0.425, 0.575] on B)
    }
    if variant in ("DenseMoE", "AttentionGateMoE"):
        expected["loss"] = -(2 * math.log(0.675) + math.log(0.575) + math.log(0.425)) / 4
    for stage, run in (("val", trainer.validate), ("test", trainer.test)):
        (logged,) = run(model, data, verbose=False)
        for name, value in expected.items():
            assert logged[f"{stage}/{name}"] == pytest.approx(value, abs=1e-5), f"{stage}/{name}"


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


@pytest.mark.parametrize("name", ["MutualInformation", "SampleEntropy", "ExpertUsage", "ImportanceCV", "PerTaskEntropy",
                                  "ExpertAllocation"])
def test_two_processes_synced_equal_one_process_on_all_the_data(name: str) -> None:
    """A DDP sync, emulated: rank 0's compute() all-gathers its states with rank 1's (torchmetrics' own sync path)."""
    import gmnn.metrics

    cls = getattr(gmnn.metrics, name)
    args = {"MutualInformation": (E, 3), "PerTaskEntropy": (E, 3), "ExpertAllocation": (E, 3)}.get(name, (E,))
    gate = torch.softmax(torch.randn(30, E) * 3, -1)
    labels, predictions = torch.randint(0, 3, (30,)), torch.randint(0, 3, (30,))
    inputs = {"MutualInformation": (gate, labels), "PerTaskEntropy": (gate, labels),
              "ExpertAllocation": (gate, labels, predictions)}.get(name, (gate,))

    def gather(tensor: torch.Tensor, group: object = None) -> list[torch.Tensor]:
        (state,) = [s for s in rank0._defaults if getattr(rank0, s) is tensor]
        return [tensor, getattr(rank1, state)]

    rank0 = cls(*args, dist_sync_fn=gather, distributed_available_fn=lambda: True)
    rank1, whole = cls(*args), cls(*args)
    rank0.update(*(t[:13] for t in inputs))
    rank1.update(*(t[13:] for t in inputs))
    whole.update(*inputs)
    synced, expected = rank0.compute(), whole.compute()
    for key, value in (synced.items() if isinstance(synced, dict) else [("value", synced)]):
        reference = expected[key] if isinstance(expected, dict) else expected
        torch.testing.assert_close(value, reference, equal_nan=True, msg=f"{name} {key}")
    unsynced = cls(*args)
    unsynced.update(*(t[:13] for t in inputs))
    assert not torch.allclose(unsynced.compute()["usage"] if name == "ExpertAllocation" else unsynced.compute(),
                              expected["usage"] if name == "ExpertAllocation" else expected)  # the halves differ
