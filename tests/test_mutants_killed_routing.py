"""Tests written for mutmut's survivors in the routing metrics, routing functions and losses (CONTRIBUTING.md,
"Mutation testing", fifth run): each fails on the mutants named in its docstring (names of ``mutmut results``).

Expected values are worked out by hand in the comments.
"""

from __future__ import annotations

import math

import pytest
import torch

from gmnn.metrics.routing import ChangedFraction, RoutingStats, assignment, top1_changed
from gmnn.nn.functional.losses import entropy, hard_em_loss, per_expert_nll, softmin_allocation
from gmnn.nn.functional.routing import softmax_routing, top_k_routing
from gmnn.nn.moe.record import Routing


def test_entropy_is_one_value_per_row() -> None:
    """Kills ``losses.x_entropy__mutmut_2`` (``sum(None)``: one entropy for the whole batch)."""
    # row 0: (1/2, 1/2) -> ln 2; row 1: (1, 0) -> 0 (0 log 0 = 0)
    log_probs = torch.tensor([[math.log(0.5), math.log(0.5)], [0.0, float("-inf")]])
    out = entropy(log_probs)
    assert out.shape == (2,)
    assert out[0].item() == pytest.approx(math.log(2))
    assert out[1].item() == 0.0


def test_softmin_allocation_names_its_arguments_in_errors() -> None:
    """Kills ``losses.x_softmin_allocation__mutmut_7`` and ``_13`` (``"XXtemperatureXX"`` / ``"XXnoiseXX"``)."""
    scores = torch.zeros(1, 2)
    with pytest.raises(ValueError, match=r"^temperature must be a finite number > 0, got 0\.0$"):
        softmin_allocation(scores, 0.0)
    with pytest.raises(ValueError, match=r"^noise must be a finite number >= 0, got -1\.0$"):
        softmin_allocation(scores, 1.0, noise=-1.0)


def test_softmin_allocation_without_noise_draws_no_random_numbers() -> None:
    """Kills ``losses.x_softmin_allocation__mutmut_16`` (``noise >= 0``: draws ``randn_like`` even at noise 0,
    advancing the global generator, so a seeded run's later draws change)."""
    torch.manual_seed(123)
    expected_next = torch.randn(3)
    torch.manual_seed(123)
    out = softmin_allocation(torch.tensor([[0.0, math.log(3.0)]]), 1.0)
    # softmin of (0, ln 3) at T = 1: weights (3/4, 1/4)
    torch.testing.assert_close(out.exp(), torch.tensor([[0.75, 0.25]]))
    torch.testing.assert_close(torch.randn(3), expected_next, rtol=0, atol=0)


def test_softmin_allocation_adds_the_scaled_noise() -> None:
    """Kills ``losses.x_softmin_allocation__mutmut_19`` (``scores - noise * z``) and ``_20`` (``noise / z``)."""
    scores = torch.tensor([[1.0, 2.0, 4.0]])
    torch.manual_seed(7)
    z = torch.randn_like(scores)
    torch.manual_seed(7)
    out = softmin_allocation(scores, 2.0, noise=0.5)
    # log softmin((s + 0.5 z) / 2) = log_softmax(-(s + 0.5 z) / 2)
    noisy = scores + 0.5 * z
    expected = -noisy / 2.0 - torch.logsumexp(-noisy / 2.0, dim=-1, keepdim=True)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, torch.log_softmax(-(scores - 0.5 * z) / 2.0, dim=-1))


def test_top1_changed_counts_differing_tokens_of_layers_in_both() -> None:
    """Kills ``routing.x_top1_changed__mutmut_1`` (``==``: the unchanged fraction) and ``_2`` (``name not in
    before``: only layers missing from ``before``, a ``KeyError``)."""
    before = {"a": torch.tensor([0, 1, 2, 3]), "b": torch.tensor([1, 1])}
    after = {"a": torch.tensor([0, 2, 2, 0]), "b": torch.tensor([1, 0]), "c": torch.tensor([5])}
    out = top1_changed(before, after)
    assert set(out) == {"a", "b"}  # "c" has no earlier routing
    assert out["a"].item() == 0.5  # tokens 1 and 3 of 4 changed
    assert out["b"].item() == 0.5
    assert top1_changed({"a": torch.tensor([1, 2, 3, 4])}, {"a": torch.tensor([1, 0, 3, 0])})["a"].item() == 0.5
    assert top1_changed({"a": torch.tensor([1, 2, 3, 4])}, {"a": torch.tensor([0, 0, 3, 0])})["a"].item() == 0.75


