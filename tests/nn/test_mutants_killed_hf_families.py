"""Tests that kill the surviving mutmut mutants of ``gmnn/nn/moe/hf/families.py``'s ``_assemble``, ``qwen``,
``deepseek_v2``, ``deepseek_v3`` and ``granite``.

Each test's docstring names the mutants it kills (mutmut 3 names, e.g. ``families.x_qwen__mutmut_4`` is ``qwen``
mutant 4); the equivalent survivors and the scores are in CONTRIBUTING.md, "Mutation testing".
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from gmnn.nn.moe.hf import from_hf, spec_of  # noqa: E402
from tests.nn.hf_blocks import D, make  # noqa: E402


def _transformers4_qwen(fused: nn.Module, norm_topk_prob: bool) -> nn.Module:
    """transformers 4's ``Qwen3MoeSparseMoeBlock`` around ``fused``'s experts: a bias-free ``nn.Linear`` gate with
    ``fused``'s router weights, ``top_k`` and ``norm_topk_prob`` on the block (not on the gate); no forward."""
    old = type("Qwen3MoeSparseMoeBlock", (nn.Module,), {})()
    old.gate = nn.Linear(D, fused.gate.weight.shape[0], bias=False)
    old.gate.weight = nn.Parameter(fused.gate.weight.detach().clone())
    old.experts = fused.experts
    old.top_k, old.norm_topk_prob = int(fused.gate.top_k), norm_topk_prob
    return old


@pytest.mark.parametrize("norm", [False, True])
def test_qwen_reads_top_k_and_norm_topk_prob_from_the_block_of_transformers_4(norm: bool) -> None:
    """Kills qwen 4, 7 (``top_k`` not passed to ``_softmax``, which then reads ``gate.top_k``: transformers 4's
    ``nn.Linear`` gate has none, the block has it). The converted layer computes the transformers 5 block it was
    cut from (k = 3 of 8 experts, renormalised or not as ``norm_topk_prob`` on the block says)."""
    fused = make("Qwen3-MoE-norm" if norm else "Qwen3-MoE")
    layer = from_hf(_transformers4_qwen(fused, norm), verify=False)  # the stand-in has no forward
    assert (layer.router.k, layer.router.normalize) == (3, norm)
    x = torch.randn(3, 5, D, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (layer(x)[0] - fused(x)).abs().max().item() < 1e-5


@pytest.mark.parametrize(("family", "owner"), [("DeepSeek-V2", "DeepseekV2Moe"), ("DeepSeek-V2-greedy", "DeepseekV2Moe"),
                                               ("DeepSeek-V3", "DeepseekV3MoE"), ("GLM-4-MoE", "Glm4MoeMoE")])
def test_deepseek_shared_expert_refusals_name_the_block(family: str, owner: str) -> None:
    """Kills deepseek_v2 51, 55 and deepseek_v3 45, 49 (the owner passed to ``shared_mlp`` replaced by ``None`` / the
    name of ``None``'s type: the refusal of a shared expert with a bias on one projection named ``None`` or
    ``NoneType`` instead of the block)."""
    block = make(family)
    block.shared_experts.up_proj.bias = nn.Parameter(torch.zeros(block.shared_experts.up_proj.out_features))
    message = f"{owner}: shared expert with biases on some of its projections only"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        spec_of(block)
