"""Tests written for mutmut's survivors in ``gmnn/nn/functional/combine.py`` and the decomposition metrics
(CONTRIBUTING.md, "Mutation testing"): each fails on the mutants its docstring names.

Values are worked out by hand in the comments; the mutant names are those of ``mutmut results``
(``gmnn.nn.functional.combine.x_<function>__mutmut_<n>``).
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from gmnn.metrics import (
    ExpertAllocation,
    ExpertUsage,
    ImportanceCV,
    MutualInformation,
    PerTaskEntropy,
    SampleEntropy,
)
from gmnn.nn.functional.combine import (
    class_log_probs,
    dense_mixture,
    softmax_of_mixture,
    sparse_mixture,
)


def test_softmax_of_mixture_by_hand_over_the_last_dimension_of_any_rank() -> None:
    """Killed: ``softmax_of_mixture`` mutants 5 (``dim=+1``) and 6 (``dim=-2``).

    The mixture (0.61, 0.39) softmaxed: class 0 gets e^0.61 / (e^0.61 + e^0.39) = 1 / (1 + e^-0.22). The docstring
    takes ``[..., C]``: on a ``[1, 2, 2]`` input the softmax is still over the last dimension, row by row.
    """
    a = 1 / (1 + math.exp(-0.22))  # (0.61, 0.39)
    b = 1 / (1 + math.exp(-0.8))  # (0.9, 0.1)
    flat = softmax_of_mixture(torch.tensor([[0.61, 0.39], [0.9, 0.1]], dtype=torch.float64).log())
    torch.testing.assert_close(flat.exp(), torch.tensor([[a, 1 - a], [b, 1 - b]], dtype=torch.float64))
    # [B, T, C] = [1, 2, 2]: dim +1 is T here, not C
    nested = softmax_of_mixture(torch.tensor([[[0.61, 0.39], [0.9, 0.1]]], dtype=torch.float64).log())
    torch.testing.assert_close(nested.exp(), torch.tensor([[[a, 1 - a], [b, 1 - b]]], dtype=torch.float64))


def test_dense_mixture_names_the_expert_input_and_checks_its_batch_against_the_gate() -> None:
    """Killed: ``dense_mixture`` mutants 7 (the name in the shape error ``"XXexpert_log_probsXX"``, which the plain
    ``match="expert_log_probs"`` also finds) and 9 (the batch checked against the gate's expert count,
    ``log_gate.shape[1]``: a gate ``[2, 3]`` then accepts experts ``[3, 3, C]``)."""
    message = "expert_log_probs must have shape [2, 3, '*'], got [3, 3, 4]"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        dense_mixture(torch.zeros(2, 3), torch.zeros(3, 3, 4))


def test_sparse_mixture_spends_each_rows_own_residual_mass_on_the_uniform() -> None:
    """Killed: ``sparse_mixture`` mutant 16 (``unsqueeze(-2)``: the residual masses ``[B]`` laid along the classes,
    ``[1, B]``, which the only existing hand value, B = 1, cannot tell from ``[B, 1]``).

    Two rows, one selected expert each, C = 3 classes:
    row 0: weight 0.5 on (0.7, 0.2, 0.1), residual 0.5 -> 0.5 / 3 each: (0.35 + 1/6, 0.1 + 1/6, 0.05 + 1/6);
    row 1: weight 0.8 on (0.1, 0.3, 0.6), residual 0.2 -> 0.2 / 3 each: (0.08 + 1/15, 0.24 + 1/15, 0.48 + 1/15).
    (With B = 2 rows against C = 3 classes the mutant's ``[1, 2]`` does not even expand to ``[2, 3]``.)
    """
    weights = torch.tensor([[0.5], [0.8]], dtype=torch.float64).log()
    experts = torch.tensor([[[0.7, 0.2, 0.1]], [[0.1, 0.3, 0.6]]], dtype=torch.float64).log()
    residual = torch.tensor([0.5, 0.2], dtype=torch.float64).log()
    expected = torch.tensor([[0.35 + 1 / 6, 0.1 + 1 / 6, 0.05 + 1 / 6],
                             [0.08 + 1 / 15, 0.24 + 1 / 15, 0.48 + 1 / 15]], dtype=torch.float64)
    torch.testing.assert_close(sparse_mixture(weights, experts, residual).exp(), expected)
    # B = C = 2, where the mutant's [1, 2] does expand to [2, 2] but gives row 0 row 1's residual in class 1:
    # row 0: 0.5 * (0.8, 0.2) + 0.5 / 2 = (0.65, 0.35); row 1: 0.8 * (0.5, 0.5) + 0.2 / 2 = (0.5, 0.5)
    square = sparse_mixture(weights, torch.tensor([[[0.8, 0.2]], [[0.5, 0.5]]], dtype=torch.float64).log(), residual)
    torch.testing.assert_close(square.exp(), torch.tensor([[0.65, 0.35], [0.5, 0.5]], dtype=torch.float64))


@pytest.mark.parametrize(
    ("shape", "strides"),
    [
        # C <= 32 on the CPU: log-softmax over dim 0 of the contiguous [C, ...] copy, moved back: a strided view.
        # [2, 3, 4] -> [4, 2, 3] contiguous (strides 6, 3, 1) -> moved back to [2, 3, 4] with strides (3, 1, 6)
        ((2, 3, 4), (3, 1, 6)),
        ((2, 3, 32), (3, 1, 6)),  # C = 32 = SMALL_CLASS_DIM is still the transposed path
        ((2, 4), (1, 2)),  # [2, 4] -> [4, 2] (strides 2, 1) -> back: (1, 2)
        # C = 33 > 32: torch.log_softmax(dim=-1) itself, a contiguous result
        ((2, 3, 33), (99, 33, 1)),
        ((2, 33), (33, 1)),
        ((5,), (1,)),  # one dimension: the direct path
    ],
)
def test_class_log_probs_takes_the_transposed_path_exactly_on_the_cpu_for_at_most_32_classes(
    shape: tuple[int, ...], strides: tuple[int, ...]
) -> None:
    """Killed: ``class_log_probs`` mutants 1 (``or`` -> ``and`` before the class count: C = 33 went the transposed
    way), 3, 4, 5 (``device.type == "cpu"``, ``"XXcpuXX"``, ``"CPU"``: the CPU never took the transposed path),
    6, 7 (``dim() <= 2``, ``< 3``: 2-D logits went the direct way), 8, 9 (``shape[+1]``, ``shape[-2]``: the expert
    count, 3, compared with 32 instead of the class count) and 10 (``>= 32``: C = 32 went the direct way).

    The values of both paths are equal (``tests/nn/test_combine.py``); which one ran shows in the result's strides,
    the transposed path returning the strided view its docstring describes. The values are checked too: uniform
    logits give log(1 / C) everywhere.
    """
    out = class_log_probs(torch.zeros(shape, dtype=torch.float64))
    assert out.shape == shape
    assert out.stride() == strides
    torch.testing.assert_close(out, torch.full(shape, -math.log(shape[-1]), dtype=torch.float64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_class_log_probs_on_cuda_is_the_direct_log_softmax() -> None:
    """Killed on a CUDA machine only: ``class_log_probs`` mutant 2 (``device.type != "cpu" and dim() < 2``: 2-D and
    3-D CUDA logits with C <= 32 took the transposed path meant for the CPU). On the CPU it is the original."""
    out = class_log_probs(torch.zeros(2, 3, 4, dtype=torch.float64, device="cuda"))
    assert out.stride() == (12, 4, 1)  # contiguous: torch.log_softmax(dim=-1) itself
    torch.testing.assert_close(out.cpu(), torch.full((2, 3, 4), -math.log(4), dtype=torch.float64))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: MutualInformation(0, 2), "num_experts must be an integer >= 1, got 0"),
        (lambda: MutualInformation(2, 0), "num_classes must be an integer >= 1, got 0"),
        (lambda: ExpertUsage(0), "num_experts must be an integer >= 1, got 0"),
        (lambda: ImportanceCV(-1), "num_experts must be an integer >= 1, got -1"),
        (lambda: SampleEntropy(0), "num_experts must be an integer >= 1, got 0"),
        (lambda: PerTaskEntropy(0, 2), "num_experts must be an integer >= 1, got 0"),
        (lambda: PerTaskEntropy(2, 0), "num_classes must be an integer >= 1, got 0"),
        (lambda: ExpertAllocation(0, 2), "num_experts must be an integer >= 1, got 0"),
        (lambda: ExpertAllocation(2, 0), "num_classes must be an integer >= 1, got 0"),
        (lambda: ExpertAllocation(2, 2, bins=0), "bins must be an integer >= 1, got 0"),
    ],
    ids=["mi-experts", "mi-classes", "usage", "cv", "sample-entropy", "per-task-experts", "per-task-classes",
         "allocation-experts", "allocation-classes", "allocation-bins"],
)
def test_every_decomposition_metric_names_its_bad_argument_in_the_whole_message(make, message: str) -> None:
    """Killed: the argument names of the ``check_positive_int`` calls in the ``__init__``s, which the existing
    ``match="num_experts"`` (a search) also finds in ``"XXnum_expertsXX"`` or which no test gave a bad value:
    ``MutualInformation.__init__`` 5, 7, 11, 12; ``_GateSums.__init__`` (``ExpertUsage``, ``ImportanceCV``) 1, 5, 6;
    ``SampleEntropy.__init__`` 5; ``_ClassGateMass.__init__`` (``PerTaskEntropy``, ``ExpertAllocation``) 1, 5, 6,
    11, 12; ``ExpertAllocation.__init__``'s ``"bins"`` (``XXbinsXX``, ``BINS``, ``None``)."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make()


def test_importance_cv_keeps_float64_gate_sums() -> None:
    """Killed: ``_GateSums.__init__`` mutants with the ``gate_sum`` state float32 (``dtype=None`` or left out).

    A float64 gate (0.5 + 2**-30, 0.5 - 2**-30): importance (0.5 + 2**-30, 0.5 - 2**-30), mean 0.5, population
    std 2**-30, so CV = 2**-29 (exact in float32). In a float32 state both sums round to 0.5 (float32's spacing at
    0.5 is 2**-24) and the CV would be 0.
    """
    metric = ImportanceCV(2)
    d = 2.0**-30
    metric.update(torch.tensor([[0.5 + d, 0.5 - d]], dtype=torch.float64))
    assert metric.gate_sum.dtype == torch.float64
    assert metric.compute().item() == 2.0**-29


def test_decomposition_states_are_float64_sums_and_integer_counts_merged_by_summing() -> None:
    """Killed: the ``dtype`` mutants of every ``add_state`` in the ``__init__``s (``dtype=None`` or left out: float32
    states, whose counts stop being exact past 2**24 samples and whose sums round; the ``_ExactStates`` docstring
    keeps floating states float64) and the ``dist_reduce_fx`` ones (``None`` or left out: merged states stacked,
    not summed): ``MutualInformation.__init__`` 16, 19, 24, 27; ``_GateSums.__init__`` 10, 13, 17, 19, 24, 27, 31,
    33; ``SampleEntropy.__init__``, ``_ClassGateMass.__init__`` and ``ExpertAllocation.__init__`` likewise (their
    numbers in the notes of this run).

    Two halves of four samples, E = 2 experts, C = 2 classes, merged with ``merge_state`` (the reduction a DDP sync
    applies): gates (1, 0), (0.75, 0.25) with labels 0, 1 and predictions 0, 0; then (0.5, 0.5), (0, 1) with labels
    1, 1 and predictions 1, 1. The argmax expert of the four samples: 0, 0, 0 (the tie goes to the first), 1.
    """
    first_gate, first_labels, first_predictions = torch.tensor([[1.0, 0.0], [0.75, 0.25]]), torch.tensor([0, 1]), torch.tensor([0, 0])
    second_gate, second_labels, second_predictions = torch.tensor([[0.5, 0.5], [0.0, 1.0]]), torch.tensor([1, 1]), torch.tensor([1, 1])
    expected_dtypes = {
        MutualInformation: {"counts": torch.long},
        ExpertUsage: {"gate_sum": torch.float64, "total": torch.long},
        ImportanceCV: {"gate_sum": torch.float64, "total": torch.long},
        SampleEntropy: {"entropy_sum": torch.float64, "total": torch.long},
        PerTaskEntropy: {"mass": torch.float64, "class_counts": torch.long},
        ExpertAllocation: {"mass": torch.float64, "class_counts": torch.long, "routed": torch.long,
                           "correct": torch.long, "histogram": torch.long},
    }
    merged = {}
    for cls, dtypes in expected_dtypes.items():
        args = (2,) if cls in (ExpertUsage, ImportanceCV, SampleEntropy) else (2, 2)
        first, second = cls(*args), cls(*args)
        for metric, (gate, labels, predictions) in ((first, (first_gate, first_labels, first_predictions)),
                                                     (second, (second_gate, second_labels, second_predictions))):
            if cls is MutualInformation:
                metric.update(gate, predictions)
            elif cls is ExpertAllocation:
                metric.update(gate, labels, predictions)
            elif cls is PerTaskEntropy:
                metric.update(gate, labels)
            else:
                metric.update(gate)
        first.merge_state(second)
        assert set(first._defaults) == set(dtypes), cls.__name__
        for name, dtype in dtypes.items():
            assert getattr(first, name).dtype == dtype, f"{cls.__name__}.{name}"
        merged[cls] = first
    # (expert, prediction) counts: expert 0 predicted 0, 0, 1; expert 1 predicted 1
    assert merged[MutualInformation].counts.tolist() == [[2, 1], [0, 1]]
    for cls in (ExpertUsage, ImportanceCV):
        assert merged[cls].gate_sum.tolist() == [2.25, 1.75] and merged[cls].total.tolist() == 4
    # entropies (bits): 0, H(0.75, 0.25), 1, 0
    h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert merged[SampleEntropy].entropy_sum.item() == pytest.approx(h + 1.0, abs=1e-12)
    assert merged[SampleEntropy].total.tolist() == 4
    for cls in (PerTaskEntropy, ExpertAllocation):
        # class 0: the gate (1, 0); class 1: (0.75, 0.25) + (0.5, 0.5) + (0, 1)
        assert merged[cls].mass.tolist() == [[1.0, 1.25], [0.0, 1.75]]
        assert merged[cls].class_counts.tolist() == [1, 3]
    allocation = merged[ExpertAllocation]
    assert allocation.routed.tolist() == [3, 1]
    # right predictions: samples 1 (label 0, predicted 0) and 3 (1, 1) by expert 0, sample 4 (1, 1) by expert 1
    assert allocation.correct.tolist() == [2, 1]
    # default 20 bins of width 1/20; a probability of 1 goes in the last: expert 0 saw 1, 0.75, 0.5, 0 (bins 19,
    # 15, 10, 0), expert 1 saw 0, 0.25, 0.5, 1 (bins 0, 5, 10, 19)
    histogram = torch.zeros(2, 20, dtype=torch.long)
    for expert, bins in ((0, (19, 15, 10, 0)), (1, (0, 5, 10, 19))):
        for b in bins:
            histogram[expert, b] += 1
    assert allocation.histogram.tolist() == histogram.tolist()
    out = allocation.compute()
    for key in ("routed", "class_counts", "histogram"):
        assert out[key].dtype == torch.long, key
    for key in ("allocation", "expert_accuracy", "usage"):
        assert out[key].dtype == torch.float32, key


def test_allocation_has_20_histogram_bins_by_default() -> None:
    """Killed: ``ExpertAllocation.__init__``'s default ``bins=20`` changed (``21``).

    Bins of width 1/20: gate 0.5 falls in bin 10, 0.25 in bin 5, 0.75 in bin 15.
    """
    allocation = ExpertAllocation(2, 2)
    allocation.update(torch.tensor([[0.5, 0.5], [0.25, 0.75]]), torch.tensor([0, 1]), torch.tensor([0, 1]))
    histogram = allocation.compute()["histogram"]
    assert histogram.shape == (2, 20)
    expected = torch.zeros(2, 20, dtype=torch.long)
    expected[0, 10] += 1
    expected[0, 5] += 1
    expected[1, 10] += 1
    expected[1, 15] += 1
    assert histogram.tolist() == expected.tolist()


def test_metrics_cast_to_bfloat16_keep_float64_sums_integer_counts_and_exact_values() -> None:
    """Killed: ``_ExactStates._apply`` mutants 7, 8 (``and``/``or`` mixed up: the integer counts and every state
    cast to float64), 9 (``== torch.float64``: the bfloat16 states left bfloat16), 10 (the default set to ``None``:
    ``reset`` fails) and the ones that break the call (``fn``, the state name or the value replaced by ``None``),
    none of which a test of the selection cast.

    ``Module.to(torch.bfloat16)`` (what Lightning's ``bf16-true`` does to the whole module) casts torchmetrics'
    states; the metric puts the floating ones back to float64, keeps the counts long, and keeps doing so after
    ``reset``. Gate (0.75, 0.25) then (0.5, 0.5), labels 0 then 1: usage = H(0.625, 0.375) bits, sample entropy the
    mean of H(0.75, 0.25) and 1 bit; H(0.75, 0.25) = 2 - 0.75 log2 3 needs more than bfloat16's 8 bits.
    """
    gate = torch.tensor([[0.75, 0.25], [0.5, 0.5]])
    labels = torch.tensor([0, 1])
    h = 2 - 0.75 * math.log2(3)
    usage = -(0.625 * math.log2(0.625) + 0.375 * math.log2(0.375))
    for metric, update, value in (
        (SampleEntropy(2), lambda m: m.update(gate), (h + 1) / 2),
        (ExpertUsage(2), lambda m: m.update(gate), usage),
        (PerTaskEntropy(2, 2), lambda m: m.update(gate, labels), (h + 1) / 2),
    ):
        metric = metric.to(torch.bfloat16)
        for _ in range(2):  # before and after a reset
            for name, default in metric._defaults.items():
                expected = torch.float64 if name in ("entropy_sum", "gate_sum", "mass") else torch.long
                assert getattr(metric, name).dtype == expected and default.dtype == expected, name
            update(metric)
            assert metric.compute().item() == pytest.approx(value, rel=1e-7), type(metric).__name__
            metric.reset()


def test_a_gate_of_the_wrong_width_is_named_in_the_whole_message() -> None:
    """Killed: ``_check_gate`` mutant 7 (``"XXgate_probsXX"``, which ``match="gate_probs"``, a search, also finds)."""
    message = "gate_probs must have shape ['*', 3], got [2, 4]"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        SampleEntropy(3).update(torch.full((2, 4), 0.25))


def test_labels_of_the_wrong_length_are_named_in_the_whole_message() -> None:
    """Killed: ``_ClassGateMass._add_mass`` mutants 5, 11, 12 (the name ``"labels"`` in the shape error replaced by
    ``None``, ``"XXlabelsXX"``, ``"LABELS"``; no test gave ``PerTaskEntropy`` or ``ExpertAllocation`` bad labels)."""
    message = "labels must have shape [2], got [3]"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        PerTaskEntropy(2, 2).update(torch.full((2, 2), 0.5), torch.tensor([0, 1, 1]))