def test_top_k_routing_accepts_k_equal_to_the_expert_count_and_rejects_a_bool() -> None:
    """Kills ``routing.x_top_k_routing__mutmut_6`` (``isinstance(k, bool) and ...``: ``k=True`` accepted) and
    ``_11`` (``k < num_experts``: ``k = E`` rejected)."""
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    log_w, idx = top_k_routing(logits, 3)
    assert idx.tolist() == [[1, 2, 0]]
    # softmax over all three: e^2, e^1, e^0 over their sum
    total = math.exp(2.0) + math.exp(1.0) + 1.0
    torch.testing.assert_close(log_w.exp(), torch.tensor([[math.exp(2.0) / total, math.exp(1.0) / total, 1.0 / total]]))
    with pytest.raises(ValueError, match=r"^k must be an integer in \[1, num_experts=3\], got True$"):
        top_k_routing(logits, True)


def test_top_k_routing_checks_a_number_temperature_but_not_a_tensor_one() -> None:
    """Kills ``routing.x_top_k_routing__mutmut_13`` (``if isinstance(temperature, Tensor)``: the number unchecked,
    the tensor checked) and ``_14`` (``check_positive(None, ...)``: "None must be ...")."""
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    with pytest.raises(ValueError, match=r"^temperature must be a finite number > 0, got 0\.0$"):
        top_k_routing(logits, 2, 0.0)
    log_w, idx = top_k_routing(logits, 2, torch.tensor(0.5))
    # logits (2, 1) / 0.5 = (4, 2): weights e^4 / (e^4 + e^2), e^2 / (e^4 + e^2)
    assert idx.tolist() == [[1, 2]]
    torch.testing.assert_close(log_w.exp(), torch.tensor([[1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(2.0))]]))


def test_gate_weighted_hard_em_loss_is_finite_when_the_assigned_expert_gives_the_label_zero() -> None:
    """Kills ``losses.x_hard_em_loss__mutmut_40`` (``log(p - 1e-7)``: NaN at p = 0) and ``_42``
    (``ValueError(None)``: the message naming the allowed M steps lost)."""
    log_gate = torch.log(torch.tensor([[0.25, 0.75]]))
    # expert 0 gives label 0 probability 0, expert 1 gives it 1/2
    expert_log_probs = torch.log(torch.tensor([[[0.0, 1.0], [0.5, 0.5]]]))
    y, assigned = torch.tensor([0]), torch.tensor([0])
    loss = hard_em_loss(log_gate, expert_log_probs, y, assigned, "gate_weighted")
    # -g_0 log(0 + 1e-7) = 0.25 * 7 ln 10
    assert loss.item() == pytest.approx(0.25 * 7 * math.log(10), rel=1e-5)
    with pytest.raises(ValueError, match=r"^m_step must be one of \('complete_data', 'gate_weighted'\), got 'x'$"):
        hard_em_loss(log_gate, expert_log_probs, y, assigned, "x")


def test_changed_fraction_sums_over_updates() -> None:
    """Kills ``routing.xǁChangedFractionǁupdate__mutmut_1`` (``changed = ...``: only the last update's count)."""
    metric = ChangedFraction()
    metric.update(torch.tensor([True, True, False]))
    metric.update(torch.tensor([False, True]))
    assert metric.compute().item() == pytest.approx(3 / 5)  # 2 + 1 changed of 3 + 2


def test_softmax_routing_default_temperature_is_one_and_named_in_errors() -> None:
    """Kills ``routing.x_softmax_routing__mutmut_1`` (default temperature 2) and ``_7`` (``"XXtemperatureXX"``)."""
    logits = torch.tensor([[0.0, math.log(3.0)]])
    torch.testing.assert_close(softmax_routing(logits).exp(), torch.tensor([[0.25, 0.75]]))  # (1, 3) / 4
    with pytest.raises(ValueError, match=r"^temperature must be a finite number > 0, got -1\.0$"):
        softmax_routing(logits, -1.0)


def test_per_expert_nll_with_more_experts_than_classes() -> None:
    """Kills ``losses.x_per_expert_nll__mutmut_20`` (index expanded to ``C`` instead of ``E``: ``[B, C]`` out)."""
    # 3 experts, 2 classes, label 1: NLL of each expert -log p_i(1)
    probs = torch.tensor([[[0.5, 0.5], [0.75, 0.25], [0.0, 1.0]]])
    out = per_expert_nll(probs.log(), torch.tensor([1]))
    torch.testing.assert_close(out, torch.tensor([[math.log(2.0), math.log(4.0), 0.0]]))


