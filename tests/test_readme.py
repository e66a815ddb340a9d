"""The documentation's examples run as written and do what the text says.

The blocks and commands live in README.md and the docs pages (tests/documentation.py reads them together);
the README itself names only commands that a test runs (``test_the_readme_names_only_tested_commands``).
"""

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
from tests.documentation import documentation_text

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = documentation_text()  # README.md and every docs page


def _block(tag: str) -> str:
    match = re.search(rf"<!-- readme-test: {tag} -->\n```python\n(.*?)```", DOCS, re.S)
    assert match, f"neither README nor docs have a block tagged {tag}"
    return match.group(1)


def _python_usage() -> str:
    match = re.search(r"## Using gmnn from Python\n\n```python\n(.*?)```", DOCS, re.S)
    assert match, "neither README nor docs have a Python block under '## Using gmnn from Python'"
    return match.group(1)


def _mixture_float64(gate_probs: torch.Tensor, expert_log_probs: torch.Tensor) -> torch.Tensor:
    """log sum_i g_i p_i(y|x), by hand in float64."""
    return (gate_probs.double().unsqueeze(-1) * expert_log_probs.double().exp()).sum(1).log()


def test_subclassing_example_swaps_the_expert_and_trains(tmp_path: Path) -> None:
    namespace: dict = {}
    exec(compile(_block("subclassing"), "docs", "exec"), namespace)
    model = namespace["model"]
    assert [type(e).__name__ for e in model.experts.experts] == ["TanhExpert"] * 3
    x = torch.randn(64, 2)
    y = (x.sum(1) > 0).long()
    with torch.no_grad():  # the experts are the docs': tanh(W1 x + b1) -> W2 h + b2
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


def test_the_process_settings_block_installs_the_logging_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytorch_lightning.trainer.connectors.logger_connector.result import _ResultMetric

    lightnings = getattr(_ResultMetric.to, "__wrapped_to__", _ResultMetric.to)
    monkeypatch.setattr(_ResultMetric, "to", lightnings)  # as before any make_cli of this process; restored after
    exec(_block("process-settings"), {})
    assert _ResultMetric.to.__wrapped_to__ is lightnings


def test_python_usage_example_gives_the_mixture_and_loads_a_checkpoint(tmp_path: Path) -> None:
    block = _python_usage()
    namespace: dict = {}
    exec(compile(block, "docs", "exec"), namespace)
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
    exec(compile(_block("paper-mode"), "docs", "exec"), namespace)
    paper, top1 = namespace["paper"], namespace["top1"]
    assert paper.hparams.objective == "softmax_of_mixture" and paper.hparams.importance_std == "unbiased"
    assert top1.train_experts == "all"
    out = namespace["out"]
    mixture = (out.gate_probs.unsqueeze(-1) * out.expert_log_probs.exp()).sum(1)
    torch.testing.assert_close(out.log_probs, torch.log_softmax(mixture, dim=-1))
    assert "1.461 nats" in capsys.readouterr().out
    assert math.isclose(float(namespace["floor"]), math.log(1 + 9 / math.e), rel_tol=1e-6)


def _bash_commands(text: str, refused: bool = False) -> list[list[str]]:
    """A Markdown text's shell commands (``gmnn`` and ``python scripts/...``), continuation lines joined, braces expanded.

    A command commented ``# refused: ...`` shows what gmnn refuses: only those with ``refused=True``, else the others.
    """
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line, _, comment = (part.strip() for part in line.partition("  #"))
            if line.startswith(("gmnn ", "python scripts/")) and comment.startswith("refused") == refused:
                words = []
                for word in line.split():
                    match = re.fullmatch(r"(.*)\{([^}]*,[^}]*)\}(.*)", word)
                    words += [f"{match[1]}{choice}{match[3]}" for choice in match[2].split(",")] if match else [word]
                commands.append(words)
    return commands


def test_every_config_the_documentation_names_exists_and_no_fragment_runs_alone() -> None:
    from gmnn.cli.fragments import check_not_fragments_alone

    commands = _bash_commands(DOCS)
    paths = [w for c in commands for w in c if re.fullmatch(r"configs/\S+\.yaml", w)]
    assert len(paths) > 40 and "configs/methods/importance.yaml" in paths and "configs/mnist/protocol.yaml" in paths
    assert [p for p in paths if not list(ROOT.glob(p))] == []  # a glob (configs/paper/mnist/*.yaml) matches files
    for command in commands:
        if command[:2] in (["gmnn", "fit"], ["gmnn", "test"], ["gmnn", "predict"]):
            check_not_fragments_alone([str(ROOT / w) if w.startswith("configs/") else w for w in command[2:]])
    for command in _bash_commands(DOCS, refused=True):  # docs/configuration.md: a fragment alone, refused
        with pytest.raises(ValueError, match="needs a protocol first"):
            check_not_fragments_alone([str(ROOT / w) if w.startswith("configs/") else w for w in command[2:]])


# Every command in README.md's bash blocks, and the tests that run it as written.
README_COMMANDS = {
    "pip install -e . && gmnn fit --config configs/toy/dense.yaml": [
        "tests/test_cli.py::test_the_readme_first_command_prints_no_warning",  # the command, a fresh process
        "tests/test_first_run.py::test_a_short_first_run_gives_each_expert_its_own_classes",  # what it trains
    ],
    'pip install -e ".[dev]" && python -m pytest -q': [".ci/run"],  # CI runs exactly this
    'pip install -e ".[docs]" && mkdocs serve': ["tests/test_docs.py::test_mkdocs_serve_serves_the_site"],
    "mkdocs build --strict": ["tests/test_docs.py::test_every_example_is_rendered_with_its_outputs"],  # its fixture
}


def test_the_readme_names_only_tested_commands() -> None:
    found = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if line and not line.startswith("#"):
                found.append(line)
    assert found == list(README_COMMANDS)
    for runners in README_COMMANDS.values():
        for runner in runners:
            path, _, test = runner.partition("::")
            assert test == "" or f"def {test}(" in (ROOT / path).read_text(), runner
    ci = (ROOT / ".ci" / "run").read_text()  # .ci/run: the README's test command, as python3
    assert '\npython3 -m pip install -e ".[dev]"\npython3 -m pytest -q\n' in ci


def test_the_readme_links_and_picture_exist() -> None:
    """mkdocs checks the docs pages' links; the README's relative links and its figure are checked here."""
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert "docs/images/dense_regions.png" in local and "docs/getting-started.md" in local
    assert [t for t in local if not (ROOT / t).exists()] == []
    for target in re.findall(r"\]\((docs/[\w-]+\.md)#([\w-]+)\)", README):
        page, anchor = target
        headings = re.findall(r"^#+ (.+)$", (ROOT / page).read_text(), re.M)
        assert anchor in [re.sub(r"[^\w\s-]", "", h).strip().lower().replace(" ", "-") for h in headings], target
