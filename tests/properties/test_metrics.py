"""Properties of the decomposition metrics (:mod:`gmnn.metrics`): mutual information is bounded by
``min(log2 E, H(class))`` and exact on hand cases; every metric's states, summed as DDP sums them, give on two
halves of the data what one process gives on all of it."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from gmnn.metrics import (ExpertAllocation, ExpertUsage, ImportanceCV, MutualInformation, PerTaskEntropy,
                          SampleEntropy, entropy_bits, mutual_information_bits)
from tests.properties.strategies import logits

FAST = settings(max_examples=60, deadline=None)
SIZES = st.tuples(st.integers(1, 5), st.integers(1, 5))  # experts E, classes C


@st.composite
def count_matrices(draw: st.DrawFn) -> torch.Tensor:
    """A joint count matrix ``[E, C]`` of small non-negative integers, not all zero."""
    experts, classes = draw(SIZES)
    counts = draw(arrays(np.int64, (experts, classes), elements=st.integers(0, 50)))
    counts[0, 0] += int(counts.sum() == 0)
    return torch.tensor(counts)


@FAST
@given(count_matrices())
def test_mutual_information_lies_between_0_and_the_smaller_entropy(counts: torch.Tensor) -> None:
    """``0 <= I(E;Y) <= min(log2 E, H(Y), H(E))``, symmetric in E and Y, and unchanged by scaling the counts or
    reordering experts and classes."""
    mi = mutual_information_bits(counts).item()
    joint = counts.double() / counts.sum()
    h_class, h_expert = entropy_bits(joint.sum(0)).item(), entropy_bits(joint.sum(1)).item()
    assert -1e-6 <= mi <= min(math.log2(counts.shape[0]), h_class, h_expert) + 1e-5
    assert math.isclose(mutual_information_bits(counts.t()).item(), mi, abs_tol=1e-6)
    assert math.isclose(mutual_information_bits(counts * 7).item(), mi, abs_tol=1e-6)
    shuffled = counts[torch.randperm(counts.shape[0])][:, torch.randperm(counts.shape[1])]
    assert math.isclose(mutual_information_bits(shuffled).item(), mi, abs_tol=1e-6)


@FAST
@given(st.lists(st.integers(1, 30), min_size=1, max_size=6), st.integers(0, 2**16))
def test_one_class_per_expert_gives_the_class_entropy_and_log2_e_when_balanced(sizes: list[int], seed: int) -> None:
    """A (permuted) diagonal count matrix: each expert owns one class, so I(E;Y) = H(Y); with equal counts log2 E."""
    generator = torch.Generator().manual_seed(seed)
    experts = len(sizes)
    counts = torch.diag(torch.tensor(sizes))[torch.randperm(experts, generator=generator)]
    class_entropy = entropy_bits(torch.tensor(sizes, dtype=torch.float64) / sum(sizes)).item()
    assert math.isclose(mutual_information_bits(counts).item(), class_entropy, abs_tol=1e-5)
    balanced = torch.eye(experts, dtype=torch.long)[torch.randperm(experts, generator=generator)] * sizes[0]
    assert math.isclose(mutual_information_bits(balanced).item(), math.log2(experts), abs_tol=1e-5)


@FAST
@given(st.lists(st.integers(0, 9), min_size=1, max_size=5), st.lists(st.integers(0, 9), min_size=1, max_size=5))
def test_independent_expert_and_class_give_no_information(expert_sizes: list[int], class_sizes: list[int]) -> None:
    """Counts that factorise, ``n_ec = a_e b_c`` (the expert says nothing about the class), give I(E;Y) = 0."""
    counts = torch.outer(torch.tensor(expert_sizes), torch.tensor(class_sizes))
    assert abs(mutual_information_bits(counts).item()) < 1e-6


@st.composite
def batches(draw: st.DrawFn) -> tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(E, C, gate_probs [B, E], labels [B], predictions [B])``: gates from extreme logits (exact zeros and ties)."""
    experts, classes = draw(SIZES)
    batch = draw(st.integers(2, 12))
    gate = torch.softmax(draw(logits((batch, experts))), -1)
    labels = torch.tensor(draw(st.lists(st.integers(0, classes - 1), min_size=batch, max_size=batch)))
    predictions = torch.tensor(draw(st.lists(st.integers(0, classes - 1), min_size=batch, max_size=batch)))
    return experts, classes, gate, labels, predictions


METRICS = {  # name: (constructor from (E, C), inputs from (gate, labels, predictions))
    "MutualInformation": (lambda e, c: MutualInformation(e, c), lambda g, y, p: (g, p)),
    "SampleEntropy": (lambda e, c: SampleEntropy(e), lambda g, y, p: (g,)),
    "ExpertUsage": (lambda e, c: ExpertUsage(e), lambda g, y, p: (g,)),
    "ImportanceCV": (lambda e, c: ImportanceCV(e), lambda g, y, p: (g,)),
    "PerTaskEntropy": (lambda e, c: PerTaskEntropy(e, c), lambda g, y, p: (g, y)),
    "ExpertAllocation": (lambda e, c: ExpertAllocation(e, c, bins=4), lambda g, y, p: (g, y, p)),
}


@FAST
@given(batches(), st.data(), st.sampled_from(sorted(METRICS)))
def test_states_merged_as_ddp_sums_them_equal_one_process_on_all_batches(
    inputs: tuple, data: st.DataObject, name: str
) -> None:
    """Two "ranks" update on the two halves of a batch; merging rank 1 into rank 0 with the states' own
    ``dist_reduce_fx`` (torchmetrics' ``merge_state``, the reduction a DDP sync applies) gives the states and the
    value of one process updated on the whole batch."""
    experts, classes, gate, labels, predictions = inputs
    split = data.draw(st.integers(1, len(gate) - 1), label="split")
    make, args = METRICS[name]
    rank0, rank1, whole = make(experts, classes), make(experts, classes), make(experts, classes)
    rank0.update(*args(gate[:split], labels[:split], predictions[:split]))
    rank1.update(*args(gate[split:], labels[split:], predictions[split:]))
    whole.update(*args(gate, labels, predictions))
    rank0.merge_state(rank1)
    for state in whole._defaults:
        torch.testing.assert_close(getattr(rank0, state), getattr(whole, state), msg=f"{name}.{state}")
    merged, expected = rank0.compute(), whole.compute()
    for key in expected if isinstance(expected, dict) else [None]:
        got, want = (merged[key], expected[key]) if key is not None else (merged, expected)
        torch.testing.assert_close(got, want, equal_nan=True, msg=f"{name} {key}")
