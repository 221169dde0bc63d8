"""The docs are checked against the code: the JSON Schema is current, every scenario key is documented,
every YAML example in docs/scenarios.md loads (or fails as it says), and every reported metric and
requests.csv column is defined in docs/metrics.md."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from simserve import workload
from simserve.errors import ScenarioError
from simserve.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SCENARIOS_MD = DOCS / "scenarios.md"
METRICS_MD = DOCS / "metrics.md"
SCHEMA_FILE = DOCS / "scenario.schema.json"
REGENERATE = "python3 -m simserve.cli schema --output docs/scenario.schema.json"

# A complete scenario that fragments are merged into (top-level keys of the fragment replace these).
BASE = {
    "name": "docs-base",
    "model": "llama-3.1-8b",
    "hardware": "h100-sxm-80gb",
    "workload": {"kind": "synthetic", "num_requests": 10, "arrival": {"process": "offline"},
                 "prompt_tokens": {"dist": "fixed", "value": 128}, "output_tokens": {"dist": "fixed", "value": 16}},
}

# summary.json keys whose value is a mapping with fixed keys (others map data-dependent names to values)
FIXED_MAPPINGS = ("slo", "stability", "failures", "memory_per_device", "swap")

TINY = {
    "name": "docs-tiny",
    "model": "llama-3.1-8b",
    "hardware": "h100-sxm-80gb",
    "workload": {"kind": "synthetic", "num_requests": 5, "arrival": {"process": "offline"},
                 "prompt_tokens": {"dist": "fixed", "value": 100}, "output_tokens": {"dist": "fixed", "value": 10}},
    "cost_model": {"kind": "constant", "step_s": 0.01},
}


# --- helpers ---------------------------------------------------------------------------------------

_FENCE = re.compile(r"^```.*?^```[ \t]*$", re.S | re.M)


def prose(path: Path) -> str:
    """The page without its fenced code blocks: a key counts as documented only in text or tables."""
    return _FENCE.sub("", path.read_text())


def code_words(text: str) -> set[str]:
    """Every identifier inside an inline code span (`scheduler.max_num_seqs` gives both names)."""
    words: set[str] = set()
    for span in re.findall(r"`([^`\n]+)`", text):
        words.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", span))
    return words


def schema_property_names(node) -> set[str]:
    """Names of all properties anywhere in a JSON Schema, $defs included."""
    names: set[str] = set()
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict):
            names.update(props)
        for value in node.values():
            names |= schema_property_names(value)
    elif isinstance(node, list):
        for value in node:
            names |= schema_property_names(value)
    return names


_EXAMPLE = re.compile(r"<!-- example: (\w+)(?: (\S+))? -->\n```yaml\n(.*?)^```", re.S | re.M)


def yaml_examples() -> list[tuple[str, str | None, str, int]]:
    """(kind, expected error path, YAML text, line) for every marked ```yaml block of scenarios.md."""
    text = SCENARIOS_MD.read_text()
    return [(m.group(1), m.group(2), m.group(3), text.count("\n", 0, m.start()) + 2)
            for m in _EXAMPLE.finditer(text)]


def relative_file_refs(data) -> list[str]:
    """References to files (not bundled names) in a scenario: model, hardware and trace paths."""
    refs: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if key in ("model", "hardware", "path") and isinstance(value, str) and (
                    "/" in value or "\\" in value or value.endswith((".yaml", ".yml", ".csv", ".jsonl"))):
                refs.append(value)
            else:
                refs += relative_file_refs(value)
    return refs


def example_data(kind: str, text: str) -> dict:
    data = yaml.safe_load(text) or {}
    assert isinstance(data, dict), "an example must be a mapping"
    return {**BASE, **data} if kind == "fragment" else data


def check_loads(data: dict):
    """Load like ``simserve validate``: validation, resolution, memory plan and the workload."""
    r = load_scenario(data)
    workload.build(r.config.workload, np.random.default_rng(r.config.seed), r.base_dir)
    return r


@pytest.fixture(scope="module")
def schema() -> dict:
    from simserve.schema import scenario_schema
    return scenario_schema()


@pytest.fixture(scope="module")
def tiny_result():
    from simserve import simulate
    return simulate(TINY)


# --- (a) the committed schema is current ---------------------------------------------------------

def test_schema_file_is_current():
    from simserve.schema import scenario_schema_json

    if not SCHEMA_FILE.is_file():
        pytest.fail(f"docs/scenario.schema.json is missing; generate it with: {REGENERATE}")
    if SCHEMA_FILE.read_text() != scenario_schema_json():
        pytest.fail(f"docs/scenario.schema.json is out of date with the scenario config; regenerate it with: {REGENERATE}")


def test_schema_is_a_valid_json_schema(schema):
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema)


# --- (b) every scenario key is documented --------------------------------------------------------

def test_every_schema_property_is_documented(schema):
    names = schema_property_names(schema)
    assert len(names) > 40, "the schema walk found too few properties"
    documented = code_words(prose(SCENARIOS_MD))
    missing = sorted(names - documented)
    assert not missing, f"scenario keys not mentioned (in `code`, outside code blocks) in docs/scenarios.md: {missing}"


def test_every_model_key_is_documented():
    from simserve.model import ModelSpec

    missing = sorted(set(ModelSpec.model_fields) - code_words(prose(SCENARIOS_MD)))
    assert not missing, f"inline model keys not documented in docs/scenarios.md: {missing}"


def test_every_registered_policy_is_documented():
    from simserve import policies

    documented = code_words(prose(SCENARIOS_MD))
    names = {row["name"] for reg in policies.ALL for row in reg.describe()}
    params = {p for reg in policies.ALL for row in reg.describe() for p in row["params"]}
    missing = sorted((names | params) - documented)
    assert not missing, f"policies or their params not documented in docs/scenarios.md: {missing}"


# --- (c) the YAML examples of docs/scenarios.md ---------------------------------------------------

def test_every_yaml_block_is_marked():
    text = SCENARIOS_MD.read_text()
    blocks = len(re.findall(r"^```yaml$", text, re.M))
    examples = yaml_examples()
    assert len(examples) == blocks, "every ```yaml block in docs/scenarios.md needs a preceding " \
                                    "<!-- example: complete|fragment|invalid [path] --> marker"
    assert {k for k, *_ in examples} <= {"complete", "fragment", "invalid"}
    assert sum(k == "complete" for k, *_ in examples) >= 3


