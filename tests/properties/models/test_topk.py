"""Property of :class:`~gmnn.models.TopKMoE`: with k = E (every expert routed) it is the dense mixture."""

from __future__ import annotations

import torch
from hypothesis import given, settings, strategies as st

from gmnn.models import DenseMoE, TopKMoE
from tests.properties.strategies import logits


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 4), st.integers(2, 4), st.sampled_from([0.5, 1.0, 3.0]), st.sampled_from(["residual", "renormalize"]),
       st.booleans(), st.integers(0, 2**16), st.data())
def test_top_k_with_every_expert_equals_the_dense_mixture(
    experts: int, classes: int, temperature: float, gate_gradient: str, training: bool, seed: int, data: st.DataObject
) -> None:
    """TopKMoE(k=E) and a DenseMoE with the same weights give the same log-probabilities and gate, in training
    (both ``gate_gradient`` modes) and at inference, for inputs from ordinary to extreme."""
    if gate_gradient == "renormalize" and experts == 1:
        gate_gradient = "residual"  # renormalize needs k >= 2
    torch.manual_seed(seed)
    common = dict(input_shape=(2,), num_classes=classes, num_experts=experts, expert_hidden=(4,), gate_hidden=(4,),
                  temperature=temperature)
    sparse = TopKMoE(k=experts, gate_gradient=gate_gradient, **common)
    dense = DenseMoE(**common)
    dense.load_state_dict(sparse.state_dict())
    sparse.train(training), dense.train(training)
    x = data.draw(logits((3, 2), torch.float32), label="x").clamp(-1e4, 1e4)
    with torch.no_grad():
        got, expected = sparse(x), dense(x)
    torch.testing.assert_close(got.gate_probs, expected.gate_probs)
    torch.testing.assert_close(got.log_probs.exp(), expected.log_probs.exp(), atol=1e-5, rtol=0)
    finite = torch.isfinite(expected.log_probs)
    torch.testing.assert_close(got.log_probs[finite], expected.log_probs[finite], atol=1e-4, rtol=1e-4)
