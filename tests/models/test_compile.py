"""Models trace into one graph under torch.compile (no graph breaks, no host syncs) on the toy problem."""

from __future__ import annotations

import pytest
import torch

from gmnn.data.toy import checkerboard
from gmnn.models import AttentionGateMoE, DenseMoE, ProductOfExperts, TopKMoE

COMMON = dict(input_shape=[2], num_classes=2, num_experts=4, expert_hidden=[16], gate_hidden=[16])
MODELS = {
    "dense": lambda: DenseMoE(**COMMON),
    "topk_capacity": lambda: TopKMoE(k=2, capacity_factor=1.5, **COMMON),
    "product": lambda: ProductOfExperts(**COMMON),
    "attention": lambda: AttentionGateMoE(**COMMON),
}


@pytest.mark.parametrize("name", MODELS)
def test_compiled_training_step_matches_eager(name: str) -> None:
    torch._dynamo.reset()
    x, y = checkerboard(64, 0.0, torch.Generator().manual_seed(0))
    model = MODELS[name]().train()
    # aot_eager keeps the test fast; fullgraph=True fails on any graph break (e.g. a host sync)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out, eager = compiled(x), model(x)
    torch.testing.assert_close(out.log_probs, eager.log_probs)
    loss = torch.nn.functional.nll_loss(out.log_probs, y)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    eager_grads = torch.autograd.grad(torch.nn.functional.nll_loss(eager.log_probs, y), list(model.parameters()), allow_unused=True)
    for a, b in zip(grads, eager_grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)
