"""The README's examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from tests.conftest import tiny_trainer

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _block(tag: str) -> str:
    match = re.search(rf"<!-- readme-test: {tag} -->\n```python\n(.*?)```", README, re.S)
    assert match, f"README has no block tagged {tag}"
    return match.group(1)


def test_subclassing_example_swaps_the_expert_and_trains(tmp_path: Path) -> None:
    namespace: dict = {}
    exec(compile(_block("subclassing"), "README.md", "exec"), namespace)
    model = namespace["model"]
    assert all(isinstance(e.body[1], torch.nn.Tanh) for e in model.experts.experts)
    x, y = torch.randn(64, 2), torch.randint(0, 2, (64,))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    before = [p.detach().clone() for p in model.experts.parameters()]
    tiny_trainer(max_epochs=1).fit(model, data)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.experts.parameters()))
    assert model(x).log_probs.shape == (64, 2)


def test_python_usage_example_runs() -> None:
    block = re.search(r"## Using gmnn from Python\n\n```python\n(.*?)```", README, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["out"].expert_log_probs.shape == (8, 4, 2)
