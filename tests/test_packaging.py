"""Profiles, workloads, scenarios and the model catalog ship in the wheel and are found from it."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("hatchling")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out)], check=True, capture_output=True)
    return next(out.glob("simserve-*.whl"))


def test_wheel_carries_the_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("hardware_profiles", "workloads", "scenarios"):
        for f in (ROOT / folder).iterdir():
            if f.is_file():
                assert f"simserve/_data/{folder}/{f.name}" in names
    for f in (ROOT / "simserve" / "catalog" / "models").glob("*.yaml"):
        assert f"simserve/catalog/models/{f.name}" in names


def test_installed_wheel_runs_a_bundled_scenario(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import simserve, pathlib; assert '_data' in str(simserve.resources.data_dir('scenarios')); "
            "r = simserve.simulate('quickstart', ['workload.limit=20']); print(r.summary['completed'])")
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "20"