def test_changed_fraction_merges_by_summing_and_counts_a_single_token() -> None:
    """Kills ``routing.xǁChangedFractionǁ__init____mutmut_3``, ``_6``, ``_17``, ``_20`` (``dist_reduce_fx`` None or
    left out: merged states are stacked, not summed, as under DDP) and ``compute__mutmut_3`` (``clamp_min(2)``)."""
    first, second = ChangedFraction(), ChangedFraction()
    first.update(torch.tensor([True, True, False]))
    second.update(torch.tensor([False, True]))
    first.merge_state(second)  # torchmetrics reduces the states with their dist_reduce_fx
    assert first.changed.shape == () and first.total.shape == ()
    assert first.compute().item() == pytest.approx(3 / 5)
    single = ChangedFraction()
    single.update(torch.tensor([True]))
    assert single.compute().item() == 1.0  # 1 of 1, not 1 / 2


def test_changed_fraction_counts_exactly_beyond_float32() -> None:
    """Kills ``routing.xǁChangedFractionǁ__init____mutmut_10``, ``_12`` (``changed`` state float32) and the
    ``total`` ones with ``dtype`` None or left out: float32 cannot hold 2**24 + 1."""
    n = 2**24 + 1
    changed = torch.ones(n, dtype=torch.bool)
    metric = ChangedFraction()
    metric.update(changed)
    # n / n = 1; a float32 count of changed would be 2**24, and 2**24 / n rounds to 1 - 2**-24 in float32
    assert metric.compute().item() == 1.0
    changed[:2] = False
    metric = ChangedFraction()
    metric.update(changed)
    # (2**24 - 1) / (2**24 + 1) = 1 - 2 / (2**24 + 1) rounds to 1 - 2**-23 in float32;
    # a float32 total (2**24) would give (2**24 - 1) / 2**24 = 1 - 2**-24
    assert metric.compute().item() == 1 - 2**-23


def test_assignment_is_float32_whatever_the_probabilities_dtype() -> None:
    """Kills ``routing.x_assignment__mutmut_12`` and ``_14`` (the 0/1 matrix in the dtype of ``probs``: with bfloat16
    probabilities ``scatter_add`` of float32 ones into it fails; with float64 ones it comes back float64)."""
    selected = torch.tensor([[1, 0], [2, -1]])
    expected = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # slot -1 adds nothing
    for dtype in (torch.bfloat16, torch.float64):
        out = assignment(Routing(probs=torch.full((2, 3), 1 / 3, dtype=dtype), selected=selected))
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_routing_stats_defaults_and_argument_names() -> None:
    """Kills ``routing.xǁRoutingStatsǁ__init____mutmut_1`` (default ``num_labels=1``: label keys appear), ``_2``
    (default ``dead_fraction=1.1``: a balanced layer has dead experts) and ``_3``, ``_7``, ``_8``, ``_9``, ``_13``,
    ``_14``, ``_15``, ``_19``, ``_20`` (argument names in the errors), and ``compute__mutmut_26`` (``nan = None``:
    no ``router_z`` without logits) and ``_63`` (``num_labels >= 0``: label keys without labels)."""
    stats = RoutingStats(2)
    # two tokens, one to each expert: share (1/2, 1/2), none below 0.1 / 2
    stats.update(Routing(probs=torch.tensor([[0.9, 0.1], [0.2, 0.8]]), selected=torch.tensor([[0], [1]])))
    out = stats.compute()
    assert set(out) == {"usage", "imbalance", "dead_experts", "dropped", "router_z"}
    assert out["dead_experts"].item() == 0.0
    assert out["usage"].item() == pytest.approx(1.0)  # log2 2 bits
    assert math.isnan(out["router_z"].item())  # no logits and no recorded z
    with pytest.raises(ValueError, match=r"^num_experts must be an integer >= 1, got 0$"):
        RoutingStats(0)
    with pytest.raises(ValueError, match=r"^num_labels must be a finite number >= 0, got -1$"):
        RoutingStats(2, num_labels=-1)
    with pytest.raises(ValueError, match=r"^dead_fraction must be a finite number >= 0, got -0\.5$"):
        RoutingStats(2, dead_fraction=-0.5)


