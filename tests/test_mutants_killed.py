"""Tests written for mutmut's survivors (CONTRIBUTING.md, "Mutation testing"): each fails on the named mutant.

Values are worked out by hand in the comments; the mutant names are those of ``mutmut results``.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from gmnn.metrics import (
    ExpertAllocation,
    ExpertUsage,
    ImportanceCV,
    MutualInformation,
    PerTaskEntropy,
    SampleEntropy,
    mutual_information_bits,
)
from gmnn.nn.functional.combine import product_of_experts
from gmnn.nn.functional.regularizers import (
    allocation_loss,
    ideal_gate_loss,
    importance_loss,
    load_balancing_loss,
    prediction_class_cv,
    router_z_loss,
    sample_distances,
    sample_similarity_terms,
    sequence_balance_loss,
)
from gmnn.nn.moe.record import Routing
from gmnn.nn.moe.routers import (
    NoisyTopKRouter,
    SigmoidRouter,
    SoftmaxTopKRouter,
    SoftMoERouter,
    _ratio_or_log_space,
)


def test_allocation_of_a_single_sample_reports_its_gate_as_usage_and_its_class_count() -> None:
    """Killed: ``ExpertAllocation.compute`` mutants 3 (``clamp_min(1)`` -> ``clamp_min(2)``: usage halved for one
    sample) and 11/12 (the ``class_counts`` key renamed: nothing read it)."""
    allocation = ExpertAllocation(num_experts=2, num_classes=3)
    # one sample of class 2, gate (0.25, 0.75), chosen expert 1 predicts class 2 (correct)
    allocation.update(torch.tensor([[0.25, 0.75]]), torch.tensor([2]), torch.tensor([2]))
    out = allocation.compute()
    # usage = gate mass per expert / number of samples = (0.25, 0.75) / 1
    torch.testing.assert_close(out["usage"], torch.tensor([0.25, 0.75]))
    assert out["class_counts"].tolist() == [0, 0, 1]
    assert out["routed"].tolist() == [0, 1]
    # allocation column 2 is that sample's gate; unseen classes 0 and 1 are all zeros
    torch.testing.assert_close(out["allocation"], torch.tensor([[0.0, 0.0, 0.25], [0.0, 0.0, 0.75]]))


def test_product_of_experts_names_the_expert_input_of_the_wrong_shape() -> None:
    """Killed: ``product_of_experts`` mutant 1 (``check_shape(None, ...)``: the message named no input)."""
    with pytest.raises(ValueError, match=r"^expert_log_probs must have shape \[2, 3, '\*'\], got \[2, 4, 5\]$"):
        product_of_experts(torch.ones(2, 3), torch.zeros(2, 4, 5))


def test_allocation_names_predictions_of_the_wrong_shape() -> None:
    """Killed: ``ExpertAllocation.update`` mutants 5, 11, 12 (the name ``predictions`` dropped or changed)."""
    allocation = ExpertAllocation(num_experts=2, num_classes=3)
    with pytest.raises(ValueError, match=r"^predictions must have shape \[2\], got \[3\]$"):
        allocation.update(torch.tensor([[0.5, 0.5], [1.0, 0.0]]), torch.tensor([0, 1]), torch.tensor([0, 1, 2]))


def test_allocation_counts_no_routed_samples_for_experts_the_gate_never_chooses() -> None:
    """Killed: ``ExpertAllocation.update`` mutant 23 (``bincount`` without ``minlength``: with only expert 0 chosen
    its one count broadcast to every expert)."""
    allocation = ExpertAllocation(num_experts=3, num_classes=2)
    # two samples, both routed to expert 0; the first is predicted right, the second wrong
    allocation.update(torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.25, 0.25]]), torch.tensor([0, 1]), torch.tensor([0, 0]))
    out = allocation.compute()
    assert out["routed"].tolist() == [2, 0, 0]
    torch.testing.assert_close(out["expert_accuracy"][0], torch.tensor(0.5))
    assert out["expert_accuracy"][1:].isnan().all()  # no samples routed: NaN, as documented


# --- second triage: the rest of gmnn/metrics/ and combine.py's survivors -------------------------------------------


def test_mutual_information_names_classes_of_the_wrong_shape() -> None:
    """Killed: ``MutualInformation.update`` mutant 11 (the name ``classes`` in the shape error changed to
    ``XXclassesXX``; ``test_metrics`` only searched for the word)."""
    with pytest.raises(ValueError, match=r"^classes must have shape \[3\], got \[4\]$"):
        MutualInformation(2, 2).update(torch.rand(3, 2), torch.zeros(4, dtype=torch.long))


def test_single_sample_usage_and_sample_entropy_divide_by_one_sample() -> None:
    """Killed: ``ExpertUsage.compute`` mutant 4 and ``SampleEntropy.compute`` mutant 3 (``total.clamp_min(1)`` ->
    ``clamp_min(2)``: one sample counted as two)."""
    usage = ExpertUsage(2)
    usage.update(torch.tensor([[1.0, 0.0]]))
    # mean gate (1, 0): H = 0 bits; the mutant's (0.5, 0) gives -0.5 log2 0.5 = 0.5 bits
    assert float(usage.compute()) == 0.0
    entropy = SampleEntropy(2)
    entropy.update(torch.tensor([[0.5, 0.5]]))
    # one sample of entropy 1 bit: mean 1 (the mutant halves it)
    assert float(entropy.compute()) == 1.0


def test_importance_cv_when_the_mean_gate_mass_is_below_one() -> None:
    """Killed: ``ImportanceCV.compute`` mutant 6 (``mean.clamp_min(1e-12)`` -> ``clamp_min(1.000000000001)``: the
    mean, B / E, is below 1 whenever there are fewer samples than experts)."""
    cv = ImportanceCV(4)
    cv.update(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    # gate sums (1, 0, 0, 0): mean 1/4, population std sqrt(1/4 - 1/16) = sqrt(3)/4, CV sqrt(3) = sqrt(E - 1)
    assert float(cv.compute()) == pytest.approx(math.sqrt(3.0))


def test_per_task_entropy_leaves_unseen_classes_out_and_is_zero_before_any_sample() -> None:
    """Killed: ``PerTaskEntropy.compute`` mutants 1 (``seen = None``) and 2 (``class_counts >= 0``): both average
    over every class, unseen ones at 0 bits; mutant 10 (``nan_to_num(1.0)``: 1 bit with no samples)."""
    metric = PerTaskEntropy(num_experts=2, num_classes=3)
    metric.update(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    # no class seen: the mean over no classes is NaN, reported as 0
    assert float(metric.compute()) == 0.0
    # class 0: gate (0.5, 0.5), 1 bit; class 2: gate (1, 0), 0 bits; class 1 never seen
    metric.update(torch.tensor([[0.5, 0.5], [1.0, 0.0]]), torch.tensor([0, 2]))
    # mean over the two seen classes: 0.5 bits (over all three classes it would be 1/3)
    assert float(metric.compute()) == 0.5


def test_mutual_information_is_the_same_for_any_total_mass() -> None:
    """Killed: ``mutual_information_bits`` mutant 4 (``counts.sum().clamp_min(1e-12)`` -> ``clamp_min(1.000000000001)``:
    a matrix whose entries sum to less than 1 is no longer normalised)."""
    # diagonal 2 x 2: each expert has its own class, I = 1 bit whatever the total
    for total in (0.25, 1.0, 8.0):
        assert float(mutual_information_bits(torch.eye(2, dtype=torch.float64) * total / 2)) == pytest.approx(1.0)
    # the mutant at total 1/4: joint = diag(1/8) un-normalised, outer 1/64, I = 2 * 1/8 * log2 8 = 0.75 bits


def test_mutual_information_has_a_finite_gradient_when_a_cell_is_zero() -> None:
    """Killed: ``mutual_information_bits`` mutant 26 (``joint > 0`` -> ``joint >= 0``). The value is the same
    (``xlogy(0, 0) = 0``): the ``where`` keeps only the gradient finite, 0 / 0 -> NaN in every cell without it."""
    joint = torch.tensor([[0.5, 0.0], [0.0, 0.5]], dtype=torch.float64, requires_grad=True)
    mutual_information_bits(joint).backward()
    assert joint.grad is not None and torch.isfinite(joint.grad).all()
    # d I / d c_11 at diag(1/2), by hand (nats): the (1,1) term gives 1/2 ln 2 - 1/2, the (2,2) term -1/2 ln 2 + 1/2
    torch.testing.assert_close(joint.grad.diagonal(), torch.zeros(2, dtype=torch.float64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the histogram's device only shows on a second device")
def test_allocation_histogram_on_cuda() -> None:
    """Killed on a CUDA machine only: ``ExpertAllocation.update`` mutants 45 (``arange(..., device=None)``) and 47
    (the device argument dropped): the expert offsets made on the CPU cannot be added to CUDA bin indices."""
    allocation = ExpertAllocation(num_experts=2, num_classes=2, bins=4).to("cuda")
    gate = torch.tensor([[0.9, 0.1], [0.3, 0.7]], device="cuda")
    allocation.update(gate, torch.tensor([0, 1], device="cuda"), torch.tensor([0, 1], device="cuda"))
    # bins of width 1/4: expert 0 gets 0.9 -> bin 3, 0.3 -> bin 1; expert 1 gets 0.1 -> bin 0, 0.7 -> bin 2
    assert allocation.compute()["histogram"].tolist() == [[0, 1, 0, 1], [1, 0, 1, 0]]


# --- third run: routers (gmnn/nn/moe/routers.py) --------------------------------------------------------------------


def _identity_router(router: torch.nn.Module) -> torch.nn.Module:
    """The router's projection set to the identity (d_model = E), so its logits are its inputs."""
    with torch.no_grad():
        router.weight.copy_(torch.eye(router.num_experts))
    return router


