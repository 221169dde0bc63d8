"""`simserve calibrate`: the report it writes is the committed docs/calibration.md, byte for byte."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from simserve.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_calibrate_report_reproduces_the_docs(tmp_path):
    out = tmp_path / "calibration.md"
    res = CliRunner().invoke(main, ["calibrate", "--report", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert out.read_text() == (ROOT / "docs" / "calibration.md").read_text(), \
        "regenerate with `simserve calibrate --report`"
    numbers = json.loads(res.stdout)
    for key in ("heldout_median_abs_pct_err", "heldout_p90_abs_pct_err", "iteration"):
        assert set(numbers[key]) >= {"a100-sxm-80gb", "h100-sxm-80gb", "a40-48gb"}
    assert set(numbers["heldout_p90_abs_pct_err"]["h100-sxm-80gb"]) == {
        "gemm", "gemm_fp8", "attention_prefill", "attention_decode", "elementwise", "allreduce", "send_recv", "moe"}
    assert "gemm_fp8" not in numbers["heldout_p90_abs_pct_err"]["a100-sxm-80gb"]       # no FP8 tensor cores
    assert set(numbers["iteration_vllm"]) == {"a100-sxm-80gb", "h100-sxm-80gb"}     # A40: no vLLM timings


def test_calibrate_table_ends_with_the_whole_layers():
    res = CliRunner().invoke(main, ["calibrate", "--hardware", "h100-sxm-80gb"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["hardware", "operator", "class", "median", "%", "p90", "%"]
    assert [line.split()[1] for line in lines[1:9]] == sorted(
        ["gemm", "gemm_fp8", "attention_prefill", "attention_decode", "elementwise", "allreduce", "send_recv", "moe"])
    assert lines[9].startswith("h100-sxm-80gb   layer, Vidur stack") and lines[10].startswith("h100-sxm-80gb   layer, vLLM stack")
    assert len(lines) == 11


def test_calibrate_rejects_unmeasured_hardware():
    res = CliRunner().invoke(main, ["calibrate", "--hardware", "b200-180gb"])
    assert res.exit_code == 2 and "no measurements for 'b200-180gb'" in res.stderr