def _two_routings() -> tuple[tuple[Routing, torch.Tensor], tuple[Routing, torch.Tensor]]:
    zeros = torch.zeros(2, 2)  # logits 0: logsumexp = ln 2 per token, z = (ln 2)^2
    first = Routing(probs=torch.tensor([[0.75, 0.25], [0.25, 0.75]]), selected=torch.tensor([[0], [1]]), logits=zeros)
    second = Routing(probs=torch.tensor([[0.75, 0.25]]), selected=torch.tensor([[0]]), logits=zeros[:1],
                     dropped=torch.tensor([[True]]))
    return (first, torch.tensor([0, 1])), (second, torch.tensor([1]))


def test_routing_stats_states_are_float64_sums_that_merge_like_one_update_stream() -> None:
    """Written for ``routing.xǁRoutingStatsǁ__init__`` 27 and 30-95 (``dist_reduce_fx`` None or left out, so that
    merged states are stacked as under DDP; float32 states, not exact past 2**24; ``max(2, num_labels)``, a
    ``[E, 2]`` joint for one or no label): mutmut found every one of them killed with this file in its selection."""
    (r1, y1), (r2, y2) = _two_routings()
    merged, other, single = RoutingStats(2, num_labels=2), RoutingStats(2, num_labels=2), RoutingStats(2, num_labels=2)
    merged.update(r1, y1)
    other.update(r2, y2)
    merged.merge_state(other)  # torchmetrics reduces each state with its dist_reduce_fx
    single.update(r1, y1)
    single.update(r2, y2)
    for stats in (merged, single):
        for name in ("load", "coactivation", "joint", "tokens", "dropped", "z_sum", "z_tokens"):
            assert getattr(stats, name).dtype == torch.float64, name
        m = stats.matrices()
        # experts of the three tokens: 0, 1, 0; labels 0, 1, 1
        torch.testing.assert_close(m["load"], torch.tensor([2.0, 1.0], dtype=torch.float64))
        torch.testing.assert_close(m["coactivation"], torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
        torch.testing.assert_close(m["joint"], torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=torch.float64))
        assert stats.tokens.shape == () and stats.tokens.item() == 3.0
        out = stats.compute()
        assert out["dropped"].item() == pytest.approx(1 / 3)  # 1 dropped pair of 3
        assert out["router_z"].item() == pytest.approx(math.log(2) ** 2)
        assert out["imbalance"].item() == pytest.approx(4 / 3)  # max share 2/3 over mean 1/2
        # H(2/3, 1/3) bits
        assert out["usage"].item() == pytest.approx(-(2 / 3) * math.log2(2 / 3) - (1 / 3) * math.log2(1 / 3))
    assert RoutingStats(2).matrices()["joint"].shape == (2, 1)
    one_label = RoutingStats(2, num_labels=1)
    one_label.update(r1, torch.tensor([0, 0]))
    torch.testing.assert_close(one_label.matrices()["joint"], torch.tensor([[1.0], [1.0]], dtype=torch.float64))


def _masked_routing() -> tuple[Routing, torch.Tensor]:
    """E = 3 experts, k = 2, L = 2 labels, 5 tokens of which the last is padding."""
    routing = Routing(
        probs=torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.5, 0.2, 0.3], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1]]),
        selected=torch.tensor([[0, 1], [2, -1], [0, 2], [1, 0], [0, 2]]),
        logits=torch.zeros(5, 3),  # logsumexp = ln 3 per token
        dropped=torch.tensor([[True, False], [False, True], [False, False], [False, False], [True, True]]),
        mask=torch.tensor([True, True, True, True, False]),
    )
    return routing, torch.tensor([0, 2, -1, 1, 1])


