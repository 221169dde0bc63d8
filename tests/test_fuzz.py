"""Fuzzing every file a user writes: scenarios (as mappings, as YAML text, and through ``--set``),
inline models, hardware profiles, model files and traces. Each input either loads or raises ONE
ScenarioError / TraceError whose message is one line starting with where the problem is (a dotted path,
a file then a dotted path, or ``file:line``); never any other exception. Nothing is simulated here:
``load_scenario`` validates and resolves, and ``workload.build`` reads only tiny traces.

Also the safe-loading rules (safe YAML tags, size and alias limits, the keys that may name a file) and
the CLI's contract: exit code 2 and one ``error: `` line on stderr.
"""
from __future__ import annotations

import builtins
import copy
import datetime
import json
import math
import pathlib
import re
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from simserve import ScenarioError, SimserveError, TraceError, workload
from simserve.cli import main
from simserve.config import yamlio
from simserve.config.base import fmt_key
from simserve.hardware import load_profile
from simserve.model import load_model
from simserve.scenario import Scenario, load_scenario
from simserve.workload.traces import read_azure, read_mooncake

ROOT = Path(__file__).resolve().parent.parent
FUZZ = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- bugs this file finds in modules it does not own ------------------------------------------------
# A bug found here gets an entry (and an xfail(strict) reproducer at the end of the file) until fixed;
# inside the fuzz loops an exception matching an entry (its type and the simserve file raising it) is
# tolerated. The test_bug_* reproducers below are the fixed ones, kept as regression tests.
KNOWN_BUGS: list = []   # (simserve file, exception matcher, what): none open


def _raw(exc: BaseException, *types: type) -> bool:
    return isinstance(exc, types) and not isinstance(exc, SimserveError)


def _multiline(exc: BaseException) -> bool:
    return isinstance(exc, ScenarioError) and ("\n" in str(exc) or "\r" in str(exc))


def _event(text: str) -> None:
    if currently_in_test_context():  # counted by pytest --hypothesis-show-statistics
        event(text)


def _known_bug(exc: BaseException) -> bool:
    frames = [f.filename.replace("\\", "/") for f in traceback.extract_tb(exc.__traceback__)]
    frames = [f for f in frames if "/simserve/" in f]
    for file, matches, what in KNOWN_BUGS:
        if frames and frames[-1].endswith("/simserve/" + file) and matches(exc):
            _event(f"known bug: {what}")
            return True
    return False


def check(fn, prefixes: tuple[str, ...] = ()):
    """Run ``fn``: it returns, or raises a one-line ScenarioError/TraceError starting with one of
    ``prefixes`` (when given). Returns the error, or None when ``fn`` loaded."""
    try:
        fn()
        _event("loaded")
        return None
    except (ScenarioError, TraceError) as exc:
        msg = str(exc)
        if _known_bug(exc):
            return exc
        _event(type(exc).__name__)
        assert "\n" not in msg and "\r" not in msg, f"message is not one line: {msg!r}"
        if isinstance(exc, ScenarioError):
            assert exc.path and msg == f"{exc.path}: {exc.reason}", msg
        else:
            assert re.match(r"^.+?(:\d+)?: \S", msg), msg
        assert not prefixes or msg.startswith(prefixes), f"{msg!r} does not start with one of {prefixes}"
        return exc
    except Exception as exc:  # noqa: BLE001 - anything else breaks the contract
        if _known_bug(exc):
            return exc
        raise AssertionError(f"{type(exc).__name__} escaped instead of a ScenarioError/TraceError: {exc}") from exc


# --- valid bases --------------------------------------------------------------------------------------

def _yaml(path: Path):
    return yaml.safe_load(path.read_text())


