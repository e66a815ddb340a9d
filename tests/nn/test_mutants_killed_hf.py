"""Tests that kill the surviving mutmut mutants of the Hugging Face conversion (``gmnn/nn/moe/hf/``).

Each test's docstring names the mutants it kills (mutmut 3 names, e.g. ``convert.x_spec_of__mutmut_3`` is
``spec_of`` mutant 3); the equivalent survivors and the scores are in CONTRIBUTING.md, "Mutation testing".
"""


import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from gmnn.nn.moe.hf import from_hf, spec_of, to_hf
from tests.nn.hf_blocks import PerExpertMLP, make, transformers4_block


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
    (the weight not passed: MoELayer's defaults 1e-2 / 1e-3), 22 and ``_build`` 7 (further layer keywords
    dropped)."""
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
    """Killed: ``from_hf`` 34 (``dtype=None``: the router not cast back to the HF router's dtype, a float32
    DeepSeek-V3 router of float64 experts becomes float64)."""
    block = make("DeepSeek-V3").double()
    block.gate.float()  # DeepSeek-V3 keeps its router (weight and score-correction bias) in float32
    layer = from_hf(block)
    assert layer.experts.w1.dtype == torch.float64
    assert layer.router.weight.dtype == layer.router.selection_bias.dtype == torch.float32
    assert torch.equal(layer.router.weight, block.gate.weight)
    assert torch.equal(layer.router.selection_bias, block.gate.e_score_correction_bias)


def test_to_hf_names_the_setting_that_differs() -> None:
    """Killed: ``_settings`` 8-11 (the router ``kind`` not compared, or its key re-spelt in the message), 12-15, 20-22
    (``selection_bias``), 23-27, 32-35, 40-42 (the ``bias`` line: a biased router, biased experts, biased shared
    experts); ``_shared_settings`` 2, 6-8 (the ``gate`` key); ``_mismatch`` 2-5, 17, 18, 32, 39-41 (the capacity
    check and its message, the part named, the ``present vs absent`` message); ``to_hf`` 1, 4, 5 (the ``TypeError``
    check and its message)."""
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


# --- links.py ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["Mixtral", "Qwen2-MoE", "ERNIE-4.5-MoE", "DeepSeek-V3"])
def test_every_link_reads_the_layer_tensor_in_its_shape(family: str) -> None:
    """Killed: ``shared_mlp`` 79, 82 and 102, 105 (``shape`` ``None`` or dropped in the ``same`` links of the shared
    ``w2`` / ``b2``: ``read`` gives ``[D, I]`` / ``[D]`` for the layer's ``[1, D, I]`` / ``[1, D]``, which ``copy_``
    broadcasts, and the gradient map of the parity tests compares by broadcasting too)."""
    block = make(family)
    layer = from_hf(block)
    state = layer.state_dict()
    for link in spec_of(block).links:
        read = link.read(lambda t: t)
        assert read.shape == state[link.name].shape, link.name
        assert torch.equal(read, state[link.name]), link.name


def test_activations_are_read_by_name_and_approximation() -> None:
    """Killed: ``activation`` 3 (``and`` for ``or``), 5, 11, 12 (``approximate`` not read: GELU-tanh taken for GELU),
    18, 19 (the message ``None``, ``sorted(None)``) and ``routed_experts`` 48 (the owner it names ``None``)."""
    from gmnn.nn.moe.hf.links import activation

    known = "['GELU', 'GELUActivation', 'GELUTanh', 'ReLU', 'SiLU', 'SiLUActivation']"
    assert (activation("B", nn.GELU()), activation("B", nn.SiLU()), activation("B", nn.ReLU())) == ("gelu", "silu", "relu")
    assert _refusal(lambda: activation("B", nn.GELU(approximate="tanh"))) == (
        f"Refused: B: expert activation GELU has no exact gmnn equivalent (gmnn has {known})")
    assert _refusal(lambda: activation("B", nn.Tanh())) == (
        f"Refused: B: expert activation Tanh has no exact gmnn equivalent (gmnn has {known})")
    block = make("Mixtral")
    block.experts.act_fn = nn.GELU(approximate="tanh")
    assert _refusal(lambda: spec_of(block)) == (
        f"Refused: MixtralSparseMoeBlock: expert activation GELU has no exact gmnn equivalent (gmnn has {known})")
    block.experts.act_fn = nn.GELU()
    assert from_hf(block).experts.activation == "gelu"  # and the random-token check passes


def test_fused_experts_transposed_biased_or_of_another_shape_are_refused_by_name() -> None:
    """Killed: ``routed_experts`` 7, 8, 14, 15, 17, 23, 24 (``is_transposed`` or ``has_bias`` not read: such experts
    taken as ``[E, 2I, D]``), 26 (the message ``None``), 33, 34 (the ``down_proj`` message ``None`` / the shape of
    ``None``)."""
    for flag in ("is_transposed", "has_bias"):
        block = make("Mixtral")
        setattr(block.experts, flag, True)
        assert _refusal(lambda block=block: spec_of(block)) == (
            "Refused: MixtralSparseMoeBlock: transposed or biased fused experts are not read by gmnn")
    block = make("Mixtral")
    block.experts.down_proj = nn.Parameter(torch.zeros(6, 16, 25))
    assert _refusal(lambda: spec_of(block)) == (
        "Refused: MixtralSparseMoeBlock: down_proj of shape (6, 16, 25) is not [E, D, I]")
    layer = from_hf(make("Mixtral"))
    assert (layer.experts.d_model, layer.experts.hidden, layer.experts.num_experts) == (16, 24, 6)
    assert type(layer.experts.hidden) is int


class _FusedExperts(nn.Module):
    """Fused experts of a transformers 5 release without ``is_transposed`` / ``has_bias`` (gate_up ``[E, 2I, D]``)."""

    def __init__(self, experts: nn.Module) -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(experts.gate_up_proj.detach().clone())
        self.down_proj = nn.Parameter(experts.down_proj.detach().clone())
        self.act_fn = experts.act_fn


@pytest.mark.parametrize("names", [("w1", "w3", "w2"), ("gate_proj", "up_proj", "down_proj"), "fused"])
def test_older_expert_layouts_convert_and_write_back_exactly(names) -> None:
    """Killed: ``routed_experts`` 13, 16, 22, 25 (``is_transposed`` / ``has_bias`` read without a default or with
    ``True``: fused experts without them refused), 67-69, 72-100, 103-107, 109-115, 117-122, 124-163 (the per-expert
    list: ``experts[1]`` fails for one expert, a list of one expert refused, the names of either layout re-spelt,
    ``gate_proj`` / ``up_proj`` / ``down_proj`` experts were not tested; of 24-163 only 123 was judged without the new
    tests, so the existing per-expert test of test_hf_parity.py may fail on some of these too) and ``stacked`` 12
    (``parts[1]``: one expert's ``down`` list); the weights are compared exactly with the conversion of the fused
    block they were cut from, and written back by ``to_hf``."""
    for num_experts in (6, 1):
        fused = make("Mixtral", num_local_experts=num_experts, num_experts_per_tok=min(2, num_experts))
        if names == "fused":
            experts = _FusedExperts(fused.experts)
        else:
            experts = nn.ModuleList(PerExpertMLP(fused.experts, e, names) for e in range(num_experts))
        old = transformers4_block(fused, experts)
        old.top_k = min(2, num_experts)
        layer, reference = from_hf(old, verify=False), from_hf(fused)  # the stand-in has no forward
        assert layer.state_dict().keys() == reference.state_dict().keys()
        for name, value in reference.state_dict().items():
            assert torch.equal(layer.state_dict()[name], value), name
        with torch.no_grad():  # write changed weights back into the older layout
            for tensor in reference.parameters():
                tensor.add_(1.0)
        to_hf(reference, old)
        back = from_hf(old, verify=False)
        for name, value in reference.state_dict().items():
            assert torch.equal(back.state_dict()[name], value), name


def test_per_expert_lists_that_are_not_gated_mlps_are_refused_by_name() -> None:
    """Killed: ``routed_experts`` 66, 70, 71 (the list check and its message) and 101, 102 (the gated-MLP check's
    message ``None`` / naming ``NoneType``)."""
    fused = make("Mixtral")
    assert _refusal(lambda: spec_of(transformers4_block(fused, nn.Linear(2, 2)))) == (
        "Refused: MixtralSparseMoeBlock: experts of type Linear are neither fused nor a per-expert list")
    assert _refusal(lambda: spec_of(transformers4_block(fused, nn.ModuleList()))) == (
        "Refused: MixtralSparseMoeBlock: experts of type ModuleList are neither fused nor a per-expert list")
    experts = nn.ModuleList(PerExpertMLP(fused.experts, e, ("w1", "w3", "w2")) for e in range(6))
    for expert in experts:
        del expert.w3
    assert _refusal(lambda: spec_of(transformers4_block(fused, experts))) == (
        "Refused: MixtralSparseMoeBlock: per-expert modules of type PerExpertMLP are not gated MLPs")


def test_shared_experts_and_gates_gmnn_cannot_read_are_refused_by_name() -> None:
    """Killed: ``shared_mlp`` 15, 16 (the not-a-gated-MLP message ``None`` / naming ``NoneType``), 37 (``and``: a
    biased shared-expert gate of the right shape accepted) and 41 (its message ``None``)."""
    block = make("Qwen2-MoE")
    block.shared_expert = nn.Linear(16, 16)
    assert _refusal(lambda: spec_of(block)) == (
        "Refused: Qwen2MoeSparseMoeBlock: shared expert of type Linear is not a gated MLP")
    for gate in (nn.Linear(16, 1, bias=True), nn.Linear(16, 2, bias=False)):
        block = make("Qwen2-MoE")
        block.shared_expert_gate = gate
        assert _refusal(lambda block=block: spec_of(block)) == (
            "Refused: Qwen2MoeSparseMoeBlock: shared expert gate must be a bias-free Linear(d_model, 1)")


# --- families.py ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["Mixtral", "MiniMax", "GraniteMoE", "Qwen3-MoE-norm"])
def test_renormalising_families_convert_exactly_with_one_expert_per_token(family: str) -> None:
    """Killed: ``mixtral`` 15, 18 (``normalize=None`` / ``normalize`` dropped: gmnn's default renormalises only for
    k > 1, while these blocks divide the one top weight by itself, weight 1); the same mutants of ``granite`` were not
    reached by the run."""
    from tests.nn.test_hf_families import parity

    key = "num_experts_per_tok"
    output_error, grad_error = parity(make(family, **{key: 1}))
    assert output_error < 1e-5 and grad_error < 1e-5


def test_jitter_and_missing_routing_settings_are_refused_by_name() -> None:
    """Killed: ``_no_jitter`` 14, 15 (the fixed text of the message re-spelt) and ``_setting`` 9, 10 (the message
    ``None`` / naming ``NoneType``: a transformers 4 block without ``top_k``)."""
    jittery = make("Mixtral", router_jitter_noise=0.1)
    assert _refusal(lambda: spec_of(jittery)) == (
        "Refused: MixtralSparseMoeBlock: jitter_noise=0.1 multiplies the input by random noise while training (gmnn "
        "has no input jitter); set it to 0 to convert")
    fused = make("Mixtral")
    old = transformers4_block(fused, _FusedExperts(fused.experts))
    del old.top_k
    assert _refusal(lambda: spec_of(old)) == "Refused: MixtralSparseMoeBlock: no top_k on the block or its router"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_from_hf_puts_the_layer_on_the_device_of_a_cuda_block() -> None:
    """Killed (on a CUDA machine only; skipped on the CPU-only test machine, not yet run on a GPU): ``from_hf`` 30, 32
    (``device=None`` / no device: the layer stays on the CPU while the block's weights are on the GPU)."""
    block = make("Mixtral").cuda()
    layer = from_hf(block)
    assert layer.experts.w1.device == layer.router.weight.device == block.gate.weight.device
    assert torch.equal(layer.experts.w1, block.experts.gate_up_proj)


def test_the_shared_expert_keeps_its_own_activation() -> None:
    """Killed: ``shared_mlp`` 53 (the activation not passed: ``SharedExperts``' default SiLU for a GELU shared expert,
    refused by the random-token check) and 58 (the owner of the activation refusal ``None``)."""
    from tests.nn.test_hf_families import parity

    known = "['GELU', 'GELUActivation', 'GELUTanh', 'ReLU', 'SiLU', 'SiLUActivation']"
    block = make("Qwen2-MoE")
    block.shared_expert.act_fn = nn.GELU()
    assert from_hf(block).shared.mlp.activation == "gelu"
    output_error, grad_error = parity(block)
    assert output_error < 1e-5 and grad_error < 1e-5
    block.shared_expert.act_fn = nn.GELU(approximate="tanh")
    assert _refusal(lambda: spec_of(block)) == (
        f"Refused: Qwen2MoeSparseMoeBlock: expert activation GELU has no exact gmnn equivalent (gmnn has {known})")


def test_a_per_expert_list_with_an_activation_gmnn_lacks_is_refused_by_name() -> None:
    """Killed: ``routed_experts`` 123 (the owner of the per-expert list's activation refusal ``None``)."""
    fused = make("Mixtral")
    experts = nn.ModuleList(PerExpertMLP(fused.experts, e, ("w1", "w3", "w2")) for e in range(6))
    for expert in experts:
        expert.act_fn = nn.GELU(approximate="tanh")
    known = "['GELU', 'GELUActivation', 'GELUTanh', 'ReLU', 'SiLU', 'SiLUActivation']"
    assert _refusal(lambda: spec_of(transformers4_block(fused, experts))) == (
        f"Refused: MixtralSparseMoeBlock: expert activation GELU has no exact gmnn equivalent (gmnn has {known})")