def test_softmax_router_renormalises_underflowed_picks_in_log_space_over_experts() -> None:
    """Killed: ``SoftmaxTopKRouter.log_scores`` mutant 6 (``log_softmax(dim=-2)``: over the tokens). The log scores
    are read only where every picked probability underflows, here picked by a selection bias."""
    router = _identity_router(SoftmaxTopKRouter(3, 3, k=2, score_bias=True)).eval()
    router.selection_bias.copy_(torch.tensor([0.0, 2.0, 2.0]))
    # logits (0, -200, -201): softmax (1, e^-200, e^-201) = (1, 0, 0) in float32; the bias picks experts 1, 2.
    # Their weights, softmax of their log-softmax (-200, -201): (1, e^-1) / (1 + e^-1) = (0.7311, 0.2689).
    route = router(torch.tensor([[0.0, -200.0, -201.0]]))
    assert route.routing.selected.tolist() == [[1, 2]]
    e = math.exp(-1.0)
    torch.testing.assert_close(route.routing.weights, torch.tensor([[1 / (1 + e), e / (1 + e)]]))
    # over the one token instead (the mutant): log_softmax of a single value is 0, weights (0.5, 0.5)


def test_softmax_router_noise_is_noise_std_times_a_standard_normal() -> None:
    """Killed: ``SoftmaxTopKRouter.noise`` mutant 1 (``noise_std / randn``)."""
    router = SoftmaxTopKRouter(2, 3, k=1, noise_std=0.5).train()
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
    torch.manual_seed(0)
    scores, probs = router.scores(torch.zeros(2, 2), logits)
    torch.manual_seed(0)
    normal = torch.randn(2, 3)  # the same draws as the router's randn_like
    torch.testing.assert_close(scores, torch.softmax(logits + 0.5 * normal, dim=-1))
    torch.testing.assert_close(probs, torch.softmax(logits, dim=-1))  # the record's probabilities are clean


