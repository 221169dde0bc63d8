"""Regenerate the quickstart output block in README.md from `simserve run scenarios/quickstart.yaml`.

    python benchmarks/update_readme_sample.py
"""
import re
import subprocess
import sys
import tempfile
from pathlib import Path

root = Path(__file__).resolve().parent.parent
with tempfile.TemporaryDirectory() as out:
    text = subprocess.run([sys.executable, "-m", "simserve.cli", "run", str(root / "scenarios" / "quickstart.yaml"),
                           "--out", out], capture_output=True, text=True, check=True).stdout
sample = text.split("\nwrote ")[0].rstrip("\n")
readme = root / "README.md"
new, n = re.subn(r"```\n(simserve: quickstart.*?)\n```", lambda m: "```\n" + sample + "\n```", readme.read_text(), flags=re.S)
assert n == 1, "README has no quickstart block"
readme.write_text(new)
print(sample)
