"""What `pip install` delivers: the shipped configs and scripts, and `gmnn configs` pointing at them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from gmnn.cli import configs_dir, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_ships_every_config_and_script(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("gmnn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {name.split("/data/share/gmnn/", 1)[1] for name in names if "/data/share/gmnn/" in name}
    expected = {str(p.relative_to(ROOT)) for p in [*ROOT.glob("configs/**/*.yaml"), *ROOT.glob("scripts/*.py")]}
    assert expected - shipped == set(), "add the folder to [tool.setuptools.data-files] in pyproject.toml"
    assert "gmnn/py.typed" in names


def test_gmnn_configs_prints_the_folder_of_the_shipped_configs(capsys: pytest.CaptureFixture[str]) -> None:
    main(["configs"])
    printed = Path(capsys.readouterr().out.strip())
    assert printed == configs_dir() and (printed / "toy" / "dense.yaml").is_file()