def test_softmax_router_is_noisy_exactly_when_noise_std_is_positive() -> None:
    """Killed: ``SoftmaxTopKRouter.noisy`` mutants 1 (``noise_std >= 0``: a noise-free router draws 0 * randn and
    uses up the random stream while training) and 2 (``noise_std > 1``: a std of 0.5 never added; also caught by
    the test above)."""
    assert not SoftmaxTopKRouter(2, 3, noise_std=0.0).noisy()
    assert SoftmaxTopKRouter(2, 3, noise_std=0.5).noisy()
    router = SoftmaxTopKRouter(2, 3, k=1).train()
    torch.manual_seed(0)
    router.scores(torch.zeros(1, 2), torch.zeros(1, 3))
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(1))  # no draw was taken


def test_noisy_router_noise_is_a_standard_normal_times_softplus() -> None:
    """Killed: ``NoisyTopKRouter.noise`` mutant 1 (``randn / softplus``). ``W_noise`` starts at 0: the std is
    softplus(0) = ln 2, the mutant's 1 / ln 2."""
    router = NoisyTopKRouter(2, 3, k=1).train()
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    torch.manual_seed(0)
    scores, _ = router.scores(torch.ones(1, 2), logits)
    torch.manual_seed(0)
    normal = torch.randn(1, 3)
    torch.testing.assert_close(scores, torch.softmax(logits + normal * math.log(2.0), dim=-1))


