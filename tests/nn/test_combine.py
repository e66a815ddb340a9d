import math

import pytest
import torch

from gmnn.nn.functional.combine import dense_mixture, product_of_experts, sparse_mixture, top_k_mixture
from gmnn.nn.functional.routing import softmax_routing, top_k_routing


def _random(batch: int = 5, experts: int = 3, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    log_gate = torch.log_softmax(torch.randn(batch, experts), -1)
    expert_log_probs = torch.log_softmax(torch.randn(batch, experts, classes), -1)
    return log_gate, expert_log_probs


def test_dense_mixture_shape_normalisation_and_hand_value() -> None:
    log_gate, elp = _random()
    out = dense_mixture(log_gate, elp)
    assert out.shape == (5, 4)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(5))
    # two experts, gate (0.25, 0.75), p1 = (0.9, 0.1), p2 = (0.2, 0.8)
    g = torch.tensor([[0.25, 0.75]]).log()
    p = torch.tensor([[[0.9, 0.1], [0.2, 0.8]]]).log()
    torch.testing.assert_close(dense_mixture(g, p).exp(), torch.tensor([[0.375, 0.625]]))


def test_dense_mixture_with_zero_gate_is_finite_with_finite_gradients() -> None:
    logits = torch.tensor([[1e4, -1e4]], requires_grad=True)
    elp = torch.log_softmax(torch.randn(1, 2, 3, requires_grad=True), -1)
    out = dense_mixture(softmax_routing(logits), elp)
    assert torch.isfinite(out).all()
    out[0, 1].backward()
    assert torch.isfinite(logits.grad).all()


def test_dense_mixture_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="expert_log_probs"):
        dense_mixture(torch.zeros(2, 3), torch.zeros(2, 4, 5))


def test_product_of_identical_experts_with_equal_gates_is_that_expert() -> None:
    p = torch.log_softmax(torch.randn(4, 1, 6), -1)
    elp = p.expand(4, 2, 6)
    torch.testing.assert_close(product_of_experts(torch.full((4, 2), 0.5), elp), p[:, 0])


def test_product_of_experts_hand_value_and_normalisation() -> None:
    p = torch.tensor([[[0.9, 0.1], [0.5, 0.5]]]).log()
    out = product_of_experts(torch.ones(1, 2), p)
    expected = torch.tensor([[0.45, 0.05]]) / 0.5
    torch.testing.assert_close(out.exp(), expected)
    _, elp = _random()
    torch.testing.assert_close(product_of_experts(torch.rand(5, 3), elp).exp().sum(-1), torch.ones(5))


def test_sparse_mixture_residual_hand_value() -> None:
    # one selected expert with gate 0.6, p = (0.9, 0.1); residual 0.4 on uniform over 2 classes
    out = sparse_mixture(torch.tensor([[0.6]]).log(), torch.tensor([[[0.9, 0.1]]]).log(), torch.tensor([0.4]).log())
    torch.testing.assert_close(out.exp(), torch.tensor([[0.6 * 0.9 + 0.2, 0.6 * 0.1 + 0.2]]))


@pytest.mark.parametrize("residual", [False, True])
def test_top_k_mixture_with_k_equal_e_is_the_dense_mixture(residual: bool) -> None:
    log_gate, elp = _random()
    indices = log_gate.topk(3, -1).indices
    selected = elp.gather(1, indices.unsqueeze(-1).expand(-1, -1, 4))
    torch.testing.assert_close(top_k_mixture(log_gate, indices, selected, residual), dense_mixture(log_gate, elp))


def test_top_k_mixture_renormalised_and_normalised() -> None:
    log_gate, elp = _random()
    indices = log_gate.topk(2, -1).indices
    selected = elp.gather(1, indices.unsqueeze(-1).expand(-1, -1, 4))
    out = top_k_mixture(log_gate, indices, selected, residual=False)
    masked = log_gate.scatter(-1, log_gate.topk(1, -1, largest=False).indices, -math.inf)
    torch.testing.assert_close(out, dense_mixture(torch.log_softmax(masked, -1), elp))
    for residual in (False, True):
        torch.testing.assert_close(top_k_mixture(log_gate, indices, selected, residual).exp().sum(-1), torch.ones(5))


def test_top_k_routing_renormalises_and_validates() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    log_w, idx = top_k_routing(logits, 2)
    assert idx.tolist() == [[1, 2]]
    torch.testing.assert_close(log_w.exp(), torch.softmax(torch.tensor([[2.0, 1.0]]), -1))
    for bad in (0, 4):
        with pytest.raises(ValueError, match="k must be"):
            top_k_routing(logits, bad)
    with pytest.raises(ValueError, match="temperature"):
        softmax_routing(logits, 0.0)


def test_temperature_flattens_the_gate() -> None:
    logits = torch.tensor([[0.0, 3.0]])
    hot = softmax_routing(logits, 10.0).exp()
    cold = softmax_routing(logits, 0.1).exp()
    assert hot[0, 1] < softmax_routing(logits).exp()[0, 1] < cold[0, 1]


@pytest.mark.parametrize("shape", [(7, 3, 10), (5, 2), (4, 3, 33)])
def test_class_log_probs_equals_log_softmax_in_values_and_gradients(shape: tuple[int, ...]) -> None:
    from gmnn.nn.functional.combine import class_log_probs

    torch.manual_seed(0)
    logits = (torch.randn(*shape) * 5).requires_grad_()
    out, expected = class_log_probs(logits), torch.log_softmax(logits, dim=-1)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    upstream = torch.randn(shape)
    (got,) = torch.autograd.grad((out * upstream).sum(), logits)
    (want,) = torch.autograd.grad((expected * upstream).sum(), logits)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
