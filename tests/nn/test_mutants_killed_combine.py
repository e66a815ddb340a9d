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

from gmnn.nn.functional.combine import class_log_probs, dense_mixture, softmax_of_mixture, sparse_mixture


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