def test_ratio_at_exactly_the_smallest_normal_sum_is_the_plain_ratio() -> None:
    """Killed: ``_ratio_or_log_space`` mutant 10 (``total < tiny`` -> ``<=``): a sum of exactly the smallest normal
    float32 is still divided directly, giving the exact ratio (1, 0); the log-space branch gives the second value
    exp(-104 - log(tiny)) = e^-16.7 = 5.8e-8."""
    tiny = torch.finfo(torch.float32).tiny
    values = torch.tensor([[tiny, 0.0]])
    log_values = torch.tensor([[math.log(tiny), -104.0]])  # the second value underflowed to 0 (below 2^-149)
    assert _ratio_or_log_space(values, log_values).tolist() == [[1.0, 0.0]]


def test_group_limited_routing_scores_a_group_by_its_two_best_experts() -> None:
    """Killed: ``TokenChoiceRouter._select`` mutant 24 (``min(3, size)``: a group of three scored by all three)."""
    router = _identity_router(SigmoidRouter(6, 6, k=2, num_groups=2, topk_groups=1)).eval()
    # sigmoid scores: group A (0.9, 0.5, 0.01), group B (0.6, 0.6, 0.6).
    # Top-2 sums: A 1.4, B 1.2 -> A; top-3 sums (the mutant): A 1.41, B 1.8 -> B.
    logits = torch.tensor([[math.log(9.0), 0.0, -math.log(99.0), math.log(1.5), math.log(1.5), math.log(1.5)]])
    route = router(logits)
    assert route.routing.selected.tolist() == [[0, 1]]
    # renormalised over the two picked: 0.9 / 1.4, 0.5 / 1.4
    torch.testing.assert_close(route.routing.weights, torch.tensor([[0.9 / 1.4, 0.5 / 1.4]]))


def test_norm_min_clamps_each_tokens_own_sum_of_weights() -> None:
    """Killed: ``TokenChoiceRouter.forward`` mutants 28 (``sum(None)``: one sum over all tokens), 31 and 34
    (``keepdim`` dropped: token t's weights divided by the sums of other tokens) and 33 (``sum(-2)``: over tokens)."""
    router = _identity_router(SoftmaxTopKRouter(3, 3, k=2, norm_min=0.9)).eval()
    route = router(torch.tensor([[0.5, 0.3, 0.2], [0.8, 0.15, 0.05]]).log())
    assert route.routing.selected.tolist() == [[0, 1], [0, 1]]
    # token 0: picked 0.5 + 0.3 = 0.8, clamped to 0.9; token 1: 0.8 + 0.15 = 0.95
    torch.testing.assert_close(route.routing.weights, torch.tensor([[0.5 / 0.9, 0.3 / 0.9], [0.8 / 0.95, 0.15 / 0.95]]))


def test_update_bias_without_balance_rate_is_refused_with_its_message() -> None:
    """Killed: ``TokenChoiceRouter.update_bias`` mutants 1 (``balance_rate < 0``: rate 0 goes on, to an
    AttributeError), 3, 4, 5 (the message dropped or changed). (Run with its ``no_grad`` decorator removed, in a
    copy: mutmut does not mutate decorated functions.)"""
    with pytest.raises(RuntimeError, match=r"^update_bias needs balance_rate > 0$"):
        SoftmaxTopKRouter(2, 2, k=1).update_bias()


def test_top1_of_hand_made_records() -> None:
    """Killed: ``Routing.top1`` mutants 8 (``selected.shape[-2] == 0``: a record with no slots goes on to an argmax
    over no slots), 10 (``shape[-1] == 1``: a one-slot record falls back to the argmax of ``probs``) and 15 (ranked by
    ``probs`` though ``weights`` are recorded). (Run in a copy with ``top1``'s body moved to an undecorated method:
    mutmut does not mutate properties.)"""
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    # no slots: each token's argmax of probs
    assert Routing(probs=probs, selected=torch.zeros(2, 0, dtype=torch.long)).top1.tolist() == [0, 2]
    # one slot (a selection bias picked experts 1 and 0): the selected expert, not the argmax of probs
    one = Routing(probs=probs, selected=torch.tensor([[1], [0]]), weights=torch.tensor([[0.3], [0.1]]))
    assert one.top1.tolist() == [1, 0]
    # two slots whose weights rank them against their probabilities: the weights decide
    two = Routing(probs=probs, selected=torch.tensor([[0, 1], [2, 1]]), weights=torch.tensor([[0.2, 0.8], [0.4, 0.6]]))
    assert two.top1.tolist() == [1, 1]


