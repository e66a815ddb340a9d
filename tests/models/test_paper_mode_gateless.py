"""Gate-less paper mode: GatelessMoE computes what the reference's ``moe_no_gate_model.py`` computes.

The hand set: 3 experts, 2 classes, expert i predicts EXPERTS[i] whatever the input. The reference
scores in bits (``helper/moe_models.entropy`` uses log2; its self-information is ``-log2 p(y)``) and
its noise is N(0, 1) in bits, so its temperature T is gmnn's ``T ln 2`` and its noise gmnn's
``allocation_noise = ln 2``. Its formulas are written out below on probabilities, as it computes them.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gmnn.models import GatelessMoE

EXPERTS = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]])
X, Y = torch.eye(2), torch.tensor([0, 1])
SMALL = dict(input_shape=[2], num_classes=2, num_experts=3, expert_hidden=[2])
LN2 = math.log(2)


def _hand_set(model: GatelessMoE) -> GatelessMoE:
    with torch.no_grad():
        for expert, probs in zip(model.experts.experts, EXPERTS):
            expert.head.weight.zero_()
            expert.head.bias.copy_(probs.log())
    return model


def reference_entropy_model(t_bits: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """moe_no_gate_entropy_model: p = softmin(entropy_bits / T); argmax output; stochastic_loss(cross_entropy)."""
    outputs = EXPERTS.expand(2, -1, -1)
    h = -(outputs * torch.log2(outputs)).sum(-1)
    p = F.softmin(h / t_bits, dim=1)
    output = outputs[torch.arange(2), p.argmax(1)]
    per_expert_ce = -torch.log(outputs[torch.arange(2), :, Y])  # [B, E]
    loss = torch.mean(-torch.log((p * torch.exp(-0.5 * per_expert_ce)).sum(1) + 1e-15))
    return p, output, loss


def test_the_entropy_model_weights_predicts_and_trains_as_the_reference() -> None:
    t_bits = 0.5
    model = _hand_set(GatelessMoE(allocation="entropy", objective="stochastic", prediction="argmax",
                                  temperature=t_bits * LN2, **SMALL)).train()
    out = model(X)
    p, output, loss = reference_entropy_model(t_bits)
    torch.testing.assert_close(out.gate_probs, p, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.log_probs.exp(), output, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.loss_terms(out, X, Y)["nll"], loss, atol=1e-6, rtol=0)
    # by hand: entropies 0.469, 0.881, 1 bit -> expert 0 predicts; and the loss is not the mixture's
    torch.testing.assert_close(out.log_probs.exp(), EXPERTS[[0, 0]])
    mixture = -torch.log((p * EXPERTS[:, Y].T).sum(1)).mean()
    assert abs(float(loss) - float(mixture)) > 0.05


def test_the_self_information_model_trains_only_the_chosen_expert_with_noise_of_one_bit() -> None:
    t_bits = 1.0
    model = _hand_set(GatelessMoE(allocation="loss", allocation_noise=LN2, objective="argmax_expert",
                                  temperature=t_bits * LN2, **SMALL)).train()
    out = model(X)
    torch.manual_seed(3)
    nll = model.loss_terms(out, X, Y)["nll"]
    # the reference: h = -log2 p_i(y) + N(0, 1); p = softmin(h / T); CE of the argmax expert's output
    torch.manual_seed(3)
    h = -torch.log2(EXPERTS[:, Y].T)
    h = h + torch.randn_like(h)
    chosen = F.softmin(h / t_bits, dim=1).argmax(1)
    expected = -torch.log(EXPERTS[chosen, Y]).mean()
    torch.testing.assert_close(nll, expected, atol=1e-6, rtol=0)
    nll.backward()
    heads = torch.stack([e.head.bias.grad.abs().sum() for e in model.experts.experts])
    assert set(torch.nonzero(heads).flatten().tolist()) == set(chosen.tolist())


def test_without_noise_the_lowest_loss_expert_alone_trains() -> None:
    model = _hand_set(GatelessMoE(allocation="loss", objective="argmax_expert", **SMALL)).train()
    out = model(X)
    nll = model.loss_terms(out, X, Y)["nll"]
    # sample A (y = 0): expert 0 (0.9); sample B (y = 1): expert 1 (0.7)
    torch.testing.assert_close(nll, -(math.log(0.9) + math.log(0.7)) / 2 * torch.ones(()), atol=1e-6, rtol=0)


def test_the_defaults_are_unchanged() -> None:
    model = _hand_set(GatelessMoE(allocation="loss", **SMALL)).train()
    out = model(X)
    w = F.softmin(-torch.log(EXPERTS[:, Y].T), dim=1)  # T = 1, per-sample NLL in nats
    torch.testing.assert_close(model.loss_terms(out, X, Y)["nll"], -torch.log((w * EXPERTS[:, Y].T).sum(1)).mean())
    h = -(EXPERTS * EXPERTS.log()).sum(-1)
    torch.testing.assert_close(out.log_probs.exp(), (F.softmin(h, 0)[:, None] * EXPERTS).sum(0).expand(2, -1))


def test_temperature_by_epoch_is_the_references_per_epoch_list() -> None:
    model = GatelessMoE(temperature_by_epoch=[10.0, 1.0, 0.01], **SMALL)
    assert model.temperature == 10.0
    temperatures = []
    for epoch in range(5):
        model.set_temperature(epoch)
        temperatures.append(model.temperature)
    assert temperatures == [10.0, 1.0, 0.01, 0.01, 0.01]


@pytest.mark.parametrize("kwargs, match", [
    ({"objective": "expectation"}, "objective"),
    ({"prediction": "sampled"}, "prediction"),
    ({"temperature_by_epoch": []}, "temperature_by_epoch"),
    ({"temperature_by_epoch": [1.0, 0.0]}, r"temperature_by_epoch\[1\]"),
])
def test_bad_gateless_paper_options_name_the_parameter(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GatelessMoE(**SMALL, **kwargs)
