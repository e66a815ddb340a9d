"""Tests written for mutmut's survivors in ``gmnn/nn/moe/routers.py`` (CONTRIBUTING.md, "Mutation testing"):
the parts the third run did not reach. Each test fails on the mutants its docstring names.

Values are worked out by hand in the comments; the mutant names are those of ``mutmut results``
(``gmnn.nn.moe.routers.xǁSoftMoERouterǁlogits__mutmut_3`` is written ``SoftMoERouter.logits`` 3).
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from gmnn.nn.moe.routers import (
    ExpertChoiceRouter,
    NoisyTopKRouter,
    Router,
    SigmoidRouter,
    SoftmaxTopKRouter,
    SoftMoERouter,
)


def _normalized_soft_router() -> SoftMoERouter:
    """A normalising Soft MoE router with 2 experts of 1 slot: ``phi = [[3, 0], [4, 1]]``, columns of norm 5 and 1,
    so ``normalize(phi, dim=0) = [[0.6, 0], [0.8, 1]]``; ``phi_scale = 2``."""
    router = SoftMoERouter(2, 2, slots=1, normalize=True)
    with torch.no_grad():
        router.phi.copy_(torch.tensor([[3.0, 0.0], [4.0, 1.0]]))
        router.phi_scale.fill_(2.0)
    return router


def test_normalized_soft_moe_logits_are_scaled_cosines_of_tokens_and_slot_embeddings() -> None:
    """Killed: ``SoftMoERouter.__init__`` 30, 31 (``phi_scale`` always ``None``: ``normalize=True`` ignored),
    ``SoftMoERouter.logits`` 3 (``normalize(x, dim=None)``: every token divided by the norm of all of them), 7
    (``dim=-2``: each feature divided by its norm over the tokens), 8 (``phi_scale / normalize(phi)``),
    10, 12, 13 (``phi`` normalised as a whole, ``dim=None``, or by rows, the default ``dim=1`` and ``dim=1``)."""
    router = _normalized_soft_router()
    # tokens (1, 0), (0, 2), (3, 4): unit vectors (1, 0), (0, 1), (0.6, 0.8)
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    # 2 * x_hat @ [[0.6, 0], [0.8, 1]]: (1.2, 0), (1.6, 2), (2 * (0.36 + 0.64), 2 * 0.8) = (2, 1.6)
    expected = torch.tensor([[1.2, 0.0], [1.6, 2.0], [2.0, 1.6]])
    torch.testing.assert_close(router.logits(x), expected)


def test_normalized_soft_moe_logits_normalize_each_token_of_a_batch_of_sequences() -> None:
    """Killed: ``SoftMoERouter.logits`` 5, 6 (``normalize(x)`` with the default ``dim=1``, ``dim=+1``): on the
    ``[..., d_model]`` tokens the docstring allows (``[B, N, d_model]`` here) dim 1 is the sequence, not the
    token width. The three tokens of the test above as one sequence ``[1, 3, 2]`` give the same logits."""
    router = _normalized_soft_router()
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]])
    expected = torch.tensor([[[1.2, 0.0], [1.6, 2.0], [2.0, 1.6]]])
    torch.testing.assert_close(router.logits(x), expected)


def test_soft_moe_takes_all_tokens_as_one_sequence_and_names_a_seq_len_that_does_not_divide_them() -> None:
    """Killed: ``SoftMoERouter.forward`` 4 (``seq_len`` left ``None`` without one: ``None < 1`` raises a
    TypeError), 7 (``seq_len < 1 and tokens % seq_len``: 3 does not divide 4 but is not below 1, so no ValueError
    and ``view`` fails), 11 (the message replaced by ``None``)."""
    router = SoftMoERouter(2, 1, slots=1)
    with torch.no_grad():
        router.phi.copy_(torch.tensor([[1.0], [0.0]]))
    x = torch.tensor([[0.0, 5.0], [0.0, 7.0], [1.0, 0.0], [3.0, 0.0]])  # logits 0, 0, 1, 3: one expert, one slot
    route = router(x)  # one sequence of 4 tokens
    # dispatch: softmax over the 4 tokens of (0, 0, 1, 3): (1, 1, e, e^3) / (2 + e + e^3)
    e = torch.tensor(1.0).exp()
    expected = torch.stack([1.0 / (2 + e + e**3), 1.0 / (2 + e + e**3), e / (2 + e + e**3), e**3 / (2 + e + e**3)])
    assert route.dispatch.shape == (1, 4, 1)
    torch.testing.assert_close(route.dispatch.flatten(), expected)
    with pytest.raises(ValueError, match=r"^seq_len must divide the 4 tokens, got 3$"):
        router(x, seq_len=3)
    with pytest.raises(ValueError, match=r"^seq_len must divide the 4 tokens, got 0$"):
        router(x, seq_len=0)


def test_soft_moe_records_per_expert_log_sum_exp_logits_combine_mass_and_its_mask() -> None:
    """Killed: ``SoftMoERouter.forward`` 70, 74 (the record's ``logits`` ``None`` or left out), 86, 87 (their
    ``logsumexp`` over dim ``+1`` / ``-2``, the experts, not the slots: ``(ln 2, ln 5)`` for token 0), 71, 75 (its
    ``mask`` ``None`` or left out)."""
    router = SoftMoERouter(1, 2, slots=2)  # 2 experts of 2 slots: slot logits x * phi
    with torch.no_grad():
        router.phi.copy_(torch.tensor([[1.0, 4.0, 1.0, 1.0]]).log())  # phi = (0, ln 4, 0, 0)
    x = torch.tensor([[1.0], [0.0]])  # token 0: slot logits (0, ln 4, 0, 0); token 1: all 0
    mask = torch.tensor([True, False])
    routing = router(x, mask, seq_len=2).routing
    # logsumexp per expert: token 0 (ln(1 + 4), ln 2) = (ln 5, ln 2); token 1 (ln 2, ln 2), padding or not
    expected_logits = torch.tensor([[5.0, 2.0], [2.0, 2.0]]).log()
    torch.testing.assert_close(routing.logits, expected_logits)
    # combine over the 4 slots of token 0: (1, 4, 1, 1) / 7, per expert (5 / 7, 2 / 7); token 1 is padding: 0
    torch.testing.assert_close(routing.probs, torch.tensor([[5 / 7, 2 / 7], [0.0, 0.0]]))
    assert routing.mask is mask and routing.selected is None


def _expert_choice_with_bias() -> tuple[ExpertChoiceRouter, torch.Tensor]:
    """3 tokens, 2 experts, ``c = ceil(1.0 * 3 / 2) = 2``, a bias ``(ln 3, 0)``; with ``x = I`` token t's logits are
    column t of the weight plus the bias: (ln 3, ln 9), (ln 3, 0), (ln 2, 0), probabilities (1/4, 3/4), (3/4, 1/4),
    (2/3, 1/3)."""
    router = ExpertChoiceRouter(3, 2, capacity_factor=1.0, bias=True)
    with torch.no_grad():
        router.weight.copy_(torch.tensor([[1.0, 1.0, 2 / 3], [9.0, 1.0, 1.0]]).log())
        router.bias.copy_(torch.tensor([3.0, 1.0]).log())
    return router, torch.eye(3)


def test_expert_choice_records_its_logits_with_the_bias_and_weights_hand_computed() -> None:
    """Killed: ``ExpertChoiceRouter.__init__`` 12, 16 (``bias`` passed as ``None`` / left out: no bias, token 0's
    probabilities would be (1/10, 9/10)), ``ExpertChoiceRouter.forward`` 95, 100 (the record's ``logits`` ``None`` /
    left out)."""
    router, x = _expert_choice_with_bias()
    route = router(x)
    torch.testing.assert_close(route.routing.logits, torch.tensor([[3.0, 9.0], [3.0, 1.0], [2.0, 1.0]]).log())
    # expert 0 scores the tokens (1/4, 3/4, 2/3): takes 1 and 2; expert 1 (3/4, 1/4, 1/3): takes 0 and 2
    assert route.expert_tokens.tolist() == [[1, 2], [0, 2]]
    torch.testing.assert_close(route.expert_gates, torch.tensor([[3 / 4, 2 / 3], [3 / 4, 1 / 3]]))
    # token 0 has expert 1 only, token 1 expert 0 only, token 2 both (2/3 for expert 0 first)
    assert route.routing.selected.tolist() == [[1, -1], [0, -1], [0, 1]]
    torch.testing.assert_close(route.routing.weights, torch.tensor([[3 / 4, 0.0], [3 / 4, 0.0], [2 / 3, 1 / 3]]))


def test_expert_choice_records_the_padding_mask_it_was_given() -> None:
    """Killed: ``ExpertChoiceRouter.forward`` 96, 101 (the record's ``mask`` ``None`` / left out: metrics would count
    the padding token)."""
    router, x = _expert_choice_with_bias()
    mask = torch.tensor([True, False, True])
    route = router(x, mask)
    assert route.routing.mask is mask
    # token 1 is padding: expert 0 scores (1/4, -1, 2/3), takes 2 then 0; expert 1 (3/4, -1, 1/3): 0 then 2
    assert route.expert_tokens.tolist() == [[2, 0], [0, 2]]
    assert route.routing.selected.tolist() == [[1, 0], [-1, -1], [0, 1]]
    torch.testing.assert_close(route.routing.weights, torch.tensor([[3 / 4, 1 / 4], [0.0, 0.0], [2 / 3, 1 / 3]]))


def test_expert_choice_defaults_to_a_capacity_factor_of_2_and_names_a_bad_one() -> None:
    """Killed: ``ExpertChoiceRouter.__init__`` 1 (default capacity factor 3: ``c = ceil(3 * 4 / 4) = 3``, k = 3),
    3, 7, 8 (the name in the error: ``None``, ``XXcapacity_factorXX``, ``CAPACITY_FACTOR``)."""
    router = ExpertChoiceRouter(4, 4)
    # c = ceil(2 * 4 tokens / 4 experts) = 2; k = round(2) = 2
    assert router.capacity_factor == 2.0 and router.k == 2 and router.capacity(4) == 2
    with pytest.raises(ValueError, match=r"^capacity_factor must be a finite number > 0, got 0$"):
        ExpertChoiceRouter(4, 4, capacity_factor=0)
    with pytest.raises(ValueError, match=r"^capacity_factor must be a finite number > 0, got inf$"):
        ExpertChoiceRouter(4, 4, capacity_factor=math.inf)


def test_aux_free_balancing_counts_no_load_for_padding_tokens() -> None:
    """Killed: ``TokenChoiceRouter._count`` 8 (``ones / mask``: a padding token adds 1 / 0 = inf to its expert's
    load), ``TokenChoiceRouter.forward`` 84 (``_count(selected, None)``: the padding token counted). Run with
    ``@torch.no_grad()`` removed from ``_count`` in the mutated copy (mutmut skips decorated
    functions)."""
    router = SoftmaxTopKRouter(3, 3, k=1, balance_rate=0.1, balance_update="manual")
    router.train()
    with torch.no_grad():  # x = I: token t's logits are column t of the weight
        router.weight.copy_(torch.tensor([[4.0, 0.0, 4.0], [0.0, 0.0, 0.0], [0.0, 4.0, 0.0]]))
    # tokens 0 and 2 pick expert 0, token 1 (padding) expert 2
    router(torch.eye(3), mask=torch.tensor([True, False, True]))
    assert router.load.tolist() == [2.0, 0.0, 0.0]
    router(torch.eye(3))  # without a mask every token counts: 2 + 2 for expert 0, 1 for expert 2
    assert router.load.tolist() == [4.0, 0.0, 1.0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_a_float32_router_casts_tokens_of_another_dtype_to_its_own(dtype: torch.dtype) -> None:
    """Killed: ``Router.logits`` 7 (``x.to(None)``: bfloat16 or float64 tokens reach the float32 projection
    uncast and ``F.linear`` raises on the mixed dtypes). Logits ``(1, 2) @ [[3, 0], [1, 1]]^T + (0.5, -0.5)``."""
    router = SoftmaxTopKRouter(2, 2, k=1, bias=True)
    with torch.no_grad():
        router.weight.copy_(torch.tensor([[3.0, 0.0], [1.0, 1.0]]))
        router.bias.copy_(torch.tensor([0.5, -0.5]))
    logits = router.logits(torch.tensor([[1.0, 2.0]], dtype=dtype))
    assert logits.dtype == torch.float32
    assert logits.tolist() == [[3.5, 2.5]]  # (1 * 3 + 2 * 0 + 0.5, 1 + 2 - 0.5)


@pytest.mark.parametrize("router_class", [NoisyTopKRouter, SoftmaxTopKRouter, SigmoidRouter])
def test_token_choice_routers_pick_two_experts_by_default(router_class: type) -> None:
    """Killed: the default ``k = 3`` for ``k = 2`` of ``NoisyTopKRouter.__init__`` 1, ``SoftmaxTopKRouter.__init__`` 1
    and ``TokenChoiceRouter.__init__`` 1 (``SigmoidRouter`` inherits it). With 4 experts every token gets 2."""
    router = router_class(4, 4)
    assert router.k == 2
    assert router(torch.eye(4)).routing.selected.shape == (4, 2)


def test_softmax_top_k_names_a_negative_noise_std() -> None:
    """Killed: ``SoftmaxTopKRouter.__init__`` 10, 14, 15 (the name in the error: ``None``, ``XXnoise_stdXX``,
    ``NOISE_STD``)."""
    with pytest.raises(ValueError, match=r"^noise_std must be a finite number >= 0, got -0.5$"):
        SoftmaxTopKRouter(2, 2, noise_std=-0.5)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"d_model": 0}, "d_model must be an integer >= 1, got 0"),
    ({"num_experts": 0}, "num_experts must be an integer >= 1, got 0"),
    ({"k": 5}, "k must be an integer in [1, num_experts=4], got 5"),
    ({"k": True}, "k must be an integer in [1, num_experts=4], got True"),
    ({"scale": 0.0}, "scale must be a finite number > 0, got 0.0"),
    ({"num_groups": 0}, "num_groups must be an integer >= 1, got 0"),
    ({"topk_groups": 0}, "topk_groups must be an integer >= 1, got 0"),
    ({"balance_rate": -1.0}, "balance_rate must be a finite number >= 0, got -1.0"),
    ({"balance_update": "step"}, "balance_update must be one of ('forward', 'manual'), got 'step'"),
    ({"group_score": "mean"}, "group_score must be one of ('top2', 'max'), got 'mean'"),
    ({"norm_min": -1.0}, "norm_min must be a finite number >= 0, got -1.0"),
    ({"num_groups": 3}, "num_groups must divide num_experts=4, got 3"),
    ({"num_groups": 2, "topk_groups": 3},
     "topk_groups must be in [1, num_groups=2] with k <= topk_groups * 2 experts per group, got topk_groups=3, k=2"),
    ({"num_groups": 2, "topk_groups": 1, "k": 3},
     "topk_groups must be in [1, num_groups=2] with k <= topk_groups * 2 experts per group, got topk_groups=1, k=3"),
])
def test_token_choice_router_names_each_bad_argument(kwargs: dict, message: str) -> None:
    """Killed: the argument names in the errors of ``TokenChoiceRouter.__init__`` (``None``, ``XX…XX``, upper
    case: 21, 25-27, 31-33, 37-39, 43-45, 51, 52, 57, 63, 64, 69, 73, 74; 83: ``num_experts / num_groups`` in the
    message, "2.0 experts per group") and ``Router.__init__`` (7, 9, 13, 14: the names of ``d_model`` /
    ``num_experts``; 16: ``isinstance(k, bool) and …`` accepts ``k = True``), which ``SigmoidRouter`` (4 experts,
    d_model 2, k = 2 unless given) reaches without arguments of its own."""
    arguments = {"d_model": 2, "num_experts": 4} | kwargs
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        SigmoidRouter(**arguments)


@pytest.mark.parametrize("kwargs", [{"num_groups": 2, "topk_groups": 2}, {"num_groups": 2, "topk_groups": 1, "k": 2},
                                    {"k": 4}, {"k": 1}, {"d_model": 1, "num_experts": 1, "k": 1}])
def test_token_choice_router_accepts_the_bounds_of_its_arguments(kwargs: dict) -> None:
    """The limits themselves are valid: ``topk_groups = num_groups``, ``k = topk_groups * experts per group``,
    ``k = E``, ``k = 1``, one expert of width 1. Fails on ``TokenChoiceRouter.__init__`` 79 (``k >= topk_groups *
    …``) and ``Router.__init__`` 19, 20, 21 (``2 <= k``, ``1 < k``, ``k < num_experts``)."""
    router = SigmoidRouter(**({"d_model": 2, "num_experts": 4} | kwargs))
    assert router.k == kwargs.get("k", 2)


def test_the_base_router_defaults_to_two_experts_per_token_and_no_bias() -> None:
    """Killed: ``Router.__init__`` 1 (default ``k = 3``), 2 (default ``bias=True``): a router class of one's own
    that calls ``Router.__init__(d_model, num_experts)`` gets k = 2 and a projection without bias."""
    router = Router(3, 4)
    assert router.k == 2 and router.bias is None
    assert router.weight.shape == (4, 3)
    with torch.no_grad():
        router.weight.copy_(torch.arange(12.0).view(4, 3))
    # logits of the token (1, 0, 2): rows (0, 1, 2), (3, 4, 5), ... dotted with it: 0 + 4, 3 + 10, 6 + 16, 9 + 22
    assert router.logits(torch.tensor([[1.0, 0.0, 2.0]])).tolist() == [[4.0, 13.0, 22.0, 31.0]]


def test_router_projection_starts_uniform_within_one_over_root_d_model() -> None:
    """Killed: ``Router.__init__`` 25, 26 (bound ``1 * sqrt(16) = 4`` / ``2 / sqrt(16) = 0.5``), 33, 46 (``uniform_``
    without its upper bound: up to 1), 45 (``uniform_(0.25)``: [0.25, 1]), 48 (``uniform_(+0.25, 0.25)``: all 0.25).
    The initialisation is random, so its bound ``1 / sqrt(16) = 0.25`` is what is checked: 64 * 16 weights and 64
    biases, seeded, all within [-0.25, 0.25] and reaching below -0.2 and above 0.2 (the chance that 64 uniform
    draws miss either end's tenth is 2 * 0.9 ** 64 = 0.2%; the seed fixes the draws)."""
    torch.manual_seed(0)
    router = Router(16, 64, bias=True)
    for values in (router.weight, router.bias):
        assert values.abs().max().item() <= 0.25
        assert values.min().item() < -0.2 and values.max().item() > 0.2