def test_soft_moe_router_settings_and_initial_slot_embeddings() -> None:
    """Killed: ``SoftMoERouter.__init__`` mutants 1 (default ``slots=2``), 12 (``bias=True``: an unused bias parameter), 13, 17, 18 (the name
    ``slots`` in the error), 20 (``normalize`` recorded as False) and 23 (``phi`` drawn times sqrt(d_model))."""
    with pytest.raises(ValueError, match=r"^slots must be an integer >= 1, got 0$"):
        SoftMoERouter(4, 2, slots=0)
    assert SoftMoERouter(4, 2, normalize=True).normalize is True
    assert SoftMoERouter(4, 2).slots == 1  # one slot per expert by default (mutant 1: 2)
    torch.manual_seed(0)
    router = SoftMoERouter(16, 2, slots=3)
    assert sorted(name for name, _ in router.named_parameters()) == ["phi"]
    torch.manual_seed(0)
    torch.empty(2, 16).uniform_(-0.25, 0.25)  # the base class's projection, drawn and deleted first
    # phi ~ N(0, 1 / d_model): the same draws divided by sqrt(16) = 4
    torch.testing.assert_close(router.phi.data, torch.randn(16, 6) / 4)


# --- third run: regularizers (gmnn/nn/functional/regularizers.py) ---------------------------------------------------


def test_allocation_loss_divides_scores_by_the_temperature_and_averages_over_samples() -> None:
    """Killed: ``allocation_loss`` mutants 6 (``-scores * T``) and 11 (``.sum(None).mean()``: summed over the
    batch, not averaged)."""
    log_gate = torch.tensor([[0.75, 0.25], [0.75, 0.25]]).log()
    scores = torch.tensor([[0.0, 2 * math.log(3.0)], [0.0, 2 * math.log(3.0)]])
    # target softmax(-s / 2) = softmax(0, -ln 3) = (3/4, 1/4), the gate itself: the loss is its entropy
    # 3/4 ln(4/3) + 1/4 ln 4 = 0.562335 nats per sample, and the mean of two equal samples is the same
    # (the mutants: target softmax(0, -4 ln 3) = (81/82, 1/82), 0.2975; or the sum over samples, 1.1247)
    loss = allocation_loss(log_gate, scores, temperature=2.0)
    assert float(loss) == pytest.approx(0.75 * math.log(4 / 3) + 0.25 * math.log(4.0), rel=1e-6)


def test_ideal_gate_loss_targets_every_expert_even_when_the_last_ones_never_win() -> None:
    """Killed: ``ideal_gate_loss`` mutants 6 (``one_hot`` without the number of experts: as wide as the largest
    winner + 1), 9 (``argmin(-2)``: the best sample per expert) and 11 (``shape[-2]``: as many classes as samples)."""
    gate = torch.tensor([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]])
    expert_losses = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.4, 0.6]])  # winners: expert 0, expert 1
    # targets (1, 0, 0), (0, 1, 0); squared errors (.25 + .0625 + .0625) + (1 + 1 + 0) = 2.375 over 6 entries
    assert float(ideal_gate_loss(gate, expert_losses)) == pytest.approx(2.375 / 6, rel=1e-6)


def test_unbiased_importance_loss_divides_by_e_minus_one_and_is_zero_for_one_expert() -> None:
    """Killed: ``importance_loss`` mutants 31 (the mean^2 clamped at 1), 16, 21, 22 (``"unbiased"`` never matched), 18 (``correction = 2``),
    23 (``numel() >= 1``: NaN for one expert) and 24 (``numel() > 2``: population for two experts)."""
    gate = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # importance (2, 0): mean 1; population variance 1, unbiased (E - 1 = 1) variance 2
    assert float(importance_loss(gate, std="population")) == 1.0
    assert float(importance_loss(gate, std="unbiased")) == 2.0
    # one expert: a variance of one value, 0 with either divisor (no 0 / 0)
    assert float(importance_loss(torch.tensor([[1.0], [1.0]]), std="unbiased")) == 0.0
    # one sample, four experts (mutant 31, ``clamp_min(1.000000000001)``, leaves the mean^2 of 1/16 at 1):
    # importance (1, 0, 0, 0), mean 1/4, population variance 3/16 -> 3 = E - 1
    assert float(importance_loss(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))) == 3.0


