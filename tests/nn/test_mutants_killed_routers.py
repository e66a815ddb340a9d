"""Tests written for mutmut's survivors in ``gmnn/nn/moe/routers.py`` (CONTRIBUTING.md, "Mutation testing"):
the parts the third run did not reach. Each test fails on the mutants its docstring names.

Values are worked out by hand in the comments; the mutant names are those of ``mutmut results``
(``gmnn.nn.moe.routers.xǁSoftMoERouterǁlogits__mutmut_3`` is written ``SoftMoERouter.logits`` 3).
"""

from __future__ import annotations

import pytest
import torch

from gmnn.nn.moe.routers import SoftMoERouter


def _normalized_soft_router() -> SoftMoERouter:
    """A normalising Soft MoE router with 2 experts of 1 slot: ``phi = [[3, 0], [4, 1]]``, columns of norm 5 and 1,
    so ``normalize(phi, dim=0) = [[0.6, 0], [0.8, 1]]``; ``phi_scale = 2``."""
    router = SoftMoERouter(2, 2, slots=1, normalize=True)
    with torch.no_grad():
        router.phi.copy_(torch.tensor([[3.0, 0.0], [4.0, 1.0]]))
        router.phi_scale.fill_(2.0)
    return router


def test_normalized_soft_moe_logits_are_scaled_cosines_of_tokens_and_slot_embeddings() -> None:
    """Killed: ``SoftMoERouter.logits`` 3 (``normalize(x, dim=None)``: every token divided by the norm of all of
    them), 7 (``dim=-2``: each feature divided by its norm over the tokens), 8 (``phi_scale / normalize(phi)``),
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
    """Killed: ``SoftMoERouter.forward`` 70, 74 (the record's ``logits`` ``None`` or left out), 71, 75 (its
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
