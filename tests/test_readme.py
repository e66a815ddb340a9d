"""The README's examples run as written and do what the text says."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest
import torch

from gmnn.cli import make_cli
from gmnn.models import MoEModule
from tests.conftest import tiny_trainer

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _block(tag: str) -> str:
    match = re.search(rf"<!-- readme-test: {tag} -->\n```python\n(.*?)```", README, re.S)
    assert match, f"README has no block tagged {tag}"
    return match.group(1)


def _python_usage() -> str:
    match = re.search(r"## Using gmnn from Python\n\n```python\n(.*?)```", README, re.S)
    assert match, "README has no Python block under '## Using gmnn from Python'"
    return match.group(1)


def _mixture_float64(gate_probs: torch.Tensor, expert_log_probs: torch.Tensor) -> torch.Tensor:
    """log sum_i g_i p_i(y|x), by hand in float64."""
    return (gate_probs.double().unsqueeze(-1) * expert_log_probs.double().exp()).sum(1).log()


def test_subclassing_example_swaps_the_expert_and_trains(tmp_path: Path) -> None:
    namespace: dict = {}
    exec(compile(_block("subclassing"), "README.md", "exec"), namespace)
    model = namespace["model"]
    assert [type(e).__name__ for e in model.experts.experts] == ["TanhExpert"] * 3
    x = torch.randn(64, 2)
    y = (x.sum(1) > 0).long()
    with torch.no_grad():  # the experts are the README's: tanh(W1 x + b1) -> W2 h + b2
        out = model(x)
        for e, expert in enumerate(model.experts.experts):
            first, head = expert.body[0], expert.head
            logits = torch.tanh(x.double() @ first.weight.double().T + first.bias.double()) @ head.weight.double().T
            expected = torch.log_softmax(logits + head.bias.double(), -1)
            torch.testing.assert_close(out.expert_log_probs[:, e].double(), expected, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(out.log_probs.double(), _mixture_float64(out.gate_probs, out.expert_log_probs),
                                   atol=1e-6, rtol=1e-6)
        loss_before = torch.nn.functional.nll_loss(out.log_probs, y)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    tiny_trainer(max_epochs=5).fit(model, data)
    with torch.no_grad():
        assert torch.nn.functional.nll_loss(model(x).log_probs, y) < loss_before - 0.02  # 0.696 -> 0.611


def test_subclass_runs_from_yaml_by_class_path_and_reloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mypackage.py").write_text(_block("subclassing").split("\nmodel = ")[0])  # "in an importable module"
    monkeypatch.syspath_prepend(str(tmp_path))
    cli = make_cli(
        ["fit", "--config", str(ROOT / "configs/toy/dense.yaml"), "--model.class_path=mypackage.TanhMoE",
         "--trainer.max_epochs=1", "--data.init_args.num_samples=300", f"--trainer.logger.init_args.save_dir={tmp_path}"]
    )
    assert type(cli.model).__name__ == "TanhMoE" and cli.model.num_experts == 4
    assert [type(e).__name__ for e in cli.model.experts.experts] == ["TanhExpert"] * 4
    reloaded = MoEModule.load_from_checkpoint(tmp_path / "gmnn" / "version_0" / "checkpoints" / "last.ckpt")
    assert type(reloaded) is type(cli.model)
    x = torch.randn(8, 2)
    torch.testing.assert_close(reloaded.eval()(x).log_probs, cli.model.eval()(x).log_probs)
    sys.modules.pop("mypackage", None)


def test_python_usage_example_gives_the_mixture_and_loads_a_checkpoint(tmp_path: Path) -> None:
    block = _python_usage()
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    model, out = namespace["model"], namespace["out"]
    assert out.log_probs.shape == (8, 2) and out.gate_probs.shape == (8, 4) and out.expert_log_probs.shape == (8, 4, 2)
    torch.testing.assert_close(out.gate_probs.sum(-1), torch.ones(8))
    torch.testing.assert_close(out.log_probs.double(), _mixture_float64(out.gate_probs, out.expert_log_probs),
                               atol=1e-6, rtol=1e-6)
    # the commented line: load_from_checkpoint of any variant, here a checkpoint of this model
    (line,) = [line for line in block.splitlines() if "load_from_checkpoint" in line]
    path = tmp_path / "last.ckpt"
    trainer = tiny_trainer(max_epochs=1)
    trainer.fit(model, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 2), torch.randint(0, 2, (16,)))))
    trainer.save_checkpoint(path)
    code = re.sub(r'"[^"]*\.ckpt"', repr(str(path)), line.lstrip("# ").split("  #")[0])
    exec(code, namespace)
    loaded = namespace["model"]
    assert type(loaded).__name__ == "DenseMoE" and loaded is not model
    x = torch.randn(5, 2)
    torch.testing.assert_close(loaded.eval()(x).log_probs, model.eval()(x).log_probs)


def test_paper_mode_example_builds_the_options_and_states_the_loss_floor(capsys) -> None:
    namespace: dict = {}
    exec(compile(_block("paper-mode"), "README.md", "exec"), namespace)
    paper, top1 = namespace["paper"], namespace["top1"]
    assert paper.hparams.objective == "softmax_of_mixture" and paper.hparams.importance_std == "unbiased"
    assert top1.train_experts == "all"
    out = namespace["out"]
    mixture = (out.gate_probs.unsqueeze(-1) * out.expert_log_probs.exp()).sum(1)
    torch.testing.assert_close(out.log_probs, torch.log_softmax(mixture, dim=-1))
    assert "1.461 nats" in capsys.readouterr().out
    assert math.isclose(float(namespace["floor"]), math.log(1 + 9 / math.e), rel_tol=1e-6)


def _bash_commands(text: str) -> list[list[str]]:
    """The README's shell commands (``gmnn`` and ``python scripts/...``), continuation lines joined, braces expanded."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith(("gmnn ", "python scripts/")):
                words = []
                for word in line.split():
                    match = re.fullmatch(r"(.*)\{([^}]*,[^}]*)\}(.*)", word)
                    words += [f"{match[1]}{choice}{match[3]}" for choice in match[2].split(",")] if match else [word]
                commands.append(words)
    return commands


def test_every_config_the_readme_names_exists_and_no_fragment_runs_alone() -> None:
    from gmnn.cli.fragments import check_not_fragments_alone

    commands = _bash_commands(README)
    paths = [w for c in commands for w in c if re.fullmatch(r"configs/\S+\.yaml", w)]
    assert len(paths) > 40 and "configs/methods/importance.yaml" in paths and "configs/mnist/protocol.yaml" in paths
    assert [p for p in paths if not list(ROOT.glob(p))] == []  # a glob (configs/paper/mnist/*.yaml) matches files
    for command in commands:
        if command[:2] in (["gmnn", "fit"], ["gmnn", "test"], ["gmnn", "predict"]):
            check_not_fragments_alone([str(ROOT / w) if w.startswith("configs/") else w for w in command[2:]])