def test_routing_stats_update_with_padding_empty_slots_and_out_of_range_labels() -> None:
    """With the other ``update`` tests here, kills every survivor of ``routing.xǁRoutingStatsǁupdate`` except the
    equivalent 29 and 49 (masks, dropped pairs, z and labels): every state checked against hand-counted values."""
    routing, labels = _masked_routing()
    stats = RoutingStats(3, num_labels=2)
    stats.update(routing, labels)
    # counted tokens 0-3 route to {0, 1}, {2}, {0, 2}, {1, 0}: load (3, 2, 2), 7 pairs
    assert stats.tokens.item() == 4.0
    m = stats.matrices()
    torch.testing.assert_close(m["load"], torch.tensor([3.0, 2.0, 2.0], dtype=torch.float64))
    expected_coactivation = torch.tensor([[3.0, 2.0, 1.0], [2.0, 2.0, 0.0], [1.0, 0.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(m["coactivation"], expected_coactivation)
    # top-1 experts 0, 2, 0, 1 (by probs); labels 0, 2 (out of range), -1 (ignored), 1; token 4 is padding
    torch.testing.assert_close(m["joint"], torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64))
    # dropped pairs: token 0's expert 0 (token 1's empty slot and padding token 4 do not count)
    assert stats.dropped.item() == 1.0
    assert stats.z_tokens.item() == 4.0
    assert stats.z_sum.item() == pytest.approx(4 * math.log(3) ** 2)
    out = stats.compute()
    assert out["dropped"].item() == pytest.approx(1 / 7)
    assert out["router_z"].item() == pytest.approx(math.log(3) ** 2)
    # a second, unmasked call without labels adds to every state
    stats.update(Routing(probs=torch.tensor([[0.1, 0.2, 0.7]]), selected=torch.tensor([[2, 1]]),
                         logits=torch.tensor([[0.0, 0.0, math.log(2.0)]])))  # logsumexp = ln 4
    assert stats.tokens.item() == 5.0
    torch.testing.assert_close(stats.matrices()["load"], torch.tensor([3.0, 3.0, 3.0], dtype=torch.float64))
    assert stats.coactivation[1, 2].item() == 1.0 and stats.coactivation[2, 2].item() == 3.0
    assert stats.z_sum.item() == pytest.approx(4 * math.log(3) ** 2 + math.log(4) ** 2)
    assert stats.z_tokens.item() == 5.0
    assert stats.dropped.item() == 1.0


def test_routing_stats_prefers_the_layers_own_z_loss_weighted_by_its_tokens() -> None:
    """Kills ``routing.xǁRoutingStatsǁupdate__mutmut_31``-``_41`` (the recorded ``losses["z"]`` ignored, or not
    weighted by the counted tokens, or overwritten)."""
    stats = RoutingStats(2)
    probs, selected = torch.tensor([[0.5, 0.5]] * 4), torch.tensor([[0], [1], [0], [1]])
    # a recorded z of 0.5 over 3 counted tokens (the logits' (ln 2)^2 must not be used)
    stats.update(Routing(probs=probs, selected=selected, logits=torch.zeros(4, 2),
                         mask=torch.tensor([True, True, True, False]), losses={"z": torch.tensor(0.5)}))
    stats.update(Routing(probs=probs[:1], selected=selected[:1], losses={"z": torch.tensor(2.0)}))
    assert stats.z_sum.item() == pytest.approx(0.5 * 3 + 2.0 * 1)
    assert stats.z_tokens.item() == 4.0
    assert stats.compute()["router_z"].item() == pytest.approx(3.5 / 4)


def test_routing_stats_labels_need_label_values() -> None:
    """Kills ``routing.xǁRoutingStatsǁupdate__mutmut_60``-``_63`` (labels read when absent or when there are no label
    values; one label value ignored)."""
    routing, labels = _masked_routing()
    no_labels = RoutingStats(3)
    no_labels.update(routing, labels)  # labels given but num_labels = 0: nothing counted, no error
    torch.testing.assert_close(no_labels.matrices()["joint"], torch.zeros(3, 1, dtype=torch.float64))
    with_labels = RoutingStats(3, num_labels=1)
    with_labels.update(routing)  # no labels: joint stays 0
    with_labels.update(routing, torch.tensor([0, 0, 0, 0, 0]))
    # counted tokens' top-1 experts 0, 2, 0, 1
    torch.testing.assert_close(with_labels.matrices()["joint"], torch.tensor([[2.0], [1.0], [1.0]], dtype=torch.float64))


def _top1_routing(experts: list[int], num_experts: int, **fields) -> Routing:
    """Top-1 routing of ``len(experts)`` tokens; probs put 0.9 on the chosen expert (ties impossible)."""
    probs = torch.full((len(experts), num_experts), 0.1 / (num_experts - 1) if num_experts > 1 else 0.0)
    probs[torch.arange(len(experts)), torch.tensor(experts)] = 0.9 if num_experts > 1 else 1.0
    return Routing(probs=probs, selected=torch.tensor(experts).view(-1, 1), **fields)


def test_routing_stats_label_entropies_average_over_seen_labels() -> None:
    """Kills ``routing.xǁRoutingStatsǁcompute__mutmut_8``, ``_10``, ``_12`` (``per_label`` normalised over the wrong
    axis), ``_16``-``_19`` (which labels count as seen), ``_22``, ``_23`` (the label marginal), ``_72``, ``_73``,
    ``_75``, ``_77``, ``_78`` (the mean over seen labels)."""
    # (expert, label) of six tokens; label 3 is never seen
    experts, labels = [0, 1, 0, 1, 1, 1], torch.tensor([0, 0, 1, 2, 2, 2])
    stats = RoutingStats(2, num_labels=4)
    stats.update(_top1_routing(experts, 2), labels)
    out = stats.compute()
    torch.testing.assert_close(stats.matrices()["joint"], torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 3.0, 0.0]],
                                                                       dtype=torch.float64))
    # per seen label, the entropy of its experts: label 0 (1/2, 1/2) 1 bit, label 1 (1, 0) 0, label 2 (0, 1) 0
    assert out["label_entropy"].item() == pytest.approx(1 / 3)
    # label marginal (2, 1, 3, 0) / 6
    h_label = -(1 / 3) * math.log2(1 / 3) - (1 / 6) * math.log2(1 / 6) - 0.5 * math.log2(0.5)
    assert out["label_marginal_entropy"].item() == pytest.approx(h_label)
    # H(label | expert): expert 0 has labels (0, 1) -> 1 bit (weight 1/3), expert 1 (0, 2, 2, 2) -> H(1/4, 3/4)
    h_given = 1 / 3 + (2 / 3) * (-(0.25) * math.log2(0.25) - 0.75 * math.log2(0.75))
    assert out["mutual_information"].item() == pytest.approx(h_label - h_given)
    # usage: expert shares (1/3, 2/3)
    assert out["usage"].item() == pytest.approx(-(1 / 3) * math.log2(1 / 3) - (2 / 3) * math.log2(2 / 3))
    assert out["imbalance"].item() == pytest.approx((2 / 3) / 0.5)


