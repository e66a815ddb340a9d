"""Tests written for mutmut's survivors (CONTRIBUTING.md, "Mutation testing"): each fails on the named mutant.

Values are worked out by hand in the comments; the mutant names are those of ``mutmut results``.
"""

from __future__ import annotations

import pytest
import torch

from gmnn.metrics import ExpertAllocation
from gmnn.nn.functional.combine import product_of_experts


def test_allocation_of_a_single_sample_reports_its_gate_as_usage_and_its_class_count() -> None:
    """Killed: ``ExpertAllocation.compute`` mutants 3 (``clamp_min(1)`` -> ``clamp_min(2)``: usage halved for one
    sample) and 11/12 (the ``class_counts`` key renamed: nothing read it)."""
    allocation = ExpertAllocation(num_experts=2, num_classes=3)
    # one sample of class 2, gate (0.25, 0.75), chosen expert 1 predicts class 2 (correct)
    allocation.update(torch.tensor([[0.25, 0.75]]), torch.tensor([2]), torch.tensor([2]))
    out = allocation.compute()
    # usage = gate mass per expert / number of samples = (0.25, 0.75) / 1
    torch.testing.assert_close(out["usage"], torch.tensor([0.25, 0.75]))
    assert out["class_counts"].tolist() == [0, 0, 1]
    assert out["routed"].tolist() == [0, 1]
    # allocation column 2 is that sample's gate; unseen classes 0 and 1 are all zeros
    torch.testing.assert_close(out["allocation"], torch.tensor([[0.0, 0.0, 0.25], [0.0, 0.0, 0.75]]))


def test_product_of_experts_names_the_expert_input_of_the_wrong_shape() -> None:
    """Killed: ``product_of_experts`` mutant 1 (``check_shape(None, ...)``: the message named no input)."""
    with pytest.raises(ValueError, match=r"^expert_log_probs must have shape \[2, 3, '\*'\], got \[2, 4, 5\]$"):
        product_of_experts(torch.ones(2, 3), torch.zeros(2, 4, 5))


def test_allocation_names_predictions_of_the_wrong_shape() -> None:
    """Killed: ``ExpertAllocation.update`` mutants 5, 11, 12 (the name ``predictions`` dropped or changed)."""
    allocation = ExpertAllocation(num_experts=2, num_classes=3)
    with pytest.raises(ValueError, match=r"^predictions must have shape \[2\], got \[3\]$"):
        allocation.update(torch.tensor([[0.5, 0.5], [1.0, 0.0]]), torch.tensor([0, 1]), torch.tensor([0, 1, 2]))


def test_allocation_counts_no_routed_samples_for_experts_the_gate_never_chooses() -> None:
    """Killed: ``ExpertAllocation.update`` mutant 23 (``bincount`` without ``minlength``: with only expert 0 chosen
    its one count broadcast to every expert)."""
    allocation = ExpertAllocation(num_experts=3, num_classes=2)
    # two samples, both routed to expert 0; the first is predicted right, the second wrong
    allocation.update(torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.25, 0.25]]), torch.tensor([0, 1]), torch.tensor([0, 0]))
    out = allocation.compute()
    assert out["routed"].tolist() == [2, 0, 0]
    torch.testing.assert_close(out["expert_accuracy"][0], torch.tensor(0.5))
    assert out["expert_accuracy"][1:].isnan().all()  # no samples routed: NaN, as documented
