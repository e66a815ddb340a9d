"""Break the package on purpose, once per mutation, and check that the tests notice.

Each mutation replaces one exact string in one file of a temporary copy of the
repository (``shutil.copytree``, without ``.git`` and run folders) and runs the
test files that should catch it, with ``PYTHONPATH`` pointing at the copy. A
mutation is *caught* when pytest fails, *survived* when it passes. A target
string that is not found exactly once is an error (the script never rots
silently: ``tests/test_mutation_check.py`` checks every target against the
current source).

    python scripts/mutation_check.py                # every mutation, its own test files
    python scripts/mutation_check.py --list         # name, file, tests of each mutation
    python scripts/mutation_check.py --only NAME    # one mutation (repeatable)
    python scripts/mutation_check.py --all          # the whole suite per mutation (slow)

Tests that fail before any mutation (the baseline run) cannot catch anything: they are listed and
deselected from every mutation's run. A mutation whose tests are all deselected is *untested*.

Exit status: 0 when every mutation was caught, 1 when one survived (or was untested), 2 on an error.
"""

from __future__ import annotations

import argparse
import os
import py_compile
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIPPED = {".git", "runs", "lightning_logs", "__pycache__", ".pytest_cache", "build", "dist", "mutants", "site"}


def _ignored(folder: str, names: list[str]) -> set[str]:
    """What the copy leaves out: version control, run folders, caches; the datasets folder at the top only."""
    top = Path(folder).resolve() == ROOT
    return {n for n in names if n in SKIPPED or n.endswith((".egg-info", ".ckpt")) or (top and n == "data")}


@dataclass(frozen=True)
class Mutation:
    """Replace ``target`` (which must occur exactly once) by ``replacement`` in ``path``; ``tests`` should fail."""

    name: str
    path: str
    target: str
    replacement: str
    tests: tuple[str, ...]
    what: str

    def source(self, root: Path = ROOT) -> str:
        """The text of ``path`` under ``root``; ``MutationError`` unless ``target`` occurs exactly once."""
        file = root / self.path
        text = file.read_text() if file.is_file() else ""
        count = text.count(self.target)
        if count != 1:
            raise MutationError(
                f"mutation {self.name!r}: its target string occurs {count} times in {self.path} (must be once); "
                f"the code changed: update MUTATIONS in scripts/mutation_check.py.\ntarget: {self.target!r}"
            )
        return text

    def apply(self, root: Path) -> None:
        """Mutate the copy under ``root`` in place."""
        file = root / self.path
        file.write_text(self.source(root).replace(self.target, self.replacement))
        try:
            py_compile.compile(str(file), doraise=True)
        except py_compile.PyCompileError as error:
            raise MutationError(f"mutation {self.name!r} does not compile: {error}") from None


class MutationError(RuntimeError):
    """A mutation that cannot be applied (target missing or ambiguous, or the result does not compile)."""


MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "metric_mutual_information_in_nats", "gmnn/metrics/functional.py",
        "return (torch.special.xlogy(joint, ratio).sum() / LN2).float()",
        "return (torch.special.xlogy(joint, ratio).sum()).float()",
        ("tests/test_metrics.py",),
        "mutual information off by a factor ln 2 (nats, not bits)",
    ),
    Mutation(
        "metric_sample_entropy_halved", "gmnn/metrics/decomposition.py",
        "return (self.entropy_sum / self.total.clamp_min(1)).float()",
        "return (self.entropy_sum / self.total.clamp_min(1) / 2).float()",
        ("tests/test_metrics.py",),
        "sample entropy off by a factor 2",
    ),
    Mutation(
        "mixture_ignores_gate", "gmnn/nn/functional/combine.py",
        "return torch.logsumexp(log_gate.unsqueeze(-1) + expert_log_probs, dim=1)",
        "return torch.logsumexp(expert_log_probs, dim=1) - math.log(expert_log_probs.shape[1])",
        ("tests/nn/test_combine.py", "tests/models/test_gradients.py"),
        "the dense mixture weights every expert equally, whatever the gate says",
    ),
    Mutation(
        "topk_not_renormalised", "gmnn/nn/functional/combine.py",
        "return sparse_mixture(torch.log_softmax(log_selected, dim=-1), selected_log_probs)",
        "return sparse_mixture(log_selected, selected_log_probs)",
        ("tests/models/test_topk.py",),
        "the inference top-k mixture keeps the raw gate weights of the k experts (not a distribution)",
    ),
    Mutation(
        "logged_mi_uses_labels", "gmnn/models/base.py",
        "self.decomposition[stage].update_from(out.gate_probs, y, predictions)",
        "self.decomposition[stage].update_from(out.gate_probs, y, y)",
        ("tests/test_metrics.py",),
        "the logged mutual information pairs the expert with the label, not with its prediction",
    ),
    Mutation(
        "topk_gate_detached", "gmnn/models/topk.py",
        "log_gate = softmax_routing(gate_logits, self.temperature)\n        _, indices",
        "log_gate = softmax_routing(gate_logits.detach(), self.temperature)\n        _, indices",
        ("tests/models/test_gradients.py",),
        "TopKMoE's gate weights are detached: the task loss never trains the gate",
    ),
    Mutation(
        "attention_gate_detached", "gmnn/models/attention.py",
        "return self.attention(self.gate(x)[0], expert_hidden)",
        "return self.attention(self.gate(x)[0].detach(), expert_hidden)",
        ("tests/models/test_gradients.py",),
        "the attention gate's query is detached: the gate network never learns",
    ),
    Mutation(
        "moe_layer_router_weights_detached", "gmnn/nn/moe/routers.py",
        "weights = scores.gather(-1, selected)\n",
        "weights = scores.gather(-1, selected).detach()\n",
        ("tests/models/test_gradients.py", "tests/nn/test_moe_layer.py", "tests/nn/test_routers.py"),
        "MoELayer's routing weights are detached: the router learns only from the aux loss",
    ),
    Mutation(
        "predict_ignores_the_model", "gmnn/models/base.py",
        '"prediction": probs.argmax(-1)',
        '"prediction": probs.argmin(-1)',
        ("tests/models/test_predict.py",),
        "predict_step's prediction is not the most probable class",
    ),
    Mutation(
        "loop_experts_wrong_order", "gmnn/nn/mixture/experts.py",
        "outputs = [expert(rows) for expert, rows in zip(self.experts, x)]",
        "outputs = [expert(rows) for expert, rows in zip(self.experts, x.flip(0))]",
        ("tests/nn/test_experts.py",),
        "the per-expert loop fallback gives expert e another expert's rows",
    ),
    Mutation(
        "training_ascends_the_loss", "gmnn/models/base.py",
        "loss = torch.stack(list(terms.values())).sum()\n        if stage == \"train\":",
        "loss = -torch.stack(list(terms.values())).sum()\n        if stage == \"train\":",
        ("tests/data/test_experiment_configs.py",),
        "the training step maximises the loss",
    ),
    Mutation(
        "regularizers_ignored", "gmnn/models/base.py",
        "if self.training and self.regularizer_weights:\n            terms.update(self.regularizer_terms(out, x, y))",
        "if False:\n            terms.update(self.regularizer_terms(out, x, y))",
        ("tests/models/test_method_configs.py",),
        "the configured regularizers never enter the training loss",
    ),
    Mutation(
        "mlp_without_relu", "gmnn/nn/mixture/networks.py",
        "layers += [nn.Linear(width_in, width), nn.ReLU()]",
        "layers += [nn.Linear(width_in, width), nn.Identity()]",
        ("tests/nn/test_experts.py",),
        "the MLP expert is linear (no ReLU): a loop over the same modules would not notice",
    ),
    Mutation(
        "class_fractions_rounded_down", "gmnn/data/vision.py",
        "max(1, round(fraction * len(members)))",
        "max(1, int(fraction * len(members)))",
        ("tests/data/test_vision.py",),
        "class fractions rounded down instead of to the nearest count",
    ),
    Mutation(
        "revival_copies_nothing", "gmnn/models/revival.py",
        "dst.copy_(src * scale)",
        "dst.copy_(dst * scale)",
        ("tests/models/test_revival.py",),
        "reviving a dead expert only adds noise to it instead of copying the busiest expert",
    ),
    Mutation(
        "resume_ignores_checkpoint", "gmnn/cli/resume.py",
        "    path = find_last_checkpoint(config, experiment() if callable(experiment) else experiment)\n    if path is None:",
        "    path = None\n    if path is None:",
        ("tests/test_resume.py", "tests/test_cli.py"),
        "--ckpt_path last never finds the earlier run's last.ckpt (starts from scratch)",
    ),
    Mutation(
        "report_ignores_retest", "gmnn/cli/report.py",
        "report(options.run_dirs, options.out, options.retest, options.reference)",
        "report(options.run_dirs, options.out, False, options.reference)",
        ("tests/test_report.py",),
        "gmnn report drops --retest",
    ),
    Mutation(
        "retest_ignores_checkpoint", "gmnn/cli/report.py",
        'model = MoEModule.load_from_checkpoint(checkpoint, map_location="cpu")',
        'model = (lambda m: type(m)(**{**m.hparams, "init_experts_from": None}))(MoEModule.load_from_checkpoint(checkpoint))',
        ("tests/test_report.py",),
        "--retest tests a freshly initialised model instead of last.ckpt",
    ),
    Mutation(
        "ddp_metric_sync_dropped", "gmnn/metrics/decomposition.py",
        'self.add_state("counts", torch.zeros(num_experts, num_classes, dtype=torch.long), dist_reduce_fx="sum")',
        'self.add_state("counts", torch.zeros(num_experts, num_classes, dtype=torch.long), dist_reduce_fx=None)',
        ("tests/test_metrics.py", "tests/test_distributed.py"),
        "the mutual-information counts are not summed over DDP processes",
    ),
    Mutation(
        "ddp_loss_sync_dropped", "gmnn/models/step_log.py",
        "batch_size=batch_size if training else float(batch_size), sync_dist=not training)",
        "batch_size=batch_size if training else float(batch_size), sync_dist=False)",
        ("tests/test_distributed.py",),
        "val/test loss logged without sync_dist: each DDP rank reports its own half",
    ),
    Mutation(
        "figure_allocation_rows_flipped", "gmnn/callbacks/figures.py",
        'result["allocation"], result["expert_accuracy"]',
        'result["allocation"].flip(0), result["expert_accuracy"]',
        ("tests/callbacks/test_figures.py",),
        "the decomposition heatmap shows the experts in the wrong rows",
    ),
)