def test_routing_stats_single_token_values_are_exact() -> None:
    """Kills ``routing.xǁRoutingStatsǁcompute__mutmut_4``, ``_14``, ``_25`` (denominators clamped to 1 + 1e-12: a
    tiny positive entropy where it is 0), ``_55`` (``dropped`` over at least 2 pairs), ``_62`` (``router_z`` NaN for
    one token), ``_64`` (no label keys for one label value), ``_79``, ``_80`` (the mean over one seen label, or over
    none) and ``_85`` (``- 0.0``: entropies of -0.0)."""
    stats = RoutingStats(2, num_labels=1)
    stats.update(_top1_routing([0], 2, logits=torch.zeros(1, 2), dropped=torch.tensor([[True]])), torch.tensor([0]))
    out = stats.compute()
    for name in ("usage", "label_entropy", "label_marginal_entropy", "mutual_information"):
        assert out[name].item() == 0.0 and math.copysign(1.0, out[name].item()) == 1.0, name
    assert out["dropped"].item() == 1.0  # 1 dropped pair of 1
    assert out["router_z"].item() == pytest.approx(math.log(2) ** 2)
    assert out["imbalance"].item() == 2.0  # share (1, 0): max 1 over mean 1/2
    # one seen label whose two tokens went to different experts: 1 bit
    two = RoutingStats(2, num_labels=1)
    two.update(_top1_routing([0, 1], 2), torch.tensor([0, 0]))
    assert two.compute()["label_entropy"].item() == pytest.approx(1.0)
    # no label seen at all: 0, not 0 / 0
    none_seen = RoutingStats(2, num_labels=2)
    none_seen.update(_top1_routing([0, 1], 2))
    assert none_seen.compute()["label_entropy"].item() == 0.0


def test_routing_stats_dead_experts_are_strictly_below_the_fraction_of_the_fair_share() -> None:
    """Kills ``routing.xǁRoutingStatsǁcompute__mutmut_49`` (``<=``) and ``_50`` (``dead_fraction * E``)."""
    stats = RoutingStats(2, dead_fraction=0.5)  # threshold 0.5 / 2 = 1/4
    stats.update(_top1_routing([0, 0, 0, 1], 2))  # shares (3/4, 1/4): 1/4 is not below 1/4
    assert stats.compute()["dead_experts"].item() == 0.0
    stats.update(_top1_routing([0, 0, 0, 0], 2))  # shares (7/8, 1/8)
    assert stats.compute()["dead_experts"].item() == 1.0
