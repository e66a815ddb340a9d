"""ExpertParallel's checks that need no second process (the 2-process runs: tests/test_expert_parallel_cli.py)."""

from __future__ import annotations

import pytest

from gmnn.callbacks.expert_parallel import ExpertParallel
from gmnn.models import MoETransformerLM

SMALL = dict(input_shape=(8,), num_classes=16, d_model=16, num_layers=2, num_heads=2, expert_hidden=16, num_experts=4)


def test_expert_choice_router_is_refused_naming_the_layer_and_the_allowed_routers() -> None:
    model = MoETransformerLM(**SMALL, router="expert_choice")
    with pytest.raises(ValueError, match=r"^blocks\.0\.ffn\.router: expert parallelism supports token-choice routers "
                                         r"\(SoftmaxTopKRouter, NoisyTopKRouter, SigmoidRouter\), got ExpertChoiceRouter"):
        ExpertParallel.shardable_layers(model)


@pytest.mark.parametrize("router", ["softmax", "sigmoid"])
def test_token_choice_layers_are_all_found(router: str) -> None:
    model = MoETransformerLM(**SMALL, router=router)
    assert [name for name, _ in ExpertParallel.shardable_layers(model)] == ["blocks.0.ffn", "blocks.1.ffn"]


def test_expert_parallel_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="expert_parallel_size"):
        ExpertParallel(expert_parallel_size=0)


def test_a_moe_layer_subclass_is_refused_by_name_not_left_unsharded() -> None:
    from gmnn.nn import MoELayer

    class Scaled(MoELayer):
        def forward(self, x, mask=None):  # a custom forward the sharded layer would not run
            return super().forward(2 * x, mask)

    model = MoETransformerLM(**SMALL)
    model.blocks[1].ffn = Scaled(16, 16, 4)
    with pytest.raises(ValueError, match=r"^blocks\.1\.ffn: ExpertParallel shards MoELayer itself, not the subclass Scaled"):
        ExpertParallel.shardable_layers(model)
