"""The docs site: the worked examples execute, and ``mkdocs build --strict`` passes (a broken link, a missing
API reference or a docstring that does not render fails it); result pages name only commands a reader can
run from the repository."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
API_PACKAGES = ["gmnn.nn.functional", "gmnn.nn.mixture", "gmnn.nn.moe", "gmnn.metrics", "gmnn.analysis",
                "gmnn.models", "gmnn.callbacks", "gmnn.data", "gmnn.checkpoints"]
RERUNNABLE = ["RESULTS.md", "RESULTS_LM.md", "benchmarks/README.md"]

# one worker builds the site once (pytest-xdist --dist loadgroup): the build writes docs/examples/. Its Jupyter
# kernels bind ports of the kernel's ephemeral range; the multi-process tests meet on ports below it
# (tests/conftest.py), so the two run side by side without racing for a port
pytestmark = pytest.mark.xdist_group("docs")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """Execute every example and build the site in strict mode, once for this module."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "GMNN_DOCS_EXECUTE": "always", "NO_MKDOCS_2_WARNING": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=600)
    print(f"docs build (examples executed): {time.perf_counter() - start:.0f} s", file=sys.stderr)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-8000:]
    assert "WARNING" not in done.stderr, done.stderr[-8000:]
    return out


def test_every_example_is_rendered_with_its_outputs(site: Path) -> None:
    examples = sorted((ROOT / "examples").glob("[0-9][0-9]_*.py"))
    assert len(examples) >= 5
    for example in examples:
        page = (site / "examples" / example.stem / "index.html").read_text()
        assert (site / "examples" / f"{example.stem}.ipynb").exists(), example.name
        assert "ran in" in page, example.name
    # figures and tables of the executed examples appear in the pages
    assert list((site / "examples" / "01_first_run_files").glob("*.png"))
    assert "<table>" in (site / "examples" / "04_paper_row" / "index.html").read_text()
    assert list((site / "examples" / "05_token_moe_files").glob("*.png"))


def test_mkdocs_serve_serves_the_site(site: Path, tmp_path: Path) -> None:
    """The README's ``mkdocs serve``: the landing page and an API page come back over HTTP (after the build
    above, so the examples' pages exist and the server does not execute them again)."""
    import socket
    import urllib.request

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "mkdocs", "serve", "--dev-addr", f"127.0.0.1:{port}"], cwd=ROOT,
                              stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    try:
        deadline, page = time.monotonic() + 180, None
        while page is None and time.monotonic() < deadline and server.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
            except OSError:
                time.sleep(0.5)
        assert page is not None, (tmp_path / "serve.log").read_text()[-4000:]
        assert "<title>gmnn</title>" in page and "images/dense_regions.png" in page
        api = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/models/", timeout=30).read().decode()
        assert 'id="gmnn.models.DenseMoE"' in api
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.mark.parametrize("package", API_PACKAGES)
def test_every_public_name_has_an_api_entry(site: Path, package: str) -> None:
    import importlib

    page = (site / "api" / package.removeprefix("gmnn.").replace(".", "_") / "index.html").read_text()
    module = importlib.import_module(package)
    names = getattr(module, "__all__", None) or [  # a package without __all__: its public non-module names
        name for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith(package)]
    missing = [name for name in names if f'id="{package}.{name}"' not in page]
    assert not missing, f"{package}: no API entry for {missing}"


def commands(text: str) -> list[str]:
    """The shell commands of a Markdown text's bash blocks, continuation lines joined."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                found.append(line)
    return found


@pytest.mark.parametrize("name", RERUNNABLE)
def test_result_pages_name_only_runnable_commands(name: str) -> None:
    found = commands((ROOT / name).read_text())
    assert found, name
    for command in found:
        assert not re.search(r"(^|[\s=])(/tmp|/work|\.\./)", command), f"{name}: a folder outside the repository: {command}"
        for word in shlex.split(command.replace("$S", "").replace("$C", "configs/paper/mnist")):
            word = word.split("=", 1)[-1]
            if re.fullmatch(r"(configs|scripts)/[\w./-]+\.(yaml|py|sh)", word):
                assert (ROOT / word).exists(), f"{name}: {word} does not exist ({command})"
