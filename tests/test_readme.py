"""The README's sample output is what `simserve run scenarios/quickstart.yaml` prints today."""
from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from simserve.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_readme_sample_output_is_current(tmp_path):
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```\n(simserve: quickstart.*?)\n```", readme, flags=re.S)
    assert len(blocks) == 1, "README should show one quickstart output block"
    res = CliRunner().invoke(main, ["run", str(ROOT / "scenarios" / "quickstart.yaml"), "--out", str(tmp_path)])
    assert res.exit_code == 0
    printed = res.output.split("\nwrote ")[0].rstrip("\n")
    assert printed == blocks[0], "regenerate the README block from `simserve run scenarios/quickstart.yaml`"


def test_readme_shows_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "pip install -e . && simserve run scenarios/quickstart.yaml" in readme
    assert "pip install -e '.[test]' && pytest" in readme
    assert "pytest" in (ROOT / ".ci" / "run").read_text()