def test_importance_loss_names_its_std_option_in_the_error() -> None:
    """Killed: ``importance_loss`` mutants 3, 9, 10 (the option's name in the error dropped or changed)."""
    with pytest.raises(ValueError, match=r"^importance_std must be one of \('population', 'unbiased'\), got 'biased'$"):
        importance_loss(torch.ones(2, 2), std="biased")


def test_load_balancing_loss_counts_top1_per_sample_over_every_expert() -> None:
    """Killed: ``load_balancing_loss`` mutants 12 (``one_hot`` without the number of experts: one column when
    expert 0 always wins, broadcast to all) and 15 (``argmax(-2)``: the best sample per expert)."""
    gate = torch.tensor([[0.6, 0.3, 0.1], [0.7, 0.2, 0.1]])
    # top-1: expert 0 for both samples, f = (1, 0, 0); mean gate P = (0.65, 0.25, 0.1): E * f . P = 3 * 0.65 = 1.95
    # (mutant 12: f broadcast to (1, 1, 1), 3; mutant 15: argmax per column (1, 0, 0), f = (2/3, 1/3, 0), 1.55)
    assert float(load_balancing_loss(gate)) == pytest.approx(1.95, rel=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the mask's device only shows on a second device")
def test_sequence_balance_loss_on_cuda_without_a_mask() -> None:
    """Killed on a CUDA machine only: ``sequence_balance_loss`` mutants 7 (``ones(..., device=None)``) and 10 (the
    device argument dropped): the all-true mask made on the CPU cannot index CUDA tensors."""
    probs = torch.tensor([[[0.5, 0.5], [0.5, 0.5]]], device="cuda")
    selected = torch.tensor([[[0], [1]]], device="cuda")
    # one sequence, one token per expert: f = 2 / (1 * 2) * (1, 1) = (1, 1), P = (0.5, 0.5): sum f P = 1
    assert float(sequence_balance_loss(probs, selected)) == 1.0


def test_prediction_class_cv_when_the_mean_class_mass_is_below_one() -> None:
    """Killed: ``prediction_class_cv`` mutant 10 (``clamp_min(1e-12)`` -> ``clamp_min(1.000000000001)``: the mean
    class mass B / C is below 1 when the batch has fewer samples than classes)."""
    # one sample predicting class 0: mass (1, 0), mean 1/2, unbiased variance 1/2 -> CV^2 = (1/2) / (1/4) = 2
    assert float(prediction_class_cv(torch.tensor([[1.0, 0.0]]))) == 2.0


def test_sequence_balance_loss_leaves_fully_masked_sequences_out_of_the_mean() -> None:
    """Killed: ``sequence_balance_loss`` mutants 79 (``tokens >= 0``: an empty sequence counted, the mean halved)
    and 82 (``per_sequence / counted``: 0 / 0 = NaN for it)."""
    probs = torch.tensor([[[0.75, 0.25], [0.5, 0.5]], [[0.5, 0.5], [0.5, 0.5]]])
    selected = torch.tensor([[[0], [0]], [[1], [1]]])
    mask = torch.tensor([[True, True], [False, False]])
    # sequence 0: both tokens to expert 0, f = E / (k T) * (2, 0) = (2, 0), P = (0.625, 0.375): f . P = 1.25;
    # sequence 1 has no counted token and is left out: the mean over one sequence is 1.25
    assert float(sequence_balance_loss(probs, selected, mask)) == 1.25


def test_router_z_loss_takes_the_log_sum_exp_over_experts() -> None:
    """Killed: ``router_z_loss`` mutant 8 (``logsumexp(dim=-2)``: over the tokens)."""
    # one token of four equal logits: logsumexp = ln 4, squared 1.921812 (the mutant: a logsumexp over one token, 0)
    assert float(router_z_loss(torch.zeros(1, 4))) == pytest.approx(math.log(4.0) ** 2, rel=1e-6)
    # two tokens, logits (0, 0) and (ln 3, ln 3): (ln 2)^2 and (ln 6)^2, mean 1.845591
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), math.log(3.0)]])
    assert float(router_z_loss(logits)) == pytest.approx((math.log(2.0) ** 2 + math.log(6.0) ** 2) / 2, rel=1e-6)


