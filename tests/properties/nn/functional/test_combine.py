"""Properties of the mixtures (:mod:`gmnn.nn.functional.combine`): for any gate and expert outputs, extreme logits
and gate probabilities of exactly 0 included, the result is a distribution over classes (finite, ``exp`` sums to 1,
finite gradients) and equals the mixture computed by hand in probability space."""

from __future__ import annotations

import torch
from hypothesis import given, settings, strategies as st

from gmnn.nn.functional.combine import dense_mixture, product_of_experts, top_k_mixture
from gmnn.nn.functional.routing import top_k_routing
from tests.properties.strategies import DTYPES, logits, tolerance

SIZES = st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5))  # batch B, experts E, classes C
FAST = settings(max_examples=60, deadline=None)


@st.composite
def mixture_inputs(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    """Gate logits ``[B, E]`` (some ``-inf``: gate probability 0) and expert logits ``[B, E, C]`` (finite, extreme)."""
    batch, experts, classes = draw(SIZES)
    dtype = draw(DTYPES)
    gate = draw(logits((batch, experts), dtype, minus_inf=True)).requires_grad_()
    expert = draw(logits((batch, experts, classes), dtype)).requires_grad_()
    return gate, expert, dtype


def _assert_distribution(log_probs: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype,
                         *leaves: torch.Tensor, reference_atol: float = 0.0) -> None:
    """``log_probs [B, C]`` is finite, its ``exp`` sums to 1 per row and equals ``reference`` (probabilities,
    float64, up to ``reference_atol`` more); the gradient of any class's log-probability reaches ``leaves`` finite."""
    atol = tolerance(dtype)
    assert log_probs.dtype == dtype and not torch.isnan(log_probs).any() and (log_probs <= atol).all()
    probs = log_probs.double().exp()
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(probs), dtype=torch.float64), atol=atol, rtol=0)
    torch.testing.assert_close(probs, reference, atol=atol + reference_atol, rtol=0)
    likely = log_probs.argmax(-1, keepdim=True)  # a class of non-zero probability: its loss is finite
    loss = -log_probs.gather(-1, likely).sum()
    assert torch.isfinite(loss)
    for leaf, grad in zip(leaves, torch.autograd.grad(loss, leaves)):
        assert torch.isfinite(grad).all(), f"non-finite gradient for {tuple(leaf.shape)}"


@FAST
@given(mixture_inputs())
def test_dense_mixture_is_the_gate_weighted_average_of_the_experts(inputs) -> None:
    """``dense_mixture`` is ``sum_i g_i p_i`` and a distribution, also where the gate gives an expert probability 0."""
    gate_logits, expert_logits, dtype = inputs
    log_gate, expert_log_probs = torch.log_softmax(gate_logits, -1), torch.log_softmax(expert_logits, -1)
    reference = torch.einsum("be,bec->bc", log_gate.double().exp(), expert_log_probs.double().exp())
    _assert_distribution(dense_mixture(log_gate, expert_log_probs), reference.detach(), dtype, gate_logits, expert_logits)


@settings(max_examples=200, deadline=None)  # cheap, and the residual matters only for k < E with C > 1
@given(mixture_inputs(), st.data())
def test_top_k_mixture_is_a_distribution_renormalised_or_with_the_residual(inputs, data: st.DataObject) -> None:
    """``top_k_mixture`` over the k best experts: renormalised, ``sum_{i in S} g_i p_i / sum_S g``; with the
    residual, ``sum_S g_i p_i + (1 - sum_S g) / C``. Both are distributions with finite gradients."""
    gate_logits, expert_logits, dtype = inputs
    k = data.draw(st.integers(1, gate_logits.shape[1]), label="k")
    residual = data.draw(st.booleans(), label="residual")
    log_gate = torch.log_softmax(gate_logits, -1)
    _, indices = top_k_routing(gate_logits, k)
    selected = torch.log_softmax(expert_logits, -1).gather(1, indices.unsqueeze(-1).expand(-1, -1, expert_logits.shape[-1]))
    g, p = log_gate.double().exp().gather(1, indices).detach(), selected.double().exp().detach()
    mass = g.sum(-1, keepdim=True)
    reference = (torch.einsum("bk,bkc->bc", g, p) + (1 - mass) / p.shape[-1] if residual
                 else torch.einsum("bk,bkc->bc", g / mass, p))
    _assert_distribution(top_k_mixture(log_gate, indices, selected, residual), reference, dtype, gate_logits, expert_logits)


@FAST
@given(mixture_inputs(), st.booleans())
def test_product_of_experts_is_the_normalised_weighted_geometric_mean(inputs, plain: bool) -> None:
    """``product_of_experts`` is ``softmax(sum_i g_i log p_i)`` and a distribution, for softmax gates with exact
    zeros and for the plain product (all weights 1)."""
    gate_logits, expert_logits, dtype = inputs
    weights = torch.ones_like(gate_logits) if plain else torch.softmax(gate_logits, -1)
    expert_log_probs = torch.log_softmax(expert_logits, -1)
    scores = torch.einsum("be,bec->bc", weights.double(), expert_log_probs.double())
    reference = torch.softmax(scores, -1).detach()
    leaves = (expert_logits,) if plain else (gate_logits, expert_logits)
    rounding = 8 * torch.finfo(dtype).eps * scores.abs().max().item()  # scores of 1e6 carry absolute errors of 0.1
    _assert_distribution(product_of_experts(weights, expert_log_probs), reference, dtype, *leaves,
                         reference_atol=rounding)


@FAST
@given(mixture_inputs(), st.booleans())
def test_top_k_mixture_with_k_equal_e_is_the_dense_mixture(inputs, residual: bool) -> None:
    """With every expert selected (k = E), the top-k mixture, renormalised or with the residual, is the dense one."""
    gate_logits, expert_logits, dtype = inputs
    log_gate, expert_log_probs = torch.log_softmax(gate_logits, -1), torch.log_softmax(expert_logits, -1)
    _, indices = top_k_routing(gate_logits, gate_logits.shape[1])
    selected = expert_log_probs.gather(1, indices.unsqueeze(-1).expand_as(expert_log_probs))
    dense = dense_mixture(log_gate, expert_log_probs)
    sparse = top_k_mixture(log_gate, indices, selected, residual)
    atol = tolerance(dtype)
    torch.testing.assert_close(sparse.exp(), dense.exp(), atol=atol, rtol=0)
    finite = torch.isfinite(dense)
    torch.testing.assert_close(sparse[finite], dense[finite], atol=atol * 10, rtol=atol * 10)


def test_top_k_residual_with_every_unselected_expert_at_gate_probability_0_has_finite_gradients() -> None:
    """Found by the top-k property: with the residual, unselected experts all at gate probability 0 (log gate
    ``-inf``) made the residual mass a logsumexp of ``-inf`` only, whose gradient is NaN."""
    gate_logits = torch.tensor([[float("-inf"), 0.0, float("-inf")]], requires_grad=True)
    expert_log_probs = torch.log_softmax(torch.randn(1, 3, 2), -1)
    _, indices = top_k_routing(gate_logits, 1)
    selected = expert_log_probs.gather(1, indices.unsqueeze(-1).expand(-1, -1, 2))
    out = top_k_mixture(torch.log_softmax(gate_logits, -1), indices, selected, residual=True)
    torch.testing.assert_close(out, expert_log_probs[:, 1])
    out[0, 0].backward()
    assert torch.isfinite(gate_logits.grad).all()