@pytest.mark.parametrize("kind,error_path,text,line", yaml_examples(),
                         ids=[f"line{e[3]}-{e[0]}" for e in yaml_examples()])
def test_yaml_example(kind, error_path, text, line, schema):
    import jsonschema

    data = example_data(kind, text)
    if kind == "invalid":
        with pytest.raises(ScenarioError) as exc:
            check_loads(data)
        if error_path:
            assert exc.value.path == error_path, f"docs/scenarios.md:{line}: error at {exc.value.path}: {exc.value}"
        return
    refs = relative_file_refs(data)
    if refs:
        # Examples that point at the reader's own files (model, profile, trace) cannot load here.
        pytest.skip(f"docs/scenarios.md:{line} references files of its own: {refs}")
    check_loads(data)
    # what the loader accepts, the editor schema must accept too
    jsonschema.validate(data, schema)


# --- (d) the bundled scenarios satisfy the JSON Schema --------------------------------------------

@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").glob("*.yaml")), ids=lambda p: p.name)
def test_bundled_scenario_matches_schema(path, schema):
    import jsonschema

    jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    load_scenario(path)


def test_bundled_scenarios_exist():
    assert sorted((ROOT / "scenarios").glob("*.yaml")), "no scenarios/*.yaml to check"


# --- (e) every reported number is defined in docs/metrics.md -------------------------------------

def test_every_summary_key_is_documented(tiny_result):
    documented = code_words(prose(METRICS_MD))
    summary = tiny_result.summary
    assert summary["completed"] == 5
    missing = sorted(set(summary) - documented)
    assert not missing, f"summary.json keys not defined in docs/metrics.md: {missing}"
    nested = {key for name in FIXED_MAPPINGS for key in summary[name]}
    missing = sorted(nested - documented)
    assert not missing, f"nested summary.json keys not defined in docs/metrics.md: {missing}"


def test_every_request_column_is_documented_in_order(tiny_result):
    columns = list(tiny_result.requests.columns)
    text = METRICS_MD.read_text().split("## requests.csv", 1)[1].split("\n## ", 1)[0]
    table = re.findall(r"^\| `(\w+)` \|", text, re.M)
    assert table == columns, "the requests.csv table of docs/metrics.md must list the columns in order"


def test_summary_tables_name_only_real_keys(tiny_result):
    """The reverse check: a key in the first column of a summary.json table exists."""
    summary = tiny_result.summary
    real = set(summary) | {key for name in FIXED_MAPPINGS for key in summary[name]}
    text = METRICS_MD.read_text().split("## summary.json", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"^\| `(\w+)` \|", text, re.M))
    assert named, "no summary.json tables found"
    assert not named - real, f"docs/metrics.md documents keys that summary.json does not have: {sorted(named - real)}"


def test_summary_is_plain_json(tiny_result):
    json.loads(tiny_result.summary_json())


def test_outcomes_reasons_and_bound_classes_are_documented():
    from simserve.cost import ops
    from simserve.engine import request

    documented = code_words(prose(METRICS_MD))
    source = (ROOT / "simserve" / "engine" / "sim.py").read_text()
    # rejections: self._reject(req, "reason"); unfinished: req.outcome, req.reason = UNFINISHED, "reason"
    reasons = set(re.findall(r"_reject\(\w+, \"(\w+)\"\)", source))
    reasons |= set(re.findall(r"UNFINISHED, \"(\w+)\"", source))
    # failures: cluster.fail(replica, "cause") rejects with reason "replica_<cause>" (on_failure: reject)
    failures = (ROOT / "simserve" / "engine" / "failures.py").read_text()
    reasons |= {f"replica_{cause}" for cause in re.findall(r"\.fail\(\w+, \"(\w+)\"\)", failures)}
    assert reasons, "found no rejection reasons in simserve/engine/sim.py"
    words = reasons | {request.COMPLETED, request.REJECTED, request.UNFINISHED} | {
        ops.COMPUTE, ops.MEMORY, ops.NETWORK, ops.OVERHEAD}
    missing = sorted(words - documented)
    assert not missing, f"outcomes, rejection reasons or bound classes not defined in docs/metrics.md: {missing}"
