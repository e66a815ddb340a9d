"""Composed configs: a protocol first, then method fragments; any other composition is refused with one line
saying the order to use, and every composition the project documents still parses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gmnn.cli import main
from gmnn.cli.fragments import check_config_order
from tests.documentation import documentation_text

ROOT = Path(__file__).resolve().parents[1]
ORDER = "--config configs/<dataset>/protocol.yaml --config configs/methods/<method>.yaml"
TOY, MNIST = "configs/toy/protocol.yaml", "configs/mnist/protocol.yaml"
REFUSED = {
    "two protocols": ([MNIST, TOY], "more than one config names a data module"),
    "a protocol and a complete config": ([TOY, "configs/toy/topk.yaml"], "more than one config names a data module"),
    "two complete configs": (["configs/toy/dense.yaml", "configs/toy/topk.yaml"], "more than one config names a data module"),
    "a fragment before its protocol": (["configs/methods/stochastic.yaml", TOY], "comes before configs/toy/protocol.yaml"),
    "a fragment before a complete config": (["configs/methods/importance.yaml", "configs/toy/dense.yaml"], "comes before"),
    "a fragment's model replaced by a later fragment": (
        [TOY, "configs/methods/stochastic.yaml", "configs/methods/top1_stochastic.yaml"],
        "replaces the model gmnn.models.StochasticMoE of configs/methods/stochastic.yaml with gmnn.models.TopKMoE",
    ),
}


def _args(configs: list[str], equals: bool = False) -> list[str]:
    if equals:
        return [f"--config={config}" for config in configs]
    return [arg for config in configs for arg in ("--config", config)]


@pytest.mark.parametrize("case", REFUSED, ids=lambda case: case.replace(" ", "-"))
def test_a_wrong_composition_is_refused_with_one_line_saying_the_order(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``gmnn fit`` as a user types it, from the source tree, with the shipped configs (only printed, not run)."""
    configs, words = REFUSED[case]
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *_args(configs), f"--trainer.default_root_dir={tmp_path}", "--print_config"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 1, captured.out[-300:]
    lines = [line for line in captured.err.strip().splitlines() if "GMNN_TRACEBACK" not in line]  # gmnn's usual hint
    assert len(lines) == 1 and words in lines[0] and ORDER in lines[0], captured.err


def test_the_refusal_reads_every_spelling_of_config() -> None:
    configs = ["configs/methods/stochastic.yaml", TOY]
    for args in (_args(configs), _args(configs, equals=True), ["-c", configs[0], "-c", configs[1]]):
        with pytest.raises(ValueError, match="comes before"):
            check_config_order([arg.replace("configs/", f"{ROOT}/configs/") for arg in args])


def _documented_compositions() -> list[list[str]]:
    """Every ``--config A --config B ...`` in the README, the docs, the scripts' notes and the configs' headers."""
    texts = [documentation_text(), *(p.read_text() for p in (ROOT / "configs").rglob("*.yaml")),
             *(p.read_text() for p in (ROOT / "scripts").glob("*.md"))]
    found = []
    for text in texts:
        for line in text.splitlines():
            configs = re.findall(r"--config[= ](\S+\.yaml)", line)
            if len(configs) > 1:
                found.append(configs)
    return found


def test_every_documented_composition_is_accepted() -> None:
    compositions = _documented_compositions()
    assert len(compositions) >= 20  # the docs' method demos (docs/training-methods.md) and the configs' own headers
    for configs in compositions:
        check_config_order(_args([str(ROOT / config) for config in configs]))


@pytest.mark.parametrize("extra", [[], ["configs/methods/dense.yaml"]], ids=["protocol-method", "protocol-method-same-model"])
def test_a_protocol_then_methods_is_accepted(extra: list[str]) -> None:
    """Later fragments may add options to the same model class; a complete config may take a fragment after it."""
    check_config_order(_args([str(ROOT / c) for c in [TOY, "configs/methods/importance.yaml", *extra]]))
    check_config_order(_args([str(ROOT / c) for c in ["configs/toy/dense.yaml", "configs/methods/stochastic.yaml"]]))
    check_config_order(_args([str(ROOT / "configs/methods/importance.yaml")]) + ["--data=gmnn.data.ToyDataModule"])