def by_name(names: list[str] | None) -> list[Mutation]:
    if not names:
        return list(MUTATIONS)
    known = {m.name: m for m in MUTATIONS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown mutation(s) {unknown}; see --list")
    return [known[n] for n in names]


def copy_tree(destination: Path) -> Path:
    """A fresh copy of the repository under ``destination``."""
    target = destination / "repo"
    shutil.copytree(ROOT, target, ignore=_ignored)
    return target


def run_pytest(root: Path, tests: list[str], timeout: float, deselect: Sequence[str] = (),
               stop_first: bool = True) -> tuple[int, str]:
    """Run pytest on ``tests`` in ``root`` (the package imported from there); ``(exit status, output)``."""
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    command = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "--no-header",
               "--disable-warnings", "--tb=short", *(["-x"] if stop_first else []),
               *(f"--deselect={node}" for node in deselect), *tests]
    try:
        result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f} s"
    return result.returncode, result.stdout + result.stderr


def failed_tests(output: str) -> list[str]:
    """The node ids pytest's ``-rfE`` summary lists as FAILED or ERROR."""
    return [line.split()[1] for line in output.splitlines() if line.startswith(("FAILED ", "ERROR ")) and "::" in line]


def verdict_of(status: int, output: str) -> str:
    """How a mutation's test run ended: ``caught (<file of the first failing test>)``, ``survived``, ``untested``
    (no test ran) or ``error (exit N)``."""
    failed = failed_tests(output)
    if status == 2 and failed:  # pytest-xdist reports a -x run stopped by a failing test as interrupted
        status = 1
    if status == 1:
        return "caught" + (f" ({failed[0].split('::')[0].removeprefix('tests/')})" if failed else "")
    return {0: "survived", 5: "untested"}.get(status, f"error (exit {status})")