def test_sample_distances_names_its_metric_option_in_the_error() -> None:
    """Killed: ``sample_distances`` mutants 3, 9, 10 (the option's name in the error dropped or changed)."""
    with pytest.raises(ValueError, match=r"^metric must be one of \('euclidean', 'cosine'\), got 'manhattan'$"):
        sample_distances(torch.ones(2, 3), metric="manhattan")



def test_sample_distances_are_divided_by_a_largest_distance_below_one() -> None:
    """Killed: ``sample_distances`` mutant 36 (``max().clamp_min(1e-12)`` -> ``clamp_min(1.000000000001)``: a
    largest distance below 1 no longer scaled up to 1)."""
    # two points 0.5 apart: D = [[0, 0.5], [0.5, 0]] / 0.5 (the mutant leaves the 0.5)
    assert sample_distances(torch.tensor([[0.0], [0.5]])).tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_sample_similarity_different_term_for_gates_whose_rows_do_not_sum_to_one() -> None:
    """Killed: ``sample_similarity_terms`` mutants 17 (``totals_i / totals_j``) and 21 (``totals_i * totals_i``):
    both equal ``totals_i * totals_j`` when every row sums to 1; and 10 (``new_zeros(None)``: a TypeError for one
    expert)."""
    gate = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    distances = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    same, different = sample_similarity_terms(gate, distances)
    # shared = g g^T = [[2, 1], [1, 1]]: same = (1 + 1) / E = 1.
    # sum_{e != f} g_ie g_jf for the pairs (0, 1) and (1, 0): 1 and 1; different = 2 / (E^2 - E) / B^2 = 0.25
    # (mutant 17: totals (2, 1) give 2/1 - 1 + 1/2 - 1 = 0.5 -> 0.0625; mutant 21: 4 - 1 + 1 - 1 = 3 -> 0.375)
    assert (float(same), float(different)) == (1.0, 0.25)
    # one expert (mutant 10, ``new_zeros(None)``, raises here): shared = 1, same = sum D = 2; different = 0
    same, different = sample_similarity_terms(torch.ones(2, 1), distances)
    assert (float(same), float(different)) == (2.0, 0.0)


# --- third run: the Hugging Face conversion (gmnn/nn/moe/hf/) -------------------------------------------------------


# Block family of tests/nn/hf_blocks.py -> the routing family its converter names in its Spec.
_SPEC_FAMILY = {
    "Mixtral": "Mixtral", "MiniMax": "Mixtral", "Qwen2-MoE": "Qwen-MoE", "Qwen3-MoE": "Qwen-MoE",
    "Qwen3-MoE-norm": "Qwen-MoE", "Qwen3-Next": "Qwen-MoE", "OLMoE": "Qwen-MoE", "FlexOlmo": "Qwen-MoE",
    "Jamba": "Jamba", "GraniteMoE": "GraniteMoE", "GraniteMoE-Shared": "GraniteMoE", "GraniteMoE-Hybrid": "GraniteMoE",
    "Hunyuan-MoE": "Hunyuan-MoE", "ERNIE-4.5-MoE": "ERNIE-4.5-MoE", "DeepSeek-V2": "DeepSeek-V2",
    "DeepSeek-V2-greedy": "DeepSeek-V2", "DeepSeek-V3": "DeepSeek-V3", "GLM-4-MoE": "DeepSeek-V3", "dots1": "DeepSeek-V3",
}


@pytest.mark.parametrize("family", list(_SPEC_FAMILY))
def test_every_converter_names_its_routing_family(family: str) -> None:
    """Killed: ``unnormalised`` mutants 1, 9, 10, 11 (the family ``"Jamba"`` dropped or re-spelt), and the same
    mutation of every other converter's family string."""
    pytest.importorskip("transformers")
    from gmnn.nn.moe.hf import spec_of
    from tests.nn.hf_blocks import make

    assert spec_of(make(family)).family == _SPEC_FAMILY[family]


@pytest.mark.parametrize("k", [1, 3])
def test_ernie_converts_exactly_for_any_number_of_experts_per_token(k: int) -> None:
    """Killed: ``ernie`` mutants 13 (``normalize=None``: no renormalisation for k = 1, ERNIE divides the one weight by
    itself) and 18 (``top_k`` dropped: k = 2 whatever the block's)."""
    pytest.importorskip("transformers")
    from tests.nn.hf_blocks import make
    from tests.nn.test_hf_families import parity

    output_error, grad_error = parity(make("ERNIE-4.5-MoE", moe_k=k))
    assert output_error < 1e-5 and grad_error < 1e-5


