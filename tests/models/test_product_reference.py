"""gmnn's ProductOfExperts is the reference's "pre-softmax expectation" model (moe_pre_softmax_expectation_model.py).

The reference mixes its experts' pre-softmax outputs (``expert_layers_presoftmax``, examples/FashionMNIST.py) with the
gate's probabilities and applies one softmax: ``softmax(sum_i g_i z_i / T)``. gmnn's product of experts is
``log_softmax(sum_i g_i log_softmax(z_i))``; the two differ by ``sum_i g_i logsumexp(z_i)``, a per-sample constant
that the softmax removes, so the outputs are equal for the same weights.
"""

from __future__ import annotations

import torch

from gmnn.models import DenseMoE, ProductOfExperts


def reference_pre_softmax(gate_probs: torch.Tensor, expert_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The reference's forward, in a few lines: softmax over classes of the gate-weighted sum of expert logits."""
    return torch.softmax((gate_probs.unsqueeze(-1) * expert_logits).sum(1) / temperature, dim=-1)


def test_product_of_experts_equals_the_reference_pre_softmax_expectation() -> None:
    torch.manual_seed(0)
    model = ProductOfExperts(input_shape=[3], num_classes=4, num_experts=3, gate_hidden=[8], expert_hidden=[8]).eval()
    x = torch.randn(16, 3)
    with torch.no_grad():
        out = model(x)
        expert_logits, _ = model.experts(x)  # the same weights' pre-softmax outputs [B, E, C]
        ours = out.log_probs.exp()
        theirs = reference_pre_softmax(out.gate_probs, expert_logits)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    # not the reference's (post-softmax) expectation model, softmax(sum_i g_i p_i), nor gmnn's mixture sum_i g_i p_i
    assert (theirs - torch.softmax((out.gate_probs.unsqueeze(-1) * expert_logits.softmax(-1)).sum(1), -1)).abs().max() > 1e-3
    dense = DenseMoE(input_shape=[3], num_classes=4, num_experts=3, gate_hidden=[8], expert_hidden=[8]).eval()
    dense.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (dense(x).log_probs.exp() - theirs).abs().max() > 1e-3
