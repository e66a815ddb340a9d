"""How much of a label the router's input carries: a linear probe beside the router's own top-1 choice.

A router picks its top-1 expert as the argmax of a linear function of its input (softmax, sigmoid and
attention routers with learned keys alike), so a multinomial logistic regression fitted from the same
inputs to a per-token label (the source of a text, the class of a byte) is the read-out a router
could learn if the training pushed it to separate that label. The information its predictions carry
about the label on held-out tokens, I(probe; label), is the yardstick for I(top-1 expert; label):
when both are low the layer's input does not separate the label linearly, and no routing pressure
can make the experts specialise by it; when the probe is high and the router low, the router could
but does not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gmnn.analysis.capture import MODEL_LAYER, RoutingCapture, find_moe_layers
from gmnn.analysis.report import default_input, default_label
from gmnn.metrics.functional import entropy_bits, mutual_information_bits
from gmnn.validation import check_positive_int


@dataclass
class ProbeResult:
    """One layer's probe on held-out tokens (information in bits).

    Attributes:
        layer: The MoE layer's module name.
        tokens: Held-out tokens measured.
        accuracy: The probe's share of correctly predicted labels.
        probe_information: I(probe's prediction; label).
        router_information: I(router's top-1 expert; label) on the same tokens.
        label_entropy: H(label), the ceiling of both.
    """

    layer: str
    tokens: int
    accuracy: float
    probe_information: float
    router_information: float
    label_entropy: float


def router_inputs(model: nn.Module, dataloader: Iterable[Any], label_fn: Callable[[Any], Tensor] = default_label,
                  input_fn: Callable[[Any], Any] = default_input, max_batches: int | None = None,
                  ) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """Per MoE layer of ``model`` (eval mode, no gradients): its inputs ``[N, d]``, their labels ``[N]`` and the
    router's top-1 experts ``[N]`` (by weight) over the batches of ``dataloader``, on the CPU in float32.

    Memory grows with the tokens seen: bound it with ``max_batches``.
    """
    if max_batches is not None:
        check_positive_int("max_batches", max_batches)
    capture = RoutingCapture(model)
    names = [name for name in capture.layers if name != MODEL_LAYER]
    if not names:
        capture.remove()
        raise ValueError("the model has no token-level MoE layer to probe")
    seen: dict[str, Tensor] = {}
    handles = [capture.layers[name][0].register_forward_pre_hook(_keep_input(seen, name)) for name in names]
    found: dict[str, list[list[Tensor]]] = {name: [[], [], []] for name in names}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for index, batch in enumerate(dataloader):
                if max_batches is not None and index >= max_batches:
                    break
                inputs = input_fn(batch)
                model(inputs.to(device) if isinstance(inputs, Tensor) else inputs)
                labels = label_fn(batch).reshape(-1).cpu()
                for name in names:
                    features, routing = seen[name], capture.records[name]
                    if features.shape[0] != labels.numel():
                        raise ValueError(f"layer {name} routed {features.shape[0]} tokens for {labels.numel()} labels")
                    for store, value in zip(found[name], (features, labels, routing.top1.cpu())):
                        store.append(value)
                capture.clear()
    finally:
        for handle in handles:
            handle.remove()
        capture.remove()
        model.train(was_training)
    return {name: tuple(torch.cat(parts) for parts in found[name]) for name in names}


def _keep_input(store: dict[str, Tensor], name: str) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        hidden = args[0]
        store[name] = hidden.detach().reshape(-1, hidden.shape[-1]).float().cpu()
    return hook


def fit_linear_probe(features: Tensor, labels: Tensor, num_labels: int, weight_decay: float = 1e-4,
                     max_iter: int = 200) -> Callable[[Tensor], Tensor]:
    """A multinomial logistic regression from ``features [N, d]`` to ``labels [N]`` (values in [0, num_labels)),
    fitted full-batch with L-BFGS from zero weights (deterministic) on standardised features; returns the
    function giving the predicted labels of new features."""
    check_positive_int("num_labels", num_labels)
    check_positive_int("max_iter", max_iter)
    if labels.numel() != features.shape[0] or labels.numel() == 0:
        raise ValueError(f"labels must give one label per feature row ({features.shape[0]}), got {labels.numel()}")
    if int(labels.min()) < 0 or int(labels.max()) >= num_labels:
        raise ValueError(f"labels must lie in [0, {num_labels}), got [{int(labels.min())}, {int(labels.max())}]")
    features = features.double()
    mean, scale = features.mean(0), features.std(0).clamp_min(1e-8)
    inputs = (features - mean) / scale
    linear = nn.Linear(features.shape[1], num_labels).double()
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def loss() -> Tensor:
        optimizer.zero_grad()
        value = nn.functional.cross_entropy(linear(inputs), labels) + weight_decay * linear.weight.square().sum()
        value.backward()
        return value

    optimizer.step(loss)
    linear.requires_grad_(False)
    return lambda new: linear((new.double() - mean) / scale).argmax(-1)


def _information(first: Tensor, second: Tensor, rows: int, columns: int) -> float:
    counts = torch.bincount(first * columns + second, minlength=rows * columns).reshape(rows, columns)
    return float(mutual_information_bits(counts.double()))


def probe_report(model: nn.Module, train: Iterable[Any], held_out: Iterable[Any], num_labels: int,
                 label_fn: Callable[[Any], Tensor] = default_label, input_fn: Callable[[Any], Any] = default_input,
                 max_batches: int | None = None) -> list[ProbeResult]:
    """Fit a linear probe per MoE layer on ``train``'s router inputs (at most ``max_batches`` batches) and
    measure it beside the router on ``held_out``'s (all of them); see the module's description."""
    fitted = router_inputs(model, train, label_fn, input_fn, max_batches)
    measured = router_inputs(model, held_out, label_fn, input_fn)
    experts_of = {name: experts for name, (_, experts) in find_moe_layers(model).items()}
    results = []
    for name, (features, labels, _) in fitted.items():
        predict = fit_linear_probe(features, labels, num_labels)
        test_features, test_labels, experts = measured[name]
        predicted = predict(test_features)
        share = torch.bincount(test_labels, minlength=num_labels).double() / test_labels.numel()
        results.append(ProbeResult(
            layer=name, tokens=test_labels.numel(),
            accuracy=float((predicted == test_labels).double().mean()),
            probe_information=_information(predicted, test_labels, num_labels, num_labels),
            router_information=_information(experts, test_labels, experts_of[name], num_labels),
            label_entropy=float(entropy_bits(share)),
        ))
    return results
