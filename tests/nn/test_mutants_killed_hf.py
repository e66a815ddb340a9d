"""Tests that kill the surviving mutmut mutants of the Hugging Face conversion (``gmnn/nn/moe/hf/``).

Each test's docstring names the mutants it kills (mutmut 3 names, e.g. ``convert.x_spec_of__mutmut_3`` is
``spec_of`` mutant 3); the equivalent survivors and the scores are in CONTRIBUTING.md, "Mutation testing".
"""

import re

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from gmnn.nn.moe.hf import from_hf, spec_of, to_hf  # noqa: E402
from tests.nn.hf_blocks import make  # noqa: E402


def _refusal(call) -> str:
    """The message of the ``ValueError`` (or ``TypeError``) that ``call()`` raises."""
    with pytest.raises((ValueError, TypeError)) as caught:
        call()
    return f"{type(caught.value).__name__}: {caught.value}"


# --- convert.py -------------------------------------------------------------------------------------------------------


def test_spec_of_names_the_converted_classes_and_an_unexpected_layout() -> None:
    """Killed: ``spec_of`` 9 (the list of converted classes joined by ``"XX, XX"``) and 13 (the message of a known
    class name whose layout differs replaced by ``None``)."""

    class MyMoE(nn.Module):
        pass

    converted = ("MixtralSparseMoeBlock, MiniMaxSparseMoeBlock, Qwen2MoeSparseMoeBlock, Qwen3MoeSparseMoeBlock, "
                 "Qwen3NextSparseMoeBlock, OlmoeSparseMoeBlock, FlexOlmoSparseMoeBlock, JambaSparseMoeBlock, "
                 "GraniteMoeMoE, GraniteMoeSharedMoE, GraniteMoeHybridMoE, HunYuanMoEV1Moe, Ernie4_5_MoeSparseMoeBlock, "
                 "DeepseekV2Moe, DeepseekV3MoE, Glm4MoeMoE, Dots1MoE")
    assert _refusal(lambda: spec_of(MyMoE())) == (
        f"Refused: MyMoE is not a Hugging Face MoE block gmnn knows; converted: {converted}")
    empty = type("MixtralSparseMoeBlock", (nn.Module,), {})()  # a known name without the attributes of its family
    assert _refusal(lambda: spec_of(empty)) == (
        "Refused: MixtralSparseMoeBlock: unexpected layout ('MixtralSparseMoeBlock' object has no attribute 'gate')")


def test_from_hf_refuses_a_capacity_factor_by_name_and_passes_the_loss_weights_and_keywords() -> None:
    """Killed: ``from_hf`` 6, 8, 10, 11 (the ``capacity_factor`` keyword not read: 1.25 accepted), 13, 14 (its
    message ``None`` / naming ``NoneType``), 1, 2 (the default ``balance_weight`` / ``z_weight`` 1.0), 20, 21
    (the weight not passed: MoELayer's defaults 1e-2 / 1e-3) and 22 (further layer keywords dropped)."""
    block = make("Mixtral")
    assert _refusal(lambda: from_hf(block, capacity_factor=1.25)) == (
        "Refused: MixtralSparseMoeBlock: capacity_factor > 0 drops tokens, the Hugging Face block does not")
    layer = from_hf(block)
    assert (layer.balance_weight, layer.z_weight, layer.capacity_factor) == (0.0, 0.0, 0.0)
    layer = from_hf(block, balance_weight=0.25, z_weight=0.5, importance_weight=0.125, capacity_factor=0.0)
    assert (layer.balance_weight, layer.z_weight, layer.importance_weight) == (0.25, 0.5, 0.125)


def test_from_hf_keeps_a_float64_block_in_float64() -> None:
    """Killed: ``from_hf`` 31, 33 (the layer not moved to the experts' dtype: float32 copies of float64 weights)."""
    block = make("Mixtral").double()
    layer = from_hf(block)
    assert layer.experts.w1.dtype == layer.router.weight.dtype == torch.float64
    assert torch.equal(layer.experts.w1, block.experts.gate_up_proj)
    assert torch.equal(layer.experts.w2, block.experts.down_proj)
    assert torch.equal(layer.router.weight, block.gate.weight)


