"""Tests written for mutmut's survivors (CONTRIBUTING.md, "Mutation testing"): each fails on the named mutant.

Values are worked out by hand in the comments; the mutant names are those of ``mutmut results``.
"""

from __future__ import annotations

import math

import pytest
import torch

from gmnn.metrics import (
    ExpertAllocation,
    ExpertUsage,
    ImportanceCV,
    MutualInformation,
    PerTaskEntropy,
    SampleEntropy,
    mutual_information_bits,
)
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


# --- second triage: the rest of gmnn/metrics/ and combine.py's survivors -------------------------------------------


def test_mutual_information_names_classes_of_the_wrong_shape() -> None:
    """Killed: ``MutualInformation.update`` mutant 11 (the name ``classes`` in the shape error changed to
    ``XXclassesXX``; ``test_metrics`` only searched for the word)."""
    with pytest.raises(ValueError, match=r"^classes must have shape \[3\], got \[4\]$"):
        MutualInformation(2, 2).update(torch.rand(3, 2), torch.zeros(4, dtype=torch.long))


def test_single_sample_usage_and_sample_entropy_divide_by_one_sample() -> None:
    """Killed: ``ExpertUsage.compute`` mutant 4 and ``SampleEntropy.compute`` mutant 3 (``total.clamp_min(1)`` ->
    ``clamp_min(2)``: one sample counted as two)."""
    usage = ExpertUsage(2)
    usage.update(torch.tensor([[1.0, 0.0]]))
    # mean gate (1, 0): H = 0 bits; the mutant's (0.5, 0) gives -0.5 log2 0.5 = 0.5 bits
    assert float(usage.compute()) == 0.0
    entropy = SampleEntropy(2)
    entropy.update(torch.tensor([[0.5, 0.5]]))
    # one sample of entropy 1 bit: mean 1 (the mutant halves it)
    assert float(entropy.compute()) == 1.0


def test_importance_cv_when_the_mean_gate_mass_is_below_one() -> None:
    """Killed: ``ImportanceCV.compute`` mutant 6 (``mean.clamp_min(1e-12)`` -> ``clamp_min(1.000000000001)``: the
    mean, B / E, is below 1 whenever there are fewer samples than experts)."""
    cv = ImportanceCV(4)
    cv.update(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    # gate sums (1, 0, 0, 0): mean 1/4, population std sqrt(1/4 - 1/16) = sqrt(3)/4, CV sqrt(3) = sqrt(E - 1)
    assert float(cv.compute()) == pytest.approx(math.sqrt(3.0))


def test_per_task_entropy_leaves_unseen_classes_out_and_is_zero_before_any_sample() -> None:
    """Killed: ``PerTaskEntropy.compute`` mutants 1 (``seen = None``) and 2 (``class_counts >= 0``): both average
    over every class, unseen ones at 0 bits; mutant 10 (``nan_to_num(1.0)``: 1 bit with no samples)."""
    metric = PerTaskEntropy(num_experts=2, num_classes=3)
    metric.update(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    # no class seen: the mean over no classes is NaN, reported as 0
    assert float(metric.compute()) == 0.0
    # class 0: gate (0.5, 0.5), 1 bit; class 2: gate (1, 0), 0 bits; class 1 never seen
    metric.update(torch.tensor([[0.5, 0.5], [1.0, 0.0]]), torch.tensor([0, 2]))
    # mean over the two seen classes: 0.5 bits (over all three classes it would be 1/3)
    assert float(metric.compute()) == 0.5


def test_mutual_information_is_the_same_for_any_total_mass() -> None:
    """Killed: ``mutual_information_bits`` mutant 4 (``counts.sum().clamp_min(1e-12)`` -> ``clamp_min(1.000000000001)``:
    a matrix whose entries sum to less than 1 is no longer normalised)."""
    # diagonal 2 x 2: each expert has its own class, I = 1 bit whatever the total
    for total in (0.25, 1.0, 8.0):
        assert float(mutual_information_bits(torch.eye(2, dtype=torch.float64) * total / 2)) == pytest.approx(1.0)
    # the mutant at total 1/4: joint = diag(1/8) un-normalised, outer 1/64, I = 2 * 1/8 * log2 8 = 0.75 bits


def test_mutual_information_has_a_finite_gradient_when_a_cell_is_zero() -> None:
    """Killed: ``mutual_information_bits`` mutant 26 (``joint > 0`` -> ``joint >= 0``). The value is the same
    (``xlogy(0, 0) = 0``): the ``where`` keeps only the gradient finite, 0 / 0 -> NaN in every cell without it."""
    joint = torch.tensor([[0.5, 0.0], [0.0, 0.5]], dtype=torch.float64, requires_grad=True)
    mutual_information_bits(joint).backward()
    assert joint.grad is not None and torch.isfinite(joint.grad).all()
    # d I / d c_11 at diag(1/2), by hand (nats): the (1,1) term gives 1/2 ln 2 - 1/2, the (2,2) term -1/2 ln 2 + 1/2
    torch.testing.assert_close(joint.grad.diagonal(), torch.zeros(2, dtype=torch.float64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the histogram's device only shows on a second device")
def test_allocation_histogram_on_cuda() -> None:
    """Killed on a CUDA machine only: ``ExpertAllocation.update`` mutants 45 (``arange(..., device=None)``) and 47
    (the device argument dropped): the expert offsets made on the CPU cannot be added to CUDA bin indices."""
    allocation = ExpertAllocation(num_experts=2, num_classes=2, bins=4).to("cuda")
    gate = torch.tensor([[0.9, 0.1], [0.3, 0.7]], device="cuda")
    allocation.update(gate, torch.tensor([0, 1], device="cuda"), torch.tensor([0, 1], device="cuda"))
    # bins of width 1/4: expert 0 gets 0.9 -> bin 3, 0.3 -> bin 1; expert 1 gets 0.1 -> bin 0, 0.7 -> bin 2
    assert allocation.compute()["histogram"].tolist() == [[0, 1, 0, 1], [1, 0, 1, 0]]