def test_ernie_refuses_a_statics_bias_of_several_groups_by_shape() -> None:
    """Killed: ``ernie`` mutants 6, 7, 8 (the message dropped, or the block name or the bias shape replaced by
    ``None``)."""
    pytest.importorskip("transformers")
    from gmnn.nn.moe.hf import spec_of
    from tests.nn.hf_blocks import make

    block = make("ERNIE-4.5-MoE")
    block.gate.moe_statics.e_score_correction_bias = torch.nn.Parameter(torch.zeros(2, 6))
    message = "Ernie4_5_MoeSparseMoeBlock: moe_statics bias of shape (2, 6) (gmnn reads one group [1, E])"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        spec_of(block)


@pytest.mark.parametrize("overrides", [{"moe_norm_min": 0.9}, {"moe_num_shared_experts": 0}], ids=["norm_min", "no_shared"])
def test_ernie_converts_exactly_with_a_large_norm_min_and_without_shared_experts(overrides: dict) -> None:
    """Killed: ``ernie`` mutants 21 (``norm_min`` dropped: the top-2 probabilities of 6 experts sum to less than 0.9,
    ERNIE divides them by 0.9) and 27 (``shared_experts is None`` never true: a block without shared experts is read
    as having some)."""
    pytest.importorskip("transformers")
    from tests.nn.hf_blocks import make
    from tests.nn.test_hf_families import parity

    block = make("ERNIE-4.5-MoE", **overrides)
    if "moe_norm_min" in overrides:
        # the converted router's probabilities of the 15 tokens: the picked two sum to less than 0.9 somewhere
        assert float(block.gate.norm_min) == 0.9
    output_error, grad_error = parity(block)
    assert output_error < 1e-5 and grad_error < 1e-5


def test_ernie_names_itself_when_its_shared_expert_is_refused() -> None:
    """Killed: ``ernie`` mutants 30 and 34 (the owner passed to ``shared_mlp`` replaced by ``None`` / the name of
    ``None``)."""
    pytest.importorskip("transformers")
    from gmnn.nn.moe.hf import spec_of
    from tests.nn.hf_blocks import make

    block = make("ERNIE-4.5-MoE")  # use_bias=True: the shared expert's three projections have biases
    block.shared_experts.up_proj.bias = None
    message = "Ernie4_5_MoeSparseMoeBlock: shared expert with biases on some of its projections only"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        spec_of(block)


@pytest.mark.parametrize("k", [1, 3])
def test_hunyuan_converts_exactly_for_any_number_of_experts_per_token(k: int) -> None:
    """Killed: ``hunyuan`` mutants 6 and 10 (``normalize`` None or dropped: no renormalisation for k = 1) and 9
    (``top_k`` dropped: k = 2 whatever the block's)."""
    pytest.importorskip("transformers")
    from tests.nn.hf_blocks import make
    from tests.nn.test_hf_families import parity

    output_error, grad_error = parity(make("Hunyuan-MoE", moe_topk=k))
    assert output_error < 1e-5 and grad_error < 1e-5


def test_hunyuan_refusals_name_the_block() -> None:
    """Killed: ``hunyuan`` mutants 14, 15 (the biased-router message dropped or its owner ``None``) and 29, 33 (the
    owner passed to ``shared_mlp`` replaced by ``None`` / the name of ``None``)."""
    pytest.importorskip("transformers")
    from gmnn.nn.moe.hf import spec_of
    from tests.nn.hf_blocks import make

    block = make("Hunyuan-MoE")
    block.gate.wg.bias = torch.nn.Parameter(torch.zeros(block.gate.wg.out_features))
    with pytest.raises(ValueError, match=r"^HunYuanMoEV1Moe: router gate\.wg with a bias$"):
        spec_of(block)
    block = make("Hunyuan-MoE")
    block.shared_mlp.up_proj.bias = torch.nn.Parameter(torch.zeros(block.shared_mlp.up_proj.out_features))
    with pytest.raises(ValueError, match=r"^HunYuanMoEV1Moe: shared expert with biases on some of its projections only$"):
        spec_of(block)
