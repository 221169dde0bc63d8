"""The command line: outputs, exit codes, and one-line errors without tracebacks."""
from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from simserve.cli import main

from conftest import TINY


@pytest.fixture
def tiny_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    data = dict(TINY, workload={**TINY["workload"], "num_requests": 5})
    path.write_text(yaml.safe_dump(data))
    return path


def test_run_writes_summary_and_requests(tiny_file, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["run", str(tiny_file), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "TTFT" in res.output and "cost" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] == 5
    lines = (out / "requests.csv").read_text().splitlines()
    assert lines[0].startswith("id,replica,outcome") and len(lines) == 6


def test_json_flag_prints_the_summary(tiny_file, tmp_path):
    res = CliRunner().invoke(main, ["run", str(tiny_file), "--out", str(tmp_path / "o"), "--json"])
    assert res.exit_code == 0
    assert json.loads(res.output)["num_requests"] == 5


def test_set_applies_to_run_and_validate(tiny_file, tmp_path):
    res = CliRunner().invoke(main, ["run", str(tiny_file), "--out", str(tmp_path / "o"), "--json",
                                    "--set", "workload.num_requests=3"])
    assert json.loads(res.output)["num_requests"] == 3
    res = CliRunner().invoke(main, ["validate", str(tiny_file), "--set", "deployment.replicas=2"])
    assert res.exit_code == 0 and res.output.startswith("ok: tiny: llama-3.1-8b on 2 x 1 x h100-sxm-80gb")


@pytest.mark.parametrize("args, message", [
    (["--set", "scheduler.max_num_seqs=0"], "error: scheduler.max_num_seqs: must be >= 1, got 0\n"),
    (["--set", "hardware=h10"], "error: hardware: unknown profile 'h10'"),
    (["--set", "workload.arrival.process=poisson"], "error: workload.arrival.rate_per_s: required key is missing"),
    (["--set", "nonsense"], "error: nonsense: an override is 'dotted.path=value'"),
    (["--set", "model=llama-2-70b", "--set", "hardware=a100-sxm-80gb"], "error: deployment.tensor_parallel: llama-2-70b needs 138.0 GB"),
])
@pytest.mark.parametrize("command", ["run", "validate"])
def test_bad_input_exits_2_with_one_line(tiny_file, tmp_path, command, args, message):
    extra = ["--out", str(tmp_path / "o")] if command == "run" else []
    res = CliRunner().invoke(main, [command, str(tiny_file), *args, *extra])
    assert res.exit_code == 2
    assert res.stderr.startswith(message)
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert res.stdout == ""


def test_missing_and_broken_files(tmp_path):
    res = CliRunner().invoke(main, ["validate", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "no such scenario file" in res.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"model: \xff\xfe\n")
    res = CliRunner().invoke(main, ["validate", str(bad)])
    assert res.exit_code == 2 and "not UTF-8" in res.stderr and res.stderr.count("\n") == 1


def test_broken_trace_row_names_file_and_line(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,10,5\n2023-11-16 18:15:47.00,-3,5\n")
    scen = tmp_path / "s.yaml"
    scen.write_text(yaml.safe_dump(dict(TINY, workload={"kind": "trace", "path": "t.csv", "format": "azure"})))
    res = CliRunner().invoke(main, ["run", str(scen), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert res.stderr.startswith("error: ") and "t.csv:3" in res.stderr and res.stderr.count("\n") == 1


def test_schema_and_policies_commands():
    res = CliRunner().invoke(main, ["schema"])
    assert res.exit_code == 0 and json.loads(res.output)["title"] == "simserve scenario"
    res = CliRunner().invoke(main, ["policies", "--json"])
    names = {(r["kind"], r["name"]) for r in json.loads(res.output)}
    assert {("scheduler", "continuous"), ("router", "round_robin"), ("router", "least_outstanding"),
            ("cost_model", "roofline")} <= names


def test_policies_lists_every_technique_with_real_keys_and_modules():
    import importlib

    from simserve.policies.techniques import TECHNIQUES
    schema = json.loads(CliRunner().invoke(main, ["schema"]).output)

    def has(path):
        node, defs = schema, schema.get("$defs", {})
        for part in path.split("."):
            options = [node] + node.get("anyOf", []) + node.get("oneOf", [])
            options = [defs[o["$ref"].split("/")[-1]] if "$ref" in o else o for o in options]
            options += [defs[o["$ref"].split("/")[-1]] for n in options for o in n.get("anyOf", []) if "$ref" in o]
            found = [o["properties"][part] for o in options if part in o.get("properties", {})]
            if not found:
                return False
            node = defs[found[0]["$ref"].split("/")[-1]] if "$ref" in found[0] else found[0]
        return True

    rows = json.loads(CliRunner().invoke(main, ["policies", "--json"]).output)
    listed = {(r["kind"], r["name"]) for r in rows}
    for kind, name, _, keys, module in TECHNIQUES:
        assert (kind, name) in listed
        assert all(has(k) for k in keys), (name, keys)
        importlib.import_module(module)
    assert {("sampling", "beam_search"), ("parallelism", "pipeline"), ("kv_cache", "prefix_caching")} <= listed
    assert not has("deployment.no_such_key")