def module_of(path: str) -> str:
    """``gmnn/nn/functional/combine.py`` -> ``gmnn.nn.functional.combine``."""
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def check_imports_copy(root: Path, mutations: list[Mutation]) -> None:
    """Fail loudly when a mutated module would be imported from elsewhere (e.g. an editable install) than the copy."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    modules = sorted({module_of(m.path) for m in mutations} | {"gmnn"})
    code = "import importlib\n" + "".join(f"print(importlib.import_module({name!r}).__file__)\n" for name in modules)
    found = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    if found.returncode != 0:
        raise MutationError(f"the unmutated copy does not import: {found.stderr[-2000:]}")
    for name, file in zip(modules, found.stdout.split()):
        if not Path(file).resolve().is_relative_to(root.resolve()):
            raise MutationError(f"the copy imports {name} from {file}, not from {root}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this mutation (repeatable)")
    parser.add_argument("--all", action="store_true", help="run the whole suite per mutation, not its test files")
    parser.add_argument("--no-baseline", action="store_true", help="skip the check that the tests pass unmutated")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per pytest run (default 900)")
    options = parser.parse_args(argv)
    mutations = by_name(options.only)
    if options.list:
        for m in mutations:
            print(f"{m.name}\t{m.path}\t{' '.join(m.tests)}\t{m.what}")
        return 0

    results: list[tuple[str, str, float]] = []
    with tempfile.TemporaryDirectory(prefix="gmnn-mutation-") as tmp:
        clean = copy_tree(Path(tmp) / "clean")
        check_imports_copy(clean, mutations)
        problems = []
        for m in mutations:  # every target must exist before anything runs
            try:
                m.source()
            except MutationError as error:
                problems.append(str(error))
        if problems:
            raise MutationError("\n".join(problems))
        broken: list[str] = []
        if not options.no_baseline:  # tests that fail unmutated cannot catch anything: they are left out
            tests = ["tests"] if options.all else sorted({t for m in mutations for t in m.tests if (ROOT / t).exists()})
            start = time.perf_counter()
            status, output = run_pytest(clean, tests, options.timeout, stop_first=False)
            broken = failed_tests(output)
            print(f"baseline (no mutation): exit {status} in {time.perf_counter() - start:.1f} s", flush=True)
            if status not in (0, 1) or (status == 1 and not broken):
                print(output[-6000:], file=sys.stderr)
                print("the unmutated tests do not run: fix them first", file=sys.stderr)
                return 2
            for node in broken:
                print(f"  fails without a mutation, left out: {node}", flush=True)
        for m in mutations:
            root = copy_tree(Path(tmp) / m.name)
            m.apply(root)
            tests = ["tests"] if options.all else [t for t in m.tests if (root / t).exists()]
            if not tests:
                raise MutationError(f"mutation {m.name!r}: none of its test files {m.tests} exists")
            start = time.perf_counter()
            status, output = run_pytest(root, tests, options.timeout, deselect=broken)
            seconds = time.perf_counter() - start
            verdict = verdict_of(status, output)
            if verdict.startswith("error"):
                print(output[-6000:], file=sys.stderr)
            results.append((m.name, verdict, seconds))
            print(f"{m.name:<36} {verdict:<24} {seconds:6.1f} s", flush=True)
            shutil.rmtree(root)

    width = max(len(name) for name, _, _ in results)
    result_width = max(8, *(len(verdict) for _, verdict, _ in results))
    print(f"\n| {'mutation':<{width}} | {'result':<{result_width}} | seconds |")
    print(f"|{'-' * (width + 2)}|{'-' * (result_width + 2)}|---------|")
    for name, verdict, seconds in results:
        print(f"| {name:<{width}} | {verdict:<{result_width}} | {seconds:7.1f} |")
    survived = [name for name, verdict, _ in results if verdict in ("survived", "untested")]
    print(f"\n{len(results) - len(survived)}/{len(results)} caught" + (f"; not caught: {', '.join(survived)}" if survived else ""))
    if any(verdict.startswith("error") for _, verdict, _ in results):
        return 2
    return 1 if survived else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MutationError as error:
        print(f"mutation_check: {error}", file=sys.stderr)
        sys.exit(2)