def test_from_hf_keeps_the_router_in_its_own_dtype() -> None:
    """Killed: ``from_hf`` 34, 35, 36 (the router not cast back to the HF router's dtype: a float32 DeepSeek-V3
    router of float64 experts becomes float64)."""
    block = make("DeepSeek-V3").double()
    block.gate.float()  # DeepSeek-V3 keeps its router (weight and score-correction bias) in float32
    layer = from_hf(block)
    assert layer.experts.w1.dtype == torch.float64
    assert layer.router.weight.dtype == layer.router.selection_bias.dtype == torch.float32
    assert torch.equal(layer.router.weight, block.gate.weight)
    assert torch.equal(layer.router.selection_bias, block.gate.e_score_correction_bias)


def test_to_hf_names_the_setting_that_differs() -> None:
    """Killed: ``_settings`` 8-11 (the router ``kind`` not compared, or its key re-spelt in the message), 12-15, 20-22
    (``selection_bias``), 23-25 and the mutants of the ``bias`` line (a biased router, biased experts, biased shared
    experts); ``_shared_settings`` (the ``gate`` key); ``_mismatch`` (the part named, the ``present vs absent``
    message, the capacity check and its message); ``to_hf``'s refusal messages (``None``, ``NoneType``)."""
    from gmnn.nn.moe.experts import MLPExperts
    from gmnn.nn.moe.routers import SigmoidRouter, SoftmaxTopKRouter

    def refused(layer, block) -> str:
        return _refusal(lambda: to_hf(layer, block))

    head = "Refused: {}: cannot write this layer back: {} differs from the block's family ({}: (layer, block))"
    layer = from_hf(make("Mixtral"))
    layer.router = SigmoidRouter(16, 6, 2, normalize=True)
    assert refused(layer, make("Mixtral")) == head.format(
        "MixtralSparseMoeBlock", "router", "{'noise_std': (None, 0.0), 'kind': ('SigmoidRouter', 'SoftmaxTopKRouter')}")
    layer.router = SoftmaxTopKRouter(16, 6, 2, normalize=True, bias=True)
    assert refused(layer, make("Mixtral")) == head.format("MixtralSparseMoeBlock", "router", "{'bias': (True, False)}")
    layer = from_hf(make("Mixtral"))
    layer.experts = MLPExperts(16, 24, 6, "silu", gated=True, bias=True)
    assert refused(layer, make("Mixtral")) == head.format("MixtralSparseMoeBlock", "experts", "{'bias': (True, False)}")
    layer = from_hf(make("DeepSeek-V3"))  # the same sigmoid router without the score-correction bias
    layer.router = SigmoidRouter(16, 8, 3, normalize=True, scale=2.5, num_groups=4, topk_groups=2, group_score="top2")
    assert refused(layer, make("DeepSeek-V3")) == head.format(
        "DeepseekV3MoE", "router", "{'selection_bias': (False, True)}")
    assert refused(from_hf(make("ERNIE-4.5-MoE")), make("ERNIE-4.5-MoE", use_bias=False)) == head.format(
        "Ernie4_5_MoeSparseMoeBlock", "shared", "{'bias': (True, False)}")
    layer = from_hf(make("Qwen2-MoE"))
    layer.shared.gate = None
    assert refused(layer, make("Qwen2-MoE")) == head.format("Qwen2MoeSparseMoeBlock", "shared", "{'gate': (False, True)}")
    assert refused(from_hf(make("Qwen2-MoE")), make("Qwen3-MoE")) == head.format(
        "Qwen3MoeSparseMoeBlock", "shared", "present vs absent")
    assert refused(from_hf(make("Qwen3-MoE")), make("Qwen2-MoE")) == head.format(
        "Qwen2MoeSparseMoeBlock", "shared",
        "{'d_model': (None, 16), 'hidden': (None, 24), 'num_experts': (None, 1), 'activation': (None, 'silu'), "
        "'gated': (None, True), 'kind': (None, 'MLPExperts'), 'selection_bias': (None, False), 'bias': (None, False), "
        "'gate': (None, True)}")
    layer = from_hf(make("Mixtral"))
    layer.capacity_factor = 0.5  # a layer trained with expert capacity (from_hf itself refuses to build one)
    assert refused(layer, make("Mixtral")) == (
        "Refused: MixtralSparseMoeBlock: cannot write this layer back: capacity_factor > 0 (the Hugging Face block is "
        "dropless)")
    assert refused(nn.Linear(2, 2), make("Mixtral")) == "TypeError: layer must be a gmnn MoELayer, got Linear"
