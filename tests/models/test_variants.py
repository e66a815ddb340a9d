"""Every MoE variant: output contract, gradients, errors, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gmnn.models import AttentionGateMoE, DenseMoE, ProductOfExperts, TopKMoE
from gmnn.nn.mixture.output import MoEOutput
from tests.conftest import tiny_trainer

COMMON = dict(input_shape=[2], num_classes=3, num_experts=4, expert_hidden=[8], gate_hidden=[8])
VARIANTS = {
    "dense": lambda: DenseMoE(**COMMON),
    "top1": lambda: TopKMoE(k=1, **COMMON),
    "top2": lambda: TopKMoE(k=2, **COMMON),
    "top2_renormalize": lambda: TopKMoE(k=2, gate_gradient="renormalize", **COMMON),
    "product": lambda: ProductOfExperts(**COMMON),
    "plain_product": lambda: ProductOfExperts(gated=False, **COMMON),
    "attention": lambda: AttentionGateMoE(**COMMON),
    "attention_top1": lambda: AttentionGateMoE(k=1, **COMMON),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_contract(name: str) -> None:
    model = VARIANTS[name]()
    x = torch.randn(6, 2)
    out = model(x)
    assert isinstance(out, MoEOutput)
    assert out.log_probs.shape == (6, 3) and out.gate_probs.shape == (6, 4)
    torch.testing.assert_close(out.log_probs.exp().sum(-1), torch.ones(6))
    torch.testing.assert_close(out.gate_probs.sum(-1), torch.ones(6))
    if isinstance(model, TopKMoE):
        assert out.selected.shape == (6, model.k) and out.expert_log_probs is None
        assert torch.equal(out.selected[:, 0], out.chosen_expert)
    else:
        assert out.expert_log_probs.shape == (6, 4, 3)
    every_expert = torch.log_softmax(model.experts(x)[0], -1)
    expected = every_expert[torch.arange(6), out.gate_probs.argmax(-1)]
    torch.testing.assert_close(out.chosen_expert_log_probs(), expected, atol=1e-5, rtol=1e-5)


def _grad_norm(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", VARIANTS)
def test_backward_reaches_gate_and_routed_experts(name: str) -> None:
    model = VARIANTS[name]()
    model.train()
    x, y = torch.randn(16, 2), torch.randint(0, 3, (16,))
    out = model(x)
    model.loss_terms(out, x, y)["nll"].backward()
    if model.gate is not None:
        assert _grad_norm(model.gate) > 0, "the gate received no gradient"
    routed = set(range(4)) if out.selected is None else set(out.selected.flatten().tolist())
    for e in range(4):
        norm = _grad_norm(model.experts[e])
        assert (norm > 0) == (e in routed), f"expert {e}: routed={e in routed}, grad={norm}"


def test_top1_gate_gradient_favours_the_expert_better_than_chance() -> None:
    model = TopKMoE(k=1, **COMMON)
    model.train()
    x = torch.randn(4, 2)
    out = model(x)
    y = out.log_probs.argmax(-1)  # labels the chosen expert predicts better than chance
    (grad,) = torch.autograd.grad(model.loss_terms(out, x, y)["nll"], out.gate_logits)
    chosen_grad = grad.gather(1, out.selected)
    assert (chosen_grad < 0).all(), "descent must raise the chosen expert's gate logit"


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: TopKMoE(k=0, **COMMON), "k must be"),
        (lambda: TopKMoE(k=5, **COMMON), "k must be"),
        (lambda: TopKMoE(k=1, gate_gradient="renormalize", **COMMON), "gate_gradient"),
        (lambda: TopKMoE(k=2, gate_gradient="straight", **COMMON), "gate_gradient"),
        (lambda: DenseMoE(**{**COMMON, "num_experts": 0}), "num_experts"),
        (lambda: DenseMoE(**{**COMMON, "temperature": 0.0}), "temperature"),
        (lambda: DenseMoE(**{**COMMON, "temperature": -1.0}), "temperature"),
        (lambda: DenseMoE(**{**COMMON, "expert": "transformer"}), "expert must be one of"),
        (lambda: DenseMoE(**{**COMMON, "gate": "tree"}), "gate must be one of"),
        (lambda: DenseMoE(**{**COMMON, "num_classes": 1}), "num_classes"),
        (lambda: AttentionGateMoE(k=9, **COMMON), "k must be"),
    ],
)
def test_bad_arguments_fail_at_construction(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("shape", [(4, 3), (4, 2, 1), (2,)])
def test_wrong_input_shape_is_a_clear_error(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"input must have shape \[batch, 2\]"):
        DenseMoE(**COMMON)(torch.randn(*shape))


def test_labels_out_of_range_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes=3\)"):
        DenseMoE(**COMMON).check_labels(torch.tensor([0, 3]))


@pytest.mark.parametrize("name", ["dense", "top2", "product", "attention"])
def test_checkpoint_round_trip_gives_identical_predictions(name: str, tmp_path: Path) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    model = VARIANTS[name]()
    data = DataLoader(TensorDataset(torch.randn(32, 2), torch.randint(0, 3, (32,))), batch_size=16)
    trainer = tiny_trainer(max_epochs=1)
    trainer.fit(model, data)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = type(model).load_from_checkpoint(path).eval()
    model.eval()
    x = torch.randn(8, 2)
    torch.testing.assert_close(loaded(x).log_probs, model(x).log_probs)
    assert loaded.hparams == model.hparams


@pytest.mark.parametrize("variant", [DenseMoE, ProductOfExperts, AttentionGateMoE])
def test_the_paper_conv_model_shares_the_first_convolution_only_where_the_gate_allows(
    variant: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Conv experts + conv gate: one first convolution (Experts.forward_with_gate) unless the variant
    scores experts its own way (gate_logits: the attention gate reads the experts' hidden layers, the
    product of experts may have no gate); either way the outputs and gradients equal separate passes."""
    from gmnn.nn.mixture.experts import Experts

    torch.manual_seed(0)
    model = variant(input_shape=[1, 12, 12], num_classes=3, num_experts=3, expert="conv", expert_hidden=[4, 5],
                    gate="conv", gate_hidden=[6, 5])
    x, y = torch.randn(6, 1, 12, 12), torch.randint(0, 3, (6,))
    shared = []
    original = Experts.forward_with_gate
    monkeypatch.setattr(Experts, "forward_with_gate", lambda *a: shared.append(1) or original(*a))
    out = model(x)
    assert bool(shared) == (variant is DenseMoE)
    grads = torch.autograd.grad(torch.nn.functional.nll_loss(out.log_probs, y), list(model.parameters()))
    monkeypatch.setattr(Experts, "forward_with_gate", lambda *a: None)  # separate passes
    separate = model(x)
    torch.testing.assert_close(out.log_probs, separate.log_probs, atol=1e-5, rtol=1e-5)
    want = torch.autograd.grad(torch.nn.functional.nll_loss(separate.log_probs, y), list(model.parameters()))
    for a, b in zip(grads, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