QUICKSTART = _yaml(ROOT / "scenarios" / "quickstart.yaml")
H100 = _yaml(ROOT / "hardware_profiles" / "h100-sxm-80gb.yaml")
MODEL = _yaml(ROOT / "simserve" / "catalog" / "models" / "llama-3.1-8b.yaml")
TOP_KEYS = set(Scenario.model_fields)
# the only keys through which a scenario may name a file (docs/errors.md)
FILE_KEYS = {("hardware",), ("model",), ("workload", "path"), ("workload", "prompt_tokens", "path"),
             ("workload", "output_tokens", "path")}

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"
AZURE_ROWS = ["2023-11-16 18:17:03.9799600,10,5", "2023-11-16 18:17:04.0319600,20,6", "2023-11-16 18:17:05.0000000,30,7"]
MOON_ROWS = ['{"timestamp": 0, "input_length": 10, "output_length": 5, "hash_ids": [0]}',
             '{"timestamp": 40, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]}',
             '{"timestamp": 90, "input_length": 30, "output_length": 7, "hash_ids": [2]}']


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder with tiny valid traces, shared by every example (hypothesis needs no per-test fixture)."""
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "tiny.csv").write_text("\n".join([AZURE_HEADER, *AZURE_ROWS]) + "\n")
    (folder / "tiny.jsonl").write_text("\n".join(MOON_ROWS) + "\n")
    return folder


def synthetic_base() -> dict:
    data = copy.deepcopy(QUICKSTART)
    data["workload"] = {"kind": "synthetic", "num_requests": 8,
                        "arrival": {"process": "gamma", "rate_per_s": 2.0, "cv": 1.5},
                        "prompt_tokens": {"dist": "uniform", "low": 1, "high": 500},
                        "output_tokens": {"dist": "lognormal", "median": 50, "sigma": 1.0, "max": 400}}
    data["deployment"]["router"] = {"policy": "round_robin"}
    data["admission"] = {"max_queue": 100, "request_timeout_s": 30.0}
    data["failures"] = {"events": [{"replica": 0, "at_s": 5.0, "repair_s": 10.0}], "on_failure": "requeue"}
    data["run"] = {"max_duration_s": 60.0}
    return data


def bases(work: Path) -> list[dict]:
    """The quickstart scenario with small workloads: synthetic, a tiny trace of each format, empirical."""
    synth = synthetic_base()
    azure = dict(copy.deepcopy(synth), workload={"kind": "trace", "path": str(work / "tiny.csv"), "format": "azure",
                                                 "time_scale": 0.5, "limit": 2, "start_s": 0.0})
    moon = dict(copy.deepcopy(synth), workload={"kind": "trace", "path": str(work / "tiny.jsonl"), "format": "mooncake"})
    emp = copy.deepcopy(synth)
    emp["workload"]["prompt_tokens"] = {"dist": "empirical", "path": str(work / "tiny.csv"), "column": "prompt", "format": "azure"}
    emp["workload"]["output_tokens"] = {"dist": "empirical", "path": str(work / "tiny.jsonl"), "column": "output",
                                        "format": "mooncake"}
    emp["workload"]["arrival"] = {"process": "closed_loop", "users": 2, "think_time_s": 0.5}
    inline = dict(copy.deepcopy(synth), model=copy.deepcopy(MODEL), cost_model={"kind": "linear", "base_s": 0.01, "per_token_s": 1e-5})
    inline["workload"]["prompt_tokens"] = {"dist": "normal", "mean": 20.0, "std": 5.0, "min": 1, "max": 100}
    inline["workload"]["arrival"] = {"process": "constant", "rate_per_s": 4.0}
    inline["failures"] = {"mtbf_s": 3600.0, "repair_s": 60.0, "spot": {"replicas": 1, "reclaim_rate_per_hour": 0.5,
                                                                       "replace_s": 120.0}, "on_failure": "reject"}
    return [synth, azure, moon, emp, inline]


def load_and_build(data, overrides=(), base_dir: Path | None = None):
    r = load_scenario(data, list(overrides))
    workload.build(r.config.workload, np.random.default_rng(r.config.seed), base_dir if base_dir else r.base_dir)


def scenario_prefixes(data) -> tuple[str, ...]:
    """A scenario error starts with a top-level key (known, or one the mutation added), or is about the
    whole document, or names a file (a trace's file:line, a profile or model file)."""
    keys = set(TOP_KEYS) | ({str(k) for k in data} if isinstance(data, dict) else set())
    keys |= {repr(str(k)) for k in data} if isinstance(data, dict) else set()
    files = tuple(v for v in (_get(data, p) for p in FILE_KEYS) if isinstance(v, str) and v)
    return tuple(f"{k}: " for k in keys) + tuple(f"{k}." for k in keys) + ("(top level)", "/", *files)


# --- mutations ----------------------------------------------------------------------------------------

def _deep(levels: int) -> list:
    node: list = []
    for _ in range(levels):
        node = [node]
    return node


RECURSIVE: list = []
RECURSIVE.append(RECURSIVE)

WEIRD_CONSTANTS = [
    None, True, False, 0, -1, 1, 3, -0.0, 0.5, 1.5, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**70, -(2**70), 10**400,
    math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, 1e-300,
    "", " ", "abc", "x" * 10_000, "1", "1e6", "\n", "a\nb", "\x00", "\udc80", "é", "../../etc/passwd",
    [], [1, [2, [3]]], {}, {"a": {"b": None}}, _deep(150), RECURSIVE, b"\xff", (1, 2), {1: 2}, {None: 1},
    datetime.date(2020, 1, 1), {1, 2},
]
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
WEIRD = st.one_of(st.sampled_from(WEIRD_CONSTANTS), st.integers(), st.floats(), st.text(max_size=30), JSONISH)
# type-correct but extreme numbers: these pass the type checks, so they reach the range checks and the
# arithmetic after validation (memory planning, arrival generation)
EXTREME_INTS = st.one_of(st.sampled_from([1, 2, 3, 7, 2**31, 2**53, 2**62, 2**63 - 1, 0, -1]), st.integers(1, 2**63 - 1))
EXTREME_FLOATS = st.one_of(st.sampled_from([5e-324, 1e-300, 1e-9, 0.999999, 1.0, 1e9, 1e300, 1e308, 1.7976931348623157e308,
                                            0.0, -0.0]), st.floats(min_value=5e-324, max_value=1.7976931348623157e308))
NAME_KEYS = {"policy", "kind", "process", "dist", "format", "hardware", "model", "pricing", "path", "column",
             "weights", "activations", "kv_cache", "on_failure", "norm"}
UNKNOWN_NAMES = st.one_of(st.sampled_from(["", "nope", "H100", "llama", "continuous ", "ROUND_ROBIN", "fp64",
                                           "../../etc/passwd", "/dev/null", "a\nb", "x" * 300, "scenarios"]),
                          st.text(max_size=12))
NEW_KEYS = st.one_of(st.sampled_from(["extra", "max_num_seq", "Name", "", "0", "a.b", "a\nb", "<<", "policy"]),
                     st.text(max_size=10), st.integers(-2, 2), st.none())


def _paths(data, prefix=()) -> list[tuple]:
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        items = list(enumerate(data))
    else:
        return []
    out = []
    for key, value in items:
        out.append(prefix + (key,))
        out += _paths(value, prefix + (key,))
    return out


def _get(data, path):
    node = _parent(data, path)
    try:
        return node[path[-1]] if node is not None else None
    except (KeyError, IndexError, TypeError):
        return None


def _parent(data, path):
    node = data
    for key in path[:-1]:
        if not isinstance(node, (dict, list)):
            return None
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return None
    return node if isinstance(node, (dict, list)) else None


def _apply(base: dict, ops: list) -> dict:
    data = copy.deepcopy(base)
    for op in ops:
        kind, path = op[0], op[1]
        if kind == "add":
            node = _parent(data, path + ("_",))
            if isinstance(node, dict):
                node[op[2]] = op[3]
            continue
        node = _parent(data, path)
        if node is None or (isinstance(node, list) and not (isinstance(path[-1], int) and path[-1] < len(node))):
            continue
        if isinstance(node, dict) and path[-1] not in node:
            continue
        if kind == "delete":
            del node[path[-1]]
        else:  # replace, rename
            node[path[-1]] = op[2]
    return data


def mutations(base: dict) -> st.SearchStrategy:
    """1-3 edits of ``base``: a leaf or subtree replaced by a weird value, a number by an extreme one of
    its type, a key deleted, an unknown key added at any depth, a policy/profile/model/format name
    replaced by an unknown one."""
    paths = _paths(base)
    dicts = [()] + [p for p in paths if isinstance(_parent(base, p + ("_",)), dict)]
    names = [p for p in paths if p[-1] in NAME_KEYS and isinstance(_parent(base, p)[p[-1]], str)]
    ints = [p for p in paths if type(_get(base, p)) is int]
    floats = [p for p in paths if type(_get(base, p)) is float]
    op = st.one_of(
        st.tuples(st.just("replace"), st.sampled_from(paths), WEIRD),
        *([st.tuples(st.just("replace"), st.sampled_from(ints), EXTREME_INTS)] if ints else []),
        *([st.tuples(st.just("replace"), st.sampled_from(floats), EXTREME_FLOATS)] if floats else []),
        st.tuples(st.just("delete"), st.sampled_from(paths)),
        st.tuples(st.just("add"), st.sampled_from(dicts), NEW_KEYS, WEIRD),
        *([st.tuples(st.just("rename"), st.sampled_from(names), UNKNOWN_NAMES)] if names else []),
    )
    return st.lists(op, min_size=1, max_size=3).map(lambda ops: _apply(base, ops))


def _dump(data) -> str:
    try:
        return yaml.safe_dump(data, sort_keys=False)
    except (yaml.YAMLError, TypeError, ValueError, RecursionError):
        reject()  # not representable in YAML: nothing to test


YAML_SNIPPETS = [
    ":", "- ", "[", "]", "{", "}", ",", "&a ", "*a", "*zz", "!!python/object:os.system", "!!python/name:os.system",
    "!!binary", "!!set", "!!int", "!!float", "!!bool", "!foo", "\t", "\ufeff", "<<: ", "? ", "---\n", "...\n",
    "%YAML 1.1\n", "'", '"', "|\n", ">\n", "#", "\r\n", "\r", "\x00", "\x07", "~", "1e400", "-.inf", ".nan",
    "0x" + "f" * 100, "9" * 5000, "2023-02-30", "[" * 500, "{a: " * 300, "\\", "\\u", '"\\udc80"', "\u2028", "\x85",
]


@st.composite
def edited_text(draw, text: str) -> bytes:
    """``text`` with 1-4 edits: YAML tokens or random bytes inserted, slices deleted, truncation."""
    data = text.encode()
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        choice = draw(st.integers(0, 3))
        if choice == 0:
            data = data[:at] + draw(st.sampled_from(YAML_SNIPPETS)).encode("utf-8", "surrogatepass") + data[at:]
        elif choice == 1:
            data = data[:at] + draw(st.binary(min_size=1, max_size=6)) + data[at:]
        elif choice == 2:
            data = data[:at] + data[at + draw(st.integers(1, 40)):]
        else:
            data = data[:at]
    return data


# --- scenarios ----------------------------------------------------------------------------------------

@settings(max_examples=300, **FUZZ)
@given(data=st.data())
def test_mutated_scenario_mappings_load_or_fail_on_one_line(work, data):
    scenario = data.draw(st.sampled_from(bases(work)).flatmap(mutations))
    check(lambda: load_and_build(scenario), scenario_prefixes(scenario))


@st.composite
def extremes(draw, base: dict) -> dict:
    """``base`` with 1-4 of its numbers replaced by extreme values of the same type."""
    numbers = [p for p in _paths(base) if type(_get(base, p)) in (int, float)]
    chosen = draw(st.lists(st.sampled_from(numbers), min_size=1, max_size=4, unique=True))
    return _apply(base, [("replace", p, draw(EXTREME_INTS if type(_get(base, p)) is int else EXTREME_FLOATS))
                         for p in chosen])


@settings(max_examples=200, **FUZZ)
@given(data=st.data())
def test_extreme_numbers_in_scenarios_and_profiles_load_or_fail_on_one_line(work, data):
    scenario = data.draw(st.sampled_from(bases(work)).flatmap(extremes))
    if data.draw(st.booleans()):
        path = work / "extreme-hw.yaml"
        path.write_text(_dump(data.draw(extremes(H100))))
        scenario["hardware"] = str(path)
    check(lambda: load_and_build(scenario), scenario_prefixes(scenario))


@settings(max_examples=150, **FUZZ)
@given(data=st.data())
def test_edited_scenario_files_load_or_fail_on_one_line(work, data):
    text = yaml.safe_dump(bases(work)[data.draw(st.integers(0, 4))], sort_keys=False)
    path = work / "scenario.yaml"
    path.write_bytes(data.draw(edited_text(text)))
    try:  # the keys the edit left, which an error may name
        keys = yamlio.load_file(path)
    except ScenarioError:
        keys = {}
    check(lambda: load_and_build(str(path)), scenario_prefixes(keys) + (str(path),))


OVERRIDE_VALUES = st.one_of(st.sampled_from([
    "", "~", "[", "{a: 1", "&a [*a]", "!!python/object/apply:os.system [ls]", "1e400", ".nan", "-.inf", "0x" + "f" * 40,
    "9" * 5000, "2023-02-30", "'a\\nb'", '"\\udc80"', "[" * 2000, "!!binary /w==", "{<<: {}}", "a: 1\n---\nb: 2",
    "{policy: nope}", "{kind: trace, path: azure-conv, format: mooncake}", "0", "-1", "2e9", "4611686018427387904",
]), st.text(max_size=30))


@st.composite
def overrides(draw, base: dict) -> list[str]:
    known = [".".join(map(str, p)) for p in _paths(base)]
    path = draw(st.one_of(st.sampled_from(known), st.sampled_from(
        ["", ".", "a..b", "0", "workload.0", "scheduler.policy.x", "x" * 300, "a\nb", "²", "seed.0", "failures.events.5.at_s",
         "failures.events.0.at_s", "model.num_layers", "deployment.router.policy"]), st.text(alphabet="abs._0²\n=", max_size=15)))
    value = draw(OVERRIDE_VALUES)
    sep = draw(st.sampled_from(["=", "=", "=", " = ", ""]))
    return [f"{path}{sep}{value}"] + draw(st.lists(st.sampled_from(["seed=1", "workload.num_requests=3"]), max_size=1))


@settings(max_examples=200, **FUZZ)
@given(data=st.data())
def test_set_overrides_load_or_fail_on_one_line(work, data):
    base = data.draw(st.sampled_from(bases(work)))
    sets = data.draw(overrides(base))
    # an override's error starts with its own dotted path (or the override text, when it has no '=')
    paths = [s.partition("=")[0].strip() for s in sets]
    heads = [p.split(".")[0] for p in paths if p]
    prefixes = scenario_prefixes(base) + tuple(sets + paths + heads + [fmt_key(p) for p in paths + heads]) + ("(empty)",)
    check(lambda: load_and_build(base, sets), prefixes)


# --- inline models, model files, hardware profiles -------------------------------------------------------

@settings(max_examples=150, **FUZZ)
@given(model=mutations(MODEL))
def test_mutated_inline_models_load_or_fail_on_one_line(work, model):
    scenario = dict(bases(work)[0], model=model)
    check(lambda: load_and_build(scenario), ("model", "deployment.", "scheduler.", "kv_cache.", "(top level)"))


@settings(max_examples=80, **FUZZ)
@given(model=mutations(MODEL))
def test_mutated_model_files_load_or_fail_naming_the_file(work, model):
    path = work / "model.yaml"
    path.write_text(_dump(model))
    check(lambda: load_model(str(path)), (f"{path} ", f"{path}: "))
    scenario = dict(bases(work)[0], model=str(path))
    check(lambda: load_and_build(scenario), (f"{path} ", f"{path}: ", "model", "deployment.", "scheduler.", "kv_cache."))


@settings(max_examples=120, **FUZZ)
@given(profile=mutations(H100))
def test_mutated_hardware_profiles_load_or_fail_naming_the_file(work, profile):
    path = work / "hw.yaml"
    path.write_text(_dump(profile))
    check(lambda: load_profile(str(path)), (f"{path} ", f"{path}: "))
    scenario = dict(bases(work)[0], hardware=str(path))
    check(lambda: load_and_build(scenario), (f"{path} ", f"{path}: ", "hardware", "precision.", "pricing",
                                             "deployment.", "kv_cache.", "scheduler."))


@settings(max_examples=60, **FUZZ)
@given(data=st.data())
def test_edited_profile_and_model_files_load_or_fail_naming_the_file(work, data):
    kind = data.draw(st.sampled_from(["hw", "model"]))
    path = work / f"edited-{kind}.yaml"
    path.write_bytes(data.draw(edited_text(_dump(H100 if kind == "hw" else MODEL))))
    check(lambda: (load_profile if kind == "hw" else load_model)(str(path)), (f"{path} ", f"{path}: "))


# --- traces -------------------------------------------------------------------------------------------

def _stamp(seconds: float) -> str:
    return (datetime.datetime(2023, 11, 16, 18, 0, 0) + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%d %H:%M:%S.%f")


BAD_TOKENS = ["0", "-1", "1.5", "abc", "", "nan", "inf", "-inf", "9" * 30, "0x10", "1 2", str(2**60), "١", "1_0"]
GOOD_TOKENS = ["1", "7", "4096", "1.0", " 12 "]
BAD_STAMPS = ["yesterday", "", "12345", "2023-13-45 00:00:00", "2023-11-16 25:00:00", "99999-01-01 00:00:00", "nan"]


@st.composite
def azure_text(draw) -> tuple[str, bool]:
    """An Azure trace of valid and garbage rows, with varied headers, line endings, blank lines and BOM."""
    header = draw(st.sampled_from([AZURE_HEADER, AZURE_HEADER + ",Extra", "ContextTokens,TIMESTAMP,GeneratedTokens",
                                   "TIMESTAMP,ContextTokens", "timestamp,contexttokens,generatedtokens", "", "a;b;c",
                                   '"TIMESTAMP","ContextTokens","GeneratedTokens"']))
    width = header.count(",") + 1
    rows = []
    t = 0.0
    for _ in range(draw(st.integers(0, 8))):
        t += draw(st.sampled_from([0.0, 0.0, 0.5, 3.25, -1.0, 1e6]))
        stamp = draw(st.one_of(st.just(_stamp(t)), st.sampled_from(BAD_STAMPS), st.text(max_size=10)))
        cells = [stamp, draw(st.sampled_from(GOOD_TOKENS + BAD_TOKENS)), draw(st.sampled_from(GOOD_TOKENS + BAD_TOKENS))]
        cells += ["x"] * max(0, width - 3)
        row = ",".join(cells[: draw(st.sampled_from([width, width, width, width - 1, width + 1]))])
        rows.append(draw(st.one_of(st.just(row), st.just(""), st.text(max_size=20))))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    bom = draw(st.sampled_from(["", "", "\ufeff"]))
    return bom + newline.join([header, *rows]) + draw(st.sampled_from(["", newline]))


@st.composite
def mooncake_text(draw) -> str:
    rows = []
    t = 0
    for _ in range(draw(st.integers(0, 8))):
        t += draw(st.sampled_from([0, 0, 40, 1000, -5]))
        row = {"timestamp": t, "input_length": 10, "output_length": 5, "hash_ids": [0, 1]}
        for _ in range(draw(st.integers(0, 2))):
            key = draw(st.sampled_from(list(row) + ["extra"]))
            if draw(st.booleans()):
                row.pop(key, None)
            else:
                row[key] = draw(st.one_of(st.sampled_from([None, True, -1, 0, 1.5, 2**53, 2**70, "5", [], {}, [True], [1.5]]),
                                          st.integers(), st.floats(), st.text(max_size=5)))
        line = json.dumps(row)
        line = draw(st.one_of(st.just(line), st.just(line[: draw(st.integers(0, len(line)))]), st.just(""),
                              st.text(max_size=20), st.just("[1, 2]"), st.just("[" * 5000)))
        rows.append(line)
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    return draw(st.sampled_from(["", "", "\ufeff"])) + newline.join(rows) + draw(st.sampled_from(["", newline]))


def _trace_ok(trace) -> None:
    assert len(trace) >= 1 and trace.time_s[0] == 0 and np.all(np.diff(trace.time_s) >= 0)
    assert np.all(np.isfinite(trace.time_s)) and trace.prompt_tokens.min() >= 1 and trace.output_tokens.min() >= 1


def _check_trace(work: Path, name: str, raw: bytes, reader, fmt: str) -> None:
    path = work / name
    path.write_bytes(raw)
    err = check(lambda: _trace_ok(reader(path)), (f"{path}: ", f"{path}:"))
    scenario = dict(bases(work)[0], workload={"kind": "trace", "path": str(path), "format": fmt})
    err2 = check(lambda: load_and_build(scenario), (f"{path}: ", f"{path}:"))
    assert (err is None) == (err2 is None) and (err is None or str(err) == str(err2))


@settings(max_examples=120, **FUZZ)
@given(text=azure_text(), junk=st.sampled_from([b"", b"", b"\xff\xfe", b"\x00", b"\xc3"]))
def test_random_azure_traces_load_or_fail_with_file_and_line(work, text, junk):
    _check_trace(work, "fuzz.csv", text.encode() + junk, read_azure, "azure")


@settings(max_examples=120, **FUZZ)
@given(text=mooncake_text(), junk=st.sampled_from([b"", b"", b"\xff\xfe", b"\x00", b"\xc3"]))
def test_random_mooncake_traces_load_or_fail_with_file_and_line(work, text, junk):
    _check_trace(work, "fuzz.jsonl", text.encode() + junk, read_mooncake, "mooncake")


@settings(max_examples=100, **FUZZ)
@given(kind=st.sampled_from(["scenario", "profile", "model", "azure", "mooncake"]),
       raw=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_random_bytes_in_any_file_fail_on_one_line(work, kind, raw):
    path = work / f"random-{kind}.txt"
    path.write_bytes(raw)
    load = {"scenario": lambda: load_and_build(str(path)), "profile": lambda: load_profile(str(path)),
            "model": lambda: load_model(str(path)), "azure": lambda: read_azure(path),
            "mooncake": lambda: read_mooncake(path)}[kind]
    check(load, (str(path), "(top level)") if kind != "scenario" else scenario_prefixes({}) + (str(path),))


def test_equal_timestamps_load_and_blank_lines_bom_crlf_are_fine(tmp_path):
    rows = [AZURE_ROWS[0], AZURE_ROWS[0], "", AZURE_ROWS[1]]
    (tmp_path / "t.csv").write_bytes(("\ufeff" + "\r\n".join([AZURE_HEADER, *rows]) + "\r\n").encode())
    assert read_azure(tmp_path / "t.csv").time_s.tolist() == pytest.approx([0.0, 0.0, 0.052])
    (tmp_path / "t.jsonl").write_bytes(("\ufeff" + "\r\n".join([MOON_ROWS[0], MOON_ROWS[0], "", MOON_ROWS[1]])).encode())
    assert read_mooncake(tmp_path / "t.jsonl").time_s.tolist() == [0.0, 0.0, 0.04]


def _layout(draw, rows: list[str], bad: int) -> tuple[str, int]:
    """Join ``rows`` (row 0 is the header for CSV) with a drawn line ending and blank lines; return the
    text and the 1-based line of ``rows[bad]``."""
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    lines = []
    target = 0
    for i, row in enumerate(rows):
        lines += [""] * draw(st.integers(0, 2)) if i else []
        lines.append(row)
        if i == bad:
            target = len(lines)
    return draw(st.sampled_from(["", "\ufeff"])) + newline.join(lines) + newline, target


@settings(max_examples=100, **FUZZ)
@given(data=st.data())
def test_one_bad_azure_row_is_reported_at_its_line(work, data):
    n = data.draw(st.integers(1, 6))
    times = sorted(data.draw(st.lists(st.floats(0, 1e4), min_size=n, max_size=n)))
    rows = [AZURE_HEADER] + [f"{_stamp(t)},{10 + i},{5 + i}" for i, t in enumerate(times)]
    bad = data.draw(st.integers(1, n))
    kind = data.draw(st.sampled_from(["prompt", "output", "stamp", "fields", "earlier"]))
    if kind == "earlier" and bad == 1:
        kind = "stamp"
    cells = rows[bad].split(",")
    if kind == "prompt":
        cells[1] = data.draw(st.sampled_from(BAD_TOKENS))
    elif kind == "output":
        cells[2] = data.draw(st.sampled_from(BAD_TOKENS))
    elif kind == "stamp":
        cells[0] = data.draw(st.sampled_from(BAD_STAMPS))
    elif kind == "fields":
        cells = data.draw(st.sampled_from([cells[:2], cells + ["9"], [",".join(cells) + ",x,y"]]))
    else:
        cells[0] = _stamp(times[bad - 2] - data.draw(st.floats(0.001, 1e4)))
    rows[bad] = ",".join(cells)
    text, line = _layout(data.draw, rows, bad)
    path = work / "bad.csv"
    path.write_text(text, newline="")
    err = check(lambda: read_azure(path))
    assert isinstance(err, TraceError) and err.line == line and str(err).startswith(f"{path}:{line}: "), (kind, str(err))


@settings(max_examples=100, **FUZZ)
@given(data=st.data())
def test_one_bad_mooncake_row_is_reported_at_its_line(work, data):
    n = data.draw(st.integers(1, 6))
    stamps = sorted(data.draw(st.lists(st.integers(0, 10**9), min_size=n, max_size=n)))
    rows = [{"timestamp": t, "input_length": 10, "output_length": 5, "hash_ids": [i]} for i, t in enumerate(stamps)]
    bad = data.draw(st.integers(0, n - 1))
    kind = data.draw(st.sampled_from(["missing", "type", "truncated", "not_object", "duplicate", "earlier", "utf8"]))
    if kind == "earlier" and bad == 0:
        kind = "type"
    lines = [json.dumps(r) for r in rows]
    row = dict(rows[bad])
    if kind == "missing":
        del row[data.draw(st.sampled_from(sorted(row)))]
        lines[bad] = json.dumps(row)
    elif kind == "type":
        key = data.draw(st.sampled_from(sorted(row)))
        row[key] = data.draw(st.sampled_from([None, "5", -1, [1.5], [True], {}, True, 0 if key != "timestamp" else -0.5,
                                              1.5 if key != "timestamp" else -2.5, 2**70 if key != "hash_ids" else "x"]))
        lines[bad] = json.dumps(row)
    elif kind == "truncated":
        lines[bad] = lines[bad][: data.draw(st.integers(1, len(lines[bad]) - 1))]
    elif kind == "not_object":
        lines[bad] = data.draw(st.sampled_from(["[1, 2]", "7", '"row"', "null", "true", "[" * 5000]))
    elif kind == "duplicate":
        lines[bad] = lines[bad][:-1] + ', "input_length": 3}'
    elif kind == "earlier":
        row["timestamp"] = stamps[bad - 1] - data.draw(st.integers(1, 1000))
        lines[bad] = json.dumps(row)
    text, line = _layout(data.draw, ["", *lines], bad + 1)  # a leading blank line, so row i is never line 1 by luck
    raw = text.encode()
    if kind == "utf8":  # an invalid byte inside the bad row's hash_ids
        offset = raw.index(lines[bad].encode())
        raw = raw[:offset] + lines[bad].encode().replace(b"[", b'["\xff",') + raw[offset + len(lines[bad].encode()):]
    path = work / "bad.jsonl"
    path.write_bytes(raw)
    err = check(lambda: read_mooncake(path))
    assert isinstance(err, TraceError) and err.line == line and str(err).startswith(f"{path}:{line}: "), (kind, str(err))


# --- YAML: nesting, aliases, tags, size, encoding -------------------------------------------------------

def _timed_error(fn, limit_s: float = 2.0) -> str:
    start = time.perf_counter()
    err = check(fn)
    assert err is not None, "expected an error"
    assert time.perf_counter() - start < limit_s, f"took {time.perf_counter() - start:.1f} s"
    return str(err)


BILLION_LAUGHS = "\n".join(['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'] + [
    f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]" for p, c in zip("abcdefgh", "bcdefghi")])


@pytest.mark.parametrize("text, words", [
    ("[" * 10_000, "nested more than"),
    ("[" * 10_000 + "]" * 10_000, "nested more than"),
    ("a: " + "{b: " * 10_000, "nested more than"),
    ("".join(" " * i + "- \n" for i in range(2_000)), "nested more than"),
    (BILLION_LAUGHS, "expands to more than"),
    ("a: &a 1\nb: [" + ",".join(["*a"] * 200) + "]", "more than 100 YAML aliases"),
    ("name: &a [*a]\n", "nested more than"),
    ("a: &a {x: 1}\nb: {<<: *a}\n", "merge keys"),
    ("a: 1\na: 2\n", "duplicate key 'a'"),
    ("!!python/object/apply:os.system ['echo pwned']\n", "python/object/apply:os.system"),
    ("model: !!python/object:collections.OrderedDict {}\n", "python/object:collections.OrderedDict"),
    ("model: !!python/name:os.system\n", "python/name:os.system"),
    ("hardware: !include other.yaml\n", "!include"),
    ("seed: " + "9" * 5000 + "\n", "invalid int"),
    ("seed: 0x" + "f" * 5000 + "\n", "fits in 64 bits"),
    ("a: 2023-02-30\n", "invalid timestamp"),
    ("? [1]\n: 2\n", "a mapping key must be a scalar"),
    ("a: !!set [1]\n", "expected a mapping"),
    ("a: \x07\n", "character '\\x07' is not allowed"),
    ("a: 1\n---\nb: 2\n", "another document"),
], ids=lambda v: repr(v)[:30])
def test_hostile_yaml_is_refused_quickly_on_one_line(tmp_path, text, words):
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    msg = _timed_error(lambda: load_scenario(str(path)))
    assert msg.startswith(f"{path} ") or msg.startswith(("(top level)", "seed: ", "name: ")), msg
    assert words in msg, msg
    # the same text as a hardware profile, a model file and a --set value
    assert words in _timed_error(lambda: load_profile(str(path)))
    assert words in _timed_error(lambda: load_model(str(path)))
    if "\n" not in text.rstrip("\n"):
        assert _timed_error(lambda: load_scenario(synthetic_base(), [f"description={text}"])).startswith("description")


def test_aliases_themselves_are_allowed():
    data = yamlio.loads("slo: &bound {ttft_ms: 500}\nother: *bound\n")
    assert data["other"] == {"ttft_ms": 500}


def test_oversized_file_is_refused_without_reading_it(tmp_path, monkeypatch):
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:  # sparse: costs no disk
        f.truncate(yamlio.MAX_FILE_BYTES + 1)

    def no_reading(*args, **kwargs):
        raise AssertionError("the oversized file was opened")

    monkeypatch.setattr(pathlib.Path, "open", no_reading)
    monkeypatch.setattr(pathlib.Path, "read_bytes", no_reading)
    monkeypatch.setattr(builtins, "open", no_reading)
    for fn in (lambda: load_scenario(str(big)), lambda: load_profile(str(big)), lambda: load_model(str(big))):
        msg = _timed_error(fn, limit_s=1.0)
        assert msg == f"{big}: file is {yamlio.MAX_FILE_BYTES + 1} bytes; the limit is {yamlio.MAX_FILE_BYTES}"


def test_a_file_that_grows_past_the_limit_is_cut_off(tmp_path, monkeypatch):
    monkeypatch.setattr(yamlio, "MAX_FILE_BYTES", 100)
    path = tmp_path / "s.yaml"
    path.write_text("a: 1\n" * 100)
    # stat() said 50 bytes (the file grew after it, or is not a regular file): reading stops at the limit
    monkeypatch.setattr(pathlib.Path, "stat", lambda self, **kw: type("Stat", (), {"st_size": 50})())
    assert _timed_error(lambda: yamlio.load_file(path)) == f"{path}: file is over 100 bytes, the limit"


@pytest.mark.parametrize("raw, words", [
    (b"", "the scenario is empty"),
    (b"   \n# only a comment\n", "the scenario is empty"),
    (b"model: \xff\xfe\n", "not UTF-8 text (byte 7)"),
    (b"\xef\xbb\xbfname: x\n", "model: required key is missing"),  # a BOM is fine; the rest is checked
    ("name: x\r\nmodel: [\r\n".encode(), "invalid YAML"),
    (b"- just\n- a list\n", "a scenario must be a mapping, got list"),
    (b"just text", "a scenario must be a mapping, got str"),
    (b"\x00\x01\x02", "is not allowed"),
])
def test_empty_binary_and_wrong_shape_files(tmp_path, raw, words):
    path = tmp_path / "s.yaml"
    path.write_bytes(raw)
    msg = _timed_error(lambda: load_scenario(str(path)))
    assert words in msg and msg.startswith((str(path), "(top level)", "model")), msg


# --- which keys may name a file -------------------------------------------------------------------------

def _string_leaves(data, prefix=()) -> list[tuple]:
    return [p for p in _paths(data, prefix) if isinstance(_parent(data, p)[p[-1]], str)]


def test_only_the_documented_keys_open_files(work, monkeypatch):
    sentinel = work / "sentinel.yaml"
    sentinel.write_text("name: sentinel\n")
    opened: list[Path] = []
    real_open, real_builtin_open = pathlib.Path.open, builtins.open

    def path_open(self, *args, **kwargs):
        opened.append(Path(self).resolve())
        return real_open(self, *args, **kwargs)

    def builtin_open(file, *args, **kwargs):
        if isinstance(file, (str, Path)):
            opened.append(Path(file).resolve())
        return real_builtin_open(file, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", path_open)
    monkeypatch.setattr(builtins, "open", builtin_open)
    tried = set()
    for base in bases(work):
        leaves = _string_leaves(base) + [("extra",), ("include",), ("slo", "file"), ("deployment", "router", "path")]
        for path in leaves:
            data = _apply(base, [("add", path[:-1], path[-1], str(sentinel))])
            opened.clear()
            check(lambda: load_and_build(data))
            read = sentinel.resolve() in opened
            assert read == (path in FILE_KEYS), f"{'.'.join(map(str, path))}: sentinel {'read' if read else 'not read'}"
            tried.add(path)
    assert FILE_KEYS <= tried


# --- the command line -----------------------------------------------------------------------------------

def _cli(args: list[str]) -> None:
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, (res.exit_code, res.output, res.stderr, res.exception)
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stderr + res.output and res.stdout == ""


@pytest.fixture
def cli_files(tmp_path) -> dict[str, Path]:
    (tmp_path / "trace.csv").write_text(f"{AZURE_HEADER}\n{AZURE_ROWS[0]}\n2023-11-16 18:17:04.0,0,5\n")
    files = {
        "good": yaml.safe_dump(synthetic_base()),
        "python_tag": "!!python/object/apply:os.system ['echo pwned']\n",
        "not_utf8": b"model: \xff\n",
        "empty": "",
        "alias_bomb": BILLION_LAUGHS,
        "deep": "[" * 10_000,
        "bad_trace": yaml.safe_dump(dict(synthetic_base(), workload={"kind": "trace", "path": "trace.csv", "format": "azure"})),
        "unknown_key": yaml.safe_dump(dict(synthetic_base(), schedular={})),
        "no_fit": yaml.safe_dump(dict(synthetic_base(), model="llama-3.1-405b")),
    }
    for name, content in files.items():
        (tmp_path / f"{name}.yaml").write_bytes(content if isinstance(content, bytes) else content.encode())
    return {name: tmp_path / f"{name}.yaml" for name in files}


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("case, sets", [
    ("python_tag", []), ("not_utf8", []), ("empty", []), ("alias_bomb", []), ("deep", []), ("bad_trace", []),
    ("unknown_key", []), ("no_fit", []),
    ("good", ["nonsense"]), ("good", ["seed=" + "[" * 10_000]), ("good", ["scheduler.max_num_seqs=.nan"]),
    ("good", ["seed=!!python/object/apply:os.system [ls]"]), ("good", ["workload.num_requests=" + str(2**70)]),
    ("good", ["deployment.tensor_parallel=3"]), ("good", ["a..b=1"]), ("good", ["hardware=nope"]),
], ids=lambda v: str(v)[:30])
def test_cli_bad_input_exits_2_with_one_error_line(cli_files, tmp_path, command, case, sets):
    extra = ["--out", str(tmp_path / "out")] if command == "run" else []
    _cli([command, str(cli_files[case]), *[a for s in sets for a in ("--set", s)], *extra])


def test_cli_missing_scenario_exits_2(tmp_path):
    _cli(["validate", str(tmp_path / "nope.yaml")])


@settings(max_examples=25, **FUZZ)
@given(data=st.data())
def test_cli_validate_on_mutated_scenarios(work, data):
    scenario = data.draw(mutations(synthetic_base()))
    path = work / "cli.yaml"
    path.write_text(_dump(scenario))
    res = CliRunner().invoke(main, ["validate", str(path)])
    if res.exit_code == 0:
        assert res.stdout.startswith("ok: ") and res.stderr == ""
        return
    if isinstance(res.exception, Exception) and _known_bug(res.exception):  # (SystemExit is not an Exception)
        return
    assert res.exit_code == 2, (res.exit_code, res.stderr, res.exception)
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


# --- docs/errors.md quotes the code ------------------------------------------------------------------

DOC_SETS = [  # (--set overrides of the docs' scenario.yaml, the message docs/errors.md quotes)
    (["scheduler.max_num_seq=3"], "scheduler.max_num_seq: unknown key 'max_num_seq' (did you mean 'max_num_seqs'?); allowed: max_num_seqs, max_num_batched_tokens, max_model_len, policy, chunked_prefill"),
    (["workload_kind=trace"], "workload_kind: unknown key 'workload_kind' (did you mean 'workload'?); allowed: name, description, seed, model, hardware, precision, deployment, scheduler, kv_cache, workload, slo, cost_model, pricing, run, admission, failures"),
    (["workload.arrival={process: poisson}"], "workload.arrival.rate_per_s: required key is missing"),
    (["seed=1.5"], "seed: must be an integer, got 1.5"),
    (["scheduler.max_num_seqs='64'"], "scheduler.max_num_seqs: must be an integer, got '64'"),
    (["scheduler.chunked_prefill=1"], "scheduler.chunked_prefill: must be true or false, got 1"),
    (["model=[llama-3.1-8b]"], "model: must be a string or a mapping, got ['llama-3.1-8b']"),
    (["slo={1: 500}"], "slo.1: a key must be a string, got 1"),
    (["scheduler.max_num_seqs=0"], "scheduler.max_num_seqs: must be >= 1, got 0"),
    (["kv_cache.layout=contiguous", "kv_cache.gpu_memory_utilization=0.3"], "scheduler.max_model_len: the contiguous KV layout reserves max_model_len=131072 tokens (17.18 GB) per request, but the KV cache has 6.84 GB (52,151 tokens); lower scheduler.max_model_len or use kv_cache.layout: paged"),
    (["kv_cache.layout=contiguous", "kv_cache.enable_prefix_caching=true"], "kv_cache.enable_prefix_caching: needs kv_cache.layout: paged (blocks are shared by content)"),
    (["kv_cache.gpu_memory_utilization=1.5"], "kv_cache.gpu_memory_utilization: must be <= 1, got 1.5"),
    (["workload.prompt_tokens={dist: uniform, low: 500, high: 10}"], "workload.prompt_tokens.high: must be >= low (500), got 10"),
    (["slo.ttft_ms=.inf"], "slo.ttft_ms: must be a finite number, got inf"),
    (["workload.arrival.rate_per_s=.nan"], "workload.arrival.rate_per_s: must be a finite number, got nan"),
    (["seed=18446744073709551616"], "seed: must be an integer that fits in 64 bits, got 18446744073709551616"),
    (["scheduler.policy=fcfs"], "scheduler: unknown policy 'fcfs'; known: 'continuous', 'dynamic', 'speculative', 'static'"),
    (["deployment.router.policy=random"], "deployment.router: unknown policy 'random'; known: 'least_kv', 'least_outstanding', 'prefix_affinity', 'round_robin'"),
    (["cost_model.kind=magic"], "cost_model: unknown kind 'magic'; known: 'constant', 'linear', 'roofline'"),
    (["hardware=h10"], "hardware: unknown profile 'h10', known: a100-sxm-40gb, a100-sxm-80gb, a40-48gb, b200-180gb, cerebras-cs3, groq-lpu, h100-sxm-80gb, h200-sxm-141gb (or a path to a .yaml file)"),
    (["model=llama-9"], "model: unknown model 'llama-9', known: codellama-34b, gpt-j-6b, internlm-20b, llama-2-13b, llama-2-70b, llama-2-7b, llama-3-70b, llama-3-8b, llama-3.1-405b, llama-3.1-70b, llama-3.1-8b, llama-3.3-70b, mistral-7b, mixtral-8x7b, opt-13b, phi-2, qwen-72b (or a path, or an inline mapping)"),
    (["precision.weights=int3"], "precision.weights: must be one of 'fp16', 'bf16', 'fp8', 'int8', 'int4' or 'fp4', got 'int3'"),
    (["pricing=spot"], "pricing: unknown pricing model 'spot' for h100-sxm-80gb; known: on_demand"),
    (["workload={kind: trace, path: azure-conversation}"], "workload.path: no bundled workload or file 'azure-conversation'; bundled: azure-code, azure-conv, mooncake-conversation, mooncake-synthetic"),
    (["workload={kind: trace, path: t.csv}"], "workload.format: required for 't.csv' (not a bundled workload): azure or mooncake"),
    (["model=llama-2-70b"], "deployment.tensor_parallel: llama-2-70b needs 138.0 GB of weights per device at tensor_parallel=1 (2 bytes/param), but h100-sxm-80gb has 80.0 GB (72.0 GB usable at gpu_memory_utilization=0.9); raise tensor_parallel or use a smaller weight precision"),
    (["kv_cache.gpu_memory_utilization=0.21"], "kv_cache.gpu_memory_utilization: no room for the KV cache: 16.80 GB usable - 16.06 GB weights - 1.10 GB activations (max_num_batched_tokens=8192) leaves less than one block of 16 tokens; raise tensor_parallel, the memory fraction, or lower scheduler.max_num_batched_tokens"),
    (["deployment.tensor_parallel=3"], "deployment.tensor_parallel: must divide the model's 32 attention heads, got 3"),
    (["scheduler.max_model_len=200000"], "scheduler.max_model_len: must be <= the model's max_context (131072), got 200000"),
    (["scheduler.max_num_batched_tokens=8"], "scheduler.max_num_batched_tokens: must be >= scheduler.max_num_seqs (256), got 8"),
    (["hardware=a100-sxm-80gb", "precision.activations=fp8"], "precision.activations: a100-sxm-80gb has no fp8 compute; it has: bf16, fp16, int8"),
    (["failures.events.0.replica=3"], "failures.events.0.replica: must be < deployment.replicas (1), got 3"),
    (["model={" + ", ".join(f"{k}: {v}" for k, v in dict(MODEL, num_kv_heads=5).items()) + "}"], "model: num_heads (32) must be a multiple of num_kv_heads (5)"),
    (["workload={kind: trace, path: azure-conv, start_s: 99999}"], "workload.start_s: no requests at or after 99999.0 s; 'azure-conv' spans 3501.7 s"),
    (["workload={kind: trace, path: azure-conv, time_scale: 1e308}"], "workload.time_scale: 1e+308 times the trace's 3501.7 s overflows; use a smaller time_scale"),
    (["hardware=my-gpu.yaml"], "my-gpu.yaml memory.bandwidth_gb_s: required key is missing"),
    (["model=my-model.yaml"], "my-model.yaml ffn_gated: must be true or false, got 'yes'"),
    (["model=list.yaml"], "list.yaml: a model file must be a mapping"),
    (["max_num_seqs"], "max_num_seqs: an override is 'dotted.path=value'"),
    (["scheduler..max_num_seqs=1"], "scheduler..max_num_seqs: not a dotted path like 'scheduler.max_num_seqs'"),
    (["seed.x=1"], "seed: is 0, not a mapping; cannot set 'seed.x'"),
    (["failures.events.4.at_s=1"], "failures.events.4: no list item 4"),
    (["scheduler={policy: continuous"], "scheduler line 1: invalid YAML: expected ',' or '}', but got '<stream end>'"),
]
DOC_FILES = [  # (file, its content, the message): scenario files, then traces
    ("s1.yaml", "name: x\nscheduler: {policy: continuous\n", "s1.yaml line 3: invalid YAML: expected ',' or '}', but got '<stream end>'"),
    ("s2.yaml", "name: a\nseed: 1\nname: b\n", "s2.yaml line 3: duplicate key 'name'"),
    ("s3.yaml", "name: x\nscheduler:\n\tpolicy: continuous\n", "s3.yaml line 3: invalid YAML: found character '\\t' that cannot start any token"),
    ("s4.yaml", "model: !!python/object/apply:os.system ['rm -rf ~']\n", "s4.yaml line 1: invalid YAML: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'"),
    ("s5.yaml", "hardware: !include gpu.yaml\n", "s5.yaml line 1: invalid YAML: could not determine a constructor for the tag '!include'"),
    ("s6.yaml", "base: &b {max_num_seqs: 8}\nscheduler: {<<: *b, policy: continuous}\n", "s6.yaml line 2: merge keys ('<<') are not supported"),
    ("s7.yaml", "a: &a 1\nb: [" + ",".join(["*a"] * 101) + "]\n", "s7.yaml line 2: more than 100 YAML aliases; refused"),
    ("s8.yaml", BILLION_LAUGHS, "s8.yaml (top level): the document expands to more than 1,000,000 values through aliases; refused"),
    ("s9.yaml", "a: " + "[" * 10_000, "s9.yaml line 1: nested more than 100 levels deep"),
    ("s10.yaml", "name: &n [*n]\n", "name: nested more than 100 levels deep"),
    ("s11.yaml", "name: x\ndescription: 2023-02-30\n", "s11.yaml line 2: invalid timestamp '2023-02-30' (day is out of range for month)"),
    ("s12.yaml", "seed: " + "9" * 5000 + "\n", "s12.yaml line 1: invalid int '999999999999999999999999999...9999999999999999999999999999' (Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits)"),
    ("s13.yaml", b"name: caf\xe9\n", "s13.yaml: not UTF-8 text (byte 9)"),
    ("s14.yaml", "name: a\x07b\n", "s14.yaml line 1: invalid YAML: character '\\x07' is not allowed"),
    ("s15.yaml", "", "(top level): the scenario is empty"),
    ("s16.yaml", "- name: x\n", "(top level): a scenario must be a mapping, got list"),
    ("s17.yaml", "name: a\n---\nname: b\n", "s17.yaml line 2: invalid YAML: but found another document"),
    ("nope.yaml", None, "nope.yaml: no such scenario file or bundled scenario; bundled: dynamic-batching, least-kv-router, prefix-affinity-router, quantization-llama2-70b-a100-int4, quantization-llama2-70b-a100-int8, quantization-llama3-8b-a100-w4a8-kv4, quantization-llama31-70b-b200-fp4, quantization-llama31-70b-h100-fp8, quantization-mistral-7b-a100-fp8-weights, quickstart, static-batching"),
    ("a1.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:17:03,10\n", "a1.csv:1: missing column(s) GeneratedTokens; an Azure trace has TIMESTAMP,ContextTokens,GeneratedTokens"),
    ("a2.csv", f"{AZURE_HEADER}\n{AZURE_ROWS[0]}\n2023-11-16 18:17:04,10\n", "a2.csv:3: expected 3 fields like the header, found 2"),
    ("a3.csv", f"{AZURE_HEADER}\n{AZURE_ROWS[0]}\n2023-11-16 18:17:04,0,5\n", "a3.csv:3: ContextTokens must be an integer >= 1, got '0'"),
    ("a3b.csv", f"{AZURE_HEADER}\n{AZURE_ROWS[0]}\n2023-11-16 18:17:04,12.5,5\n", "a3b.csv:3: ContextTokens must be an integer >= 1, got '12.5'"),
    ("a4.csv", f"{AZURE_HEADER}\n{AZURE_ROWS[0]}\nyesterday,10,5\n", "a4.csv:3: TIMESTAMP 'yesterday' is not a datetime"),
    ("a5.csv", f"{AZURE_HEADER}\n2023-11-16 18:17:05,10,5\n{AZURE_ROWS[0]}\n", "a5.csv:3: timestamp '2023-11-16 18:17:03.9799600' is earlier than the previous one '2023-11-16 18:17:05'"),
    ("a6.csv", f"{AZURE_HEADER}\n", "a6.csv: no requests (only a header)"),
    ("a7.csv", "", "a7.csv: empty file"),
    ("a8.csv", f"{AZURE_HEADER}\n{AZURE_ROWS[0]}\n".encode() + b"2023-11-16 18:17:04,1\xff,5\n", "a8.csv:3: not UTF-8 text"),
    ("m1.jsonl", MOON_ROWS[0] + '\n{"timestamp": 40, "input_length": 10,\n', "m1.jsonl:2: malformed JSON: Expecting property name enclosed in double quotes (column 38)"),
    ("m2.jsonl", MOON_ROWS[0] + '\n{"timestamp": 40, "input_length": 10}\n', "m2.jsonl:2: missing key(s) output_length, hash_ids; a Mooncake row has timestamp, input_length, output_length, hash_ids"),
    ("m3.jsonl", MOON_ROWS[0] + '\n{"timestamp": 40, "input_length": 10.5, "output_length": 5, "hash_ids": []}\n', "m3.jsonl:2: input_length must be an integer >= 1, got 10.5"),
    ("m4.jsonl", MOON_ROWS[0] + '\n{"timestamp": 40, "timestamp": 50, "input_length": 10, "output_length": 5, "hash_ids": []}\n', "m4.jsonl:2: duplicate key 'timestamp'"),
    ("m5.jsonl", MOON_ROWS[2] + "\n" + MOON_ROWS[0] + "\n", "m5.jsonl:2: timestamp 0 is earlier than the previous one 90"),
    ("m6.jsonl", MOON_ROWS[0].replace('"timestamp": 0', '"timestamp": -3') + "\n", "m6.jsonl:1: timestamp must be a number of milliseconds >= 0, got -3"),
]


def _stable(message: str) -> str:
    """A message without its list of known names or keys, which grows as the project does."""
    return re.split(r"[;,] (?:known|bundled|allowed): ", message)[0]


def test_docs_errors_md_examples_are_what_the_code_says(tmp_path, monkeypatch):
    doc = (ROOT / "docs" / "errors.md").read_text()
    monkeypatch.chdir(tmp_path)
    Path("scenario.yaml").write_text(yaml.safe_dump(synthetic_base(), sort_keys=False))
    profile = copy.deepcopy(H100)
    del profile["memory"]["bandwidth_gb_s"]
    Path("my-gpu.yaml").write_text(yaml.safe_dump(profile))
    Path("my-model.yaml").write_text(yaml.safe_dump(dict(MODEL, ffn_gated="yes")))
    Path("list.yaml").write_text("- a\n")
    Path("t.csv").write_text(f"{AZURE_HEADER}\n{AZURE_ROWS[0]}\n")
    readers = {".csv": read_azure, ".jsonl": read_mooncake}
    cases = [(lambda sets=sets: load_and_build("scenario.yaml", sets), message) for sets, message in DOC_SETS]
    for name, content, message in DOC_FILES:
        if content is not None:
            Path(name).write_bytes(content if isinstance(content, bytes) else content.encode())
        read = readers.get(Path(name).suffix, lambda n: load_and_build(n))
        cases.append((lambda read=read, name=name: read(name), message))
    for fn, message in cases:
        assert _stable(str(check(fn))) == _stable(message)
        assert f"`{_stable(message)}" in doc, f"docs/errors.md does not quote: {message}"


# --- reproducers of KNOWN_BUGS (fixed outside this file's owner's modules) --------------------------------

def test_bug_huge_num_requests_is_a_scenario_error():
    with pytest.raises(ScenarioError):
        load_and_build(synthetic_base(), ["workload.num_requests=4611686018427387904"])


@pytest.mark.parametrize("sets", [["workload.arrival.cv=1e300"], ["workload.arrival.cv=1e-300"],
                                  ["workload.arrival.rate_per_s=5e-324"]])
def test_bug_extreme_gamma_is_a_scenario_error(sets):
    with pytest.raises(ScenarioError):
        load_and_build(synthetic_base(), sets)


@pytest.mark.parametrize("sets", [
    ["workload.arrival={process: constant, rate_per_s: 5e-324}"],  # arrivals i / rate = inf
    ["workload.output_tokens={dist: normal, mean: 1e308, std: 1e308, max: 9223372036854775807}"],  # float(2**63-1) -> int64 wraps
])
def test_bug_synthetic_overflow_is_a_scenario_error(sets):
    with pytest.raises(ScenarioError):
        load_and_build(synthetic_base(), sets)


def test_bug_huge_memory_capacity_is_a_scenario_error(tmp_path):
    profile = copy.deepcopy(H100)
    profile["memory"]["capacity_gb"] = 1e308
    (tmp_path / "hw.yaml").write_text(yaml.safe_dump(profile))
    with pytest.raises(ScenarioError):
        load_scenario(dict(synthetic_base(), hardware=str(tmp_path / "hw.yaml")))


@pytest.mark.parametrize("key", ["hardware", "model"])
def test_bug_overlong_names_are_scenario_errors(key):
    with pytest.raises(ScenarioError):
        load_scenario(synthetic_base(), [f"{key}={'x' * 300}"])


@pytest.mark.parametrize("sets", [['hardware="a\\nb"'], ['model="a\\nb"'], ['pricing="a\\nb"'], ["a\nb"], [""]])
def test_bug_names_with_newlines_stay_on_one_line(sets):
    with pytest.raises(ScenarioError) as err:
        load_scenario(synthetic_base(), sets)
    assert "\n" not in str(err.value) and err.value.path
