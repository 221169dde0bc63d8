"""Workloads: synthetic generators (exact and statistical), trace replay, strict trace readers, config errors."""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simserve.config.base import Frozen, validate
from simserve.config.yamlio import loads
from simserve.errors import ScenarioError, TraceError
from simserve.resources import data_dir
from simserve.workload import RequestSpecs, build, read_azure, read_mooncake
from simserve.workload.config import SyntheticWorkload, TraceWorkload, WorkloadConfig

ROOT = Path(__file__).resolve().parent.parent
FIXED = {"dist": "fixed", "value": 7}


class Scenario(Frozen):
    """Stand-in for the scenario model: only its ``workload`` key."""

    workload: WorkloadConfig


def synth(arrival: dict, n: int = 4, prompt: dict = FIXED, output: dict = FIXED) -> SyntheticWorkload:
    data = {"kind": "synthetic", "num_requests": n, "arrival": arrival,
            "prompt_tokens": prompt, "output_tokens": output}
    return validate(SyntheticWorkload, data)


def run(cfg, seed: int = 0, base_dir: Path | None = None) -> RequestSpecs:
    return build(cfg, np.random.default_rng(seed), base_dir)


def trace(base_dir: Path | None = None, **keys) -> RequestSpecs:
    return run(validate(TraceWorkload, {"kind": "trace", **keys}), base_dir=base_dir)


# --- synthetic: exact ----------------------------------------------------------------------------

def test_constant_rate_arrivals_are_evenly_spaced_from_zero():
    specs = run(synth({"process": "constant", "rate_per_s": 2}, n=5))
    assert specs.arrival_s.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert specs.arrival_s.dtype == np.float64 and len(specs) == 5


def test_offline_puts_every_request_at_zero_with_fixed_lengths():
    specs = run(synth({"process": "offline"}, n=3, output={"dist": "fixed", "value": 2}))
    assert specs.arrival_s.tolist() == [0.0, 0.0, 0.0]
    assert specs.prompt_tokens.tolist() == [7, 7, 7] and specs.output_tokens.tolist() == [2, 2, 2]
    assert specs.prompt_tokens.dtype == np.int64
    assert specs.closed_loop_users is None and specs.prefix_hashes is None


def test_closed_loop_leaves_issuing_to_the_engine():
    specs = run(synth({"process": "closed_loop", "users": 3, "think_time_s": 1.5}, n=6))
    assert specs.arrival_s.tolist() == [0.0] * 6
    assert (specs.closed_loop_users, specs.think_time_s) == (3, 1.5)


def test_single_poisson_request_arrives_at_zero():
    assert run(synth({"process": "poisson", "rate_per_s": 1}, n=1)).arrival_s.tolist() == [0.0]


def test_uniform_lengths_include_both_ends():
    specs = run(synth({"process": "offline"}, n=2000, prompt={"dist": "uniform", "low": 3, "high": 5}))
    assert set(specs.prompt_tokens.tolist()) == {3, 4, 5}
    one = run(synth({"process": "offline"}, n=10, prompt={"dist": "uniform", "low": 9, "high": 9}))
    assert one.prompt_tokens.tolist() == [9] * 10


def test_zero_spread_distributions_are_exact_and_clipped():
    normal = {"dist": "normal", "mean": 100.4, "std": 0, "max": 1000}
    clipped = {"dist": "lognormal", "median": 5000, "sigma": 0, "min": 1, "max": 4096}
    specs = run(synth({"process": "offline"}, n=3, prompt=normal, output=clipped))
    assert specs.prompt_tokens.tolist() == [100] * 3 and specs.output_tokens.tolist() == [4096] * 3


def test_request_specs_are_read_only():
    specs = run(synth({"process": "poisson", "rate_per_s": 1}))
    with pytest.raises(ValueError):
        specs.arrival_s[0] = 5.0
    with pytest.raises(ValueError, match="non-decreasing"):
        RequestSpecs(np.array([1.0, 0.0]), np.array([1, 1]), np.array([1, 1]))
    with pytest.raises(ValueError, match=">= 1"):
        RequestSpecs(np.array([0.0]), np.array([0]), np.array([1]))


# --- synthetic: statistics with fixed seeds -------------------------------------------------------

N = 20_000


def test_poisson_mean_gap_and_cv():
    gaps = np.diff(run(synth({"process": "poisson", "rate_per_s": 4}, n=N), seed=1).arrival_s)
    assert gaps.mean() == pytest.approx(0.25, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("cv", [0.5, 3.0])
def test_gamma_keeps_the_rate_and_sets_the_cv(cv):
    gaps = np.diff(run(synth({"process": "gamma", "rate_per_s": 10, "cv": cv}, n=N), seed=2).arrival_s)
    assert gaps.mean() == pytest.approx(0.1, rel=0.06)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.08)


def test_lognormal_median_and_normal_moments():
    lognormal = {"dist": "lognormal", "median": 800, "sigma": 0.7, "max": 10**6}
    normal = {"dist": "normal", "mean": 300, "std": 50, "min": 1, "max": 10**6}
    specs = run(synth({"process": "offline"}, n=N, prompt=lognormal, output=normal), seed=3)
    assert np.median(specs.prompt_tokens) == pytest.approx(800, rel=0.03)
    assert np.std(np.log(specs.prompt_tokens)) == pytest.approx(0.7, rel=0.03)
    assert specs.output_tokens.mean() == pytest.approx(300, rel=0.01)
    assert specs.output_tokens.std() == pytest.approx(50, rel=0.03)


def test_same_seed_same_workload_different_seed_differs():
    cfg = synth({"process": "gamma", "rate_per_s": 3, "cv": 2}, n=500,
                prompt={"dist": "lognormal", "median": 500, "sigma": 1, "max": 8000},
                output={"dist": "uniform", "low": 1, "high": 1000})
    a, b, c = run(cfg, seed=42), run(cfg, seed=42), run(cfg, seed=43)
    for column in ("arrival_s", "prompt_tokens", "output_tokens"):
        assert np.array_equal(getattr(a, column), getattr(b, column))
        assert not np.array_equal(getattr(a, column), getattr(c, column))


def test_empirical_lengths_come_from_the_trace():
    conv = read_azure(data_dir("workloads") / "azure-conv.csv")
    specs = run(synth({"process": "offline"}, n=3000,
                      prompt={"dist": "empirical", "path": "azure-conv", "column": "prompt"},
                      output={"dist": "empirical", "path": "azure-conv", "column": "output"}))
    assert set(specs.prompt_tokens.tolist()) <= set(conv.prompt_tokens.tolist())
    assert set(specs.output_tokens.tolist()) <= set(conv.output_tokens.tolist())
    assert np.median(specs.prompt_tokens) == pytest.approx(np.median(conv.prompt_tokens), rel=0.05)


def test_empirical_user_file_needs_a_format(tmp_path):
    (tmp_path / "t.csv").write_text(AZURE_HEADER + ROW_A + ROW_B)
    bare = {"dist": "empirical", "path": "t.csv", "column": "output"}
    with pytest.raises(ScenarioError) as err:
        run(synth({"process": "offline"}, output=bare), base_dir=tmp_path)
    assert err.value.path == "workload.output_tokens.format"
    specs = run(synth({"process": "offline"}, n=50, output={**bare, "format": "azure"}), base_dir=tmp_path)
    assert set(specs.output_tokens.tolist()) == {5, 6}


# --- trace replay --------------------------------------------------------------------------------

def test_azure_conv_first_2000_requests():
    full = read_azure(data_dir("workloads") / "azure-conv.csv")
    specs = trace(path="azure-conv", limit=2000)
    assert len(specs) == 2000 and specs.arrival_s[0] == 0.0
    assert np.all(np.diff(specs.arrival_s) >= 0)
    assert np.array_equal(specs.arrival_s, full.time_s[:2000])
    assert np.array_equal(specs.prompt_tokens, full.prompt_tokens[:2000])
    assert specs.prompt_tokens[:2].tolist() == [374, 396] and specs.output_tokens[:2].tolist() == [44, 109]
    assert specs.arrival_s[1] == pytest.approx(50.9951690 - 46.6805900)
    assert specs.prefix_hashes is None


def test_time_scale_multiplies_inter_arrival_times():
    normal, fast = trace(path="azure-conv", limit=2000), trace(path="azure-conv", limit=2000, time_scale=0.5)
    assert fast.arrival_s[-1] == pytest.approx(normal.arrival_s[-1] / 2)
    assert np.allclose(fast.arrival_s, normal.arrival_s * 0.5)
    assert np.array_equal(fast.output_tokens, normal.output_tokens)


def test_start_s_skips_earlier_requests_and_shifts_to_zero():
    full = read_azure(data_dir("workloads") / "azure-conv.csv")
    specs = trace(path="azure-conv", start_s=600, limit=100)
    first = int(np.argmax(full.time_s >= 600))
    assert full.time_s[first - 1] < 600 <= full.time_s[first]
    assert specs.arrival_s[0] == 0.0 and len(specs) == 100
    assert np.allclose(specs.arrival_s, full.time_s[first:first + 100] - full.time_s[first])
    assert np.array_equal(specs.prompt_tokens, full.prompt_tokens[first:first + 100])


def test_whole_trace_and_start_beyond_the_end():
    assert len(trace(path="azure-code")) == 8819
    with pytest.raises(ScenarioError) as err:
        trace(path="azure-code", start_s=10**6)
    assert err.value.path == "workload.start_s"


def test_mooncake_hash_ids_come_through():
    specs = trace(path="mooncake-synthetic", limit=50)
    assert specs.prefix_block_tokens == 512 and len(specs.prefix_hashes) == 50
    assert specs.prefix_hashes[0] == tuple(range(79)) and specs.prefix_hashes[1][0] == 79
    assert specs.prompt_tokens[0] == 40160 and specs.arrival_s[2] == pytest.approx(0.040)
    for hashes, prompt in zip(specs.prefix_hashes, specs.prompt_tokens):
        assert len(hashes) == -(-int(prompt) // 512)
    conv = trace(path="mooncake-conversation", limit=3)
    assert conv.prefix_hashes[1][0] == conv.prefix_hashes[0][0] == 0  # a shared first block


def test_bundled_trace_loads_fast():
    start = time.perf_counter()
    read_azure(data_dir("workloads") / "azure-conv.csv")
    assert time.perf_counter() - start < 1.0


def test_user_trace_path_and_format(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "t.jsonl").write_text(MOON_A + MOON_B)
    with pytest.raises(ScenarioError) as err:
        trace(tmp_path, path="sub/t.jsonl")
    assert err.value.path == "workload.format"
    specs = trace(tmp_path, path="sub/t.jsonl", format="mooncake")
    assert specs.arrival_s.tolist() == [0.0, 0.04] and specs.prefix_hashes == ((0,), (0, 1))
    with pytest.raises(ScenarioError) as err:
        trace(tmp_path, path="nope.csv", format="azure")
    assert err.value.path == "workload.path" and "azure-conv" in str(err.value)
    with pytest.raises(ScenarioError) as err:
        trace(path="azure-conv", format="mooncake")
    assert err.value.path == "workload.format"


# --- strict readers ------------------------------------------------------------------------------

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
ROW_A = "2023-11-16 18:17:03.9799600,10,5\n"
ROW_B = "2023-11-16 18:17:04.0319600,20,6\n"
ROW_C = "2023-11-16 18:17:05.0000000,30,7\n"
MOON_A = '{"timestamp": 0, "input_length": 10, "output_length": 5, "hash_ids": [0]}\n'
MOON_B = '{"timestamp": 40, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]}\n'


@pytest.mark.parametrize("text, line, words", [
    ("TIMESTAMP,ContextTokens\n2023-11-16 18:17:03.97,10\n", 1, "missing column(s) GeneratedTokens"),
    (AZURE_HEADER + ROW_A + ROW_B + "2023-11-16 18:17:05.0,-3,7\n", 4, "ContextTokens must be an integer >= 1"),
    (AZURE_HEADER + ROW_A + "2023-11-16 18:17:05.0,3,0\n", 3, "GeneratedTokens must be an integer >= 1"),
    (AZURE_HEADER + ROW_A + "2023-11-16 18:17:05.0,3.5,2\n", 3, "'3.5'"),
    (AZURE_HEADER + ROW_A + "2023-11-16 18:17:05.0,many,2\n", 3, "'many'"),
    (AZURE_HEADER + ROW_A + ROW_B + "hello world\n" + ROW_C, 4, "expected 3 fields"),
    (AZURE_HEADER + ROW_A + "2023-11-16 18:17:05.0,3,4,5\n", 3, "expected 3 fields"),
    (AZURE_HEADER + ROW_A + "yesterday,3,4\n", 3, "not a datetime"),
    (AZURE_HEADER + ROW_A + ROW_C + ROW_B, 4, "earlier than the previous"),
    (AZURE_HEADER + ROW_A + "\n\n" + ROW_C + ROW_B, 6, "earlier than the previous"),  # blank lines counted
])
def test_bad_azure_file_names_file_and_line(tmp_path, text, line, words):
    path = tmp_path / "bad-trace.csv"
    path.write_text(text)
    with pytest.raises(TraceError) as err:
        read_azure(path)
    assert str(err.value).startswith(f"{path}:{line}: ") and "bad-trace.csv" in str(err.value)
    assert words in str(err.value) and err.value.line == line


@pytest.mark.parametrize("text, line, words", [
    (MOON_A + '{"timestamp": 3,\n' + MOON_B, 2, "malformed JSON"),
    (MOON_A + '{"timestamp": 50}\n', 2, "missing key(s) input_length"),
    (MOON_A + '{"timestamp": 50, "input_length": -1, "output_length": 5, "hash_ids": []}\n', 2, "input_length"),
    (MOON_A + '{"timestamp": 50, "input_length": 5, "output_length": "5", "hash_ids": []}\n', 2, "output_length"),
    (MOON_A + '{"timestamp": "noon", "input_length": 5, "output_length": 5, "hash_ids": []}\n', 2, "timestamp"),
    (MOON_A + '{"timestamp": 50, "input_length": 5, "output_length": 5, "hash_ids": [1.5]}\n', 2, "hash_ids"),
    (MOON_B + "\n" + MOON_A, 3, "earlier than the previous"),
    ("[1, 2]\n", 1, "expected a JSON object"),
])
def test_bad_mooncake_file_names_file_and_line(tmp_path, text, line, words):
    path = tmp_path / "bad-trace.jsonl"
    path.write_text(text)
    with pytest.raises(TraceError) as err:
        read_mooncake(path)
    assert str(err.value).startswith(f"{path}:{line}: ") and words in str(err.value)


@pytest.mark.parametrize("reader, text", [
    (read_azure, ""), (read_azure, "\n \n"), (read_azure, AZURE_HEADER), (read_mooncake, ""), (read_mooncake, "\n"),
])
def test_empty_trace_is_an_error(tmp_path, reader, text):
    path = tmp_path / "empty.txt"
    path.write_text(text)
    with pytest.raises(TraceError, match="empty.txt"):
        reader(path)


def test_readers_accept_equal_timestamps_and_blank_lines(tmp_path):
    (tmp_path / "a.csv").write_text(AZURE_HEADER + ROW_A + "\n" + ROW_A + ROW_B + "\n")
    azure = read_azure(tmp_path / "a.csv")
    assert azure.time_s.tolist() == pytest.approx([0.0, 0.0, 0.052]) and azure.prompt_tokens.tolist() == [10, 10, 20]
    (tmp_path / "m.jsonl").write_text(MOON_A + MOON_A + "\n" + MOON_B)
    assert read_mooncake(tmp_path / "m.jsonl").time_s.tolist() == [0.0, 0.0, 0.04]
    (tmp_path / "crlf.csv").write_bytes((AZURE_HEADER + ROW_A + ROW_C).replace("\n", "\r\n").encode())
    assert read_azure(tmp_path / "crlf.csv").time_s.tolist() == pytest.approx([0.0, 1.02004])
    (tmp_path / "tz.csv").write_text(AZURE_HEADER + "2023-11-16T18:00:00+01:00,1,1\n2023-11-16T17:00:02Z,1,1\n")
    assert read_azure(tmp_path / "tz.csv").time_s.tolist() == [0.0, 2.0]


# --- config errors -------------------------------------------------------------------------------

BASE = {"kind": "synthetic", "num_requests": 10, "arrival": {"process": "poisson", "rate_per_s": 1},
        "prompt_tokens": FIXED, "output_tokens": FIXED}


@pytest.mark.parametrize("change, path, words", [
    ({"arrival": {"process": "poisson", "rate_per_s": 0}}, "arrival.rate_per_s", ">= 1e-06"),
    ({"arrival": {"process": "gamma", "rate_per_s": 1, "cv": -1}}, "arrival.cv", ">= 0.01"),
    ({"arrival": {"process": "gamma", "rate_per_s": 1}}, "arrival.cv", "missing"),
    ({"arrival": {"process": "closed_loop", "users": 0, "think_time_s": 1}}, "arrival.users", ">= 1"),
    ({"arrival": {"process": "closed_loop", "users": 2, "think_time_s": -1}}, "arrival.think_time_s", ">= 0"),
    ({"arrival": {"process": "burst"}}, "arrival", "unknown process"),
    ({"arrival": {"rate_per_s": 1}}, "arrival", "'process' key is required"),
    ({"num_requests": 0}, "num_requests", ">= 1"),
    ({"num_requests": 2.5}, "num_requests", "integer"),
    ({"prompt_tokens": {"dist": "fixed", "value": 0}}, "prompt_tokens.value", ">= 1"),
    ({"prompt_tokens": {"dist": "uniform", "low": 5, "high": 3}}, "prompt_tokens.high", ">= low (5)"),
    ({"output_tokens": {"dist": "normal", "mean": 5, "std": -1, "max": 9}}, "output_tokens.std", ">= 0"),
    ({"output_tokens": {"dist": "normal", "mean": 5, "std": 1, "min": 10, "max": 9}}, "output_tokens.max", ">= min"),
    ({"output_tokens": {"dist": "lognormal", "median": 0, "sigma": 1, "max": 9}}, "output_tokens.median", "> 0"),
    ({"output_tokens": {"dist": "lognormal", "median": 5, "sigma": 1, "min": 0, "max": 9}}, "output_tokens.min", ">= 1"),
    ({"output_tokens": {"dist": "empirical", "path": "azure-conv", "column": "input"}}, "output_tokens.column", "one of"),
    ({"output_tokens": {"dist": "zipf"}}, "output_tokens", "unknown dist"),
    ({"prompt_tokens": {"dist": "fixed", "valu": 3}}, "prompt_tokens.valu", "did you mean 'value'"),
])
def test_synthetic_config_errors_name_the_key(change, path, words):
    with pytest.raises(ScenarioError) as err:
        validate(Scenario, {"workload": {**BASE, **change}})
    assert err.value.path == f"workload.{path}" and words in err.value.reason


@pytest.mark.parametrize("data, path", [
    ({"kind": "trace", "path": "azure-conv", "time_scale": 0}, "time_scale"),
    ({"kind": "trace", "path": "azure-conv", "limit": 0}, "limit"),
    ({"kind": "trace", "path": "azure-conv", "start_s": -1}, "start_s"),
    ({"kind": "trace", "path": "x.csv", "format": "csv"}, "format"),
    ({"kind": "trace"}, "path"),
    ({"kind": "replay", "path": "azure-conv"}, ""),
])
def test_trace_config_errors_name_the_key(data, path):
    with pytest.raises(ScenarioError) as err:
        validate(Scenario, {"workload": data})
    assert err.value.path == ".".join(p for p in ("workload", path) if p)


def test_prefix_is_added_to_paths():
    with pytest.raises(ScenarioError) as err:
        validate(SyntheticWorkload, {**BASE, "num_requests": 0}, prefix=("workload",))
    assert str(err.value).startswith("workload.num_requests: must be >= 1")


# --- property: any valid synthetic config --------------------------------------------------------

def _bounded(draw, dist: str) -> dict:
    low = draw(st.integers(1, 5000))
    high = draw(st.integers(low, 100_000))
    if dist == "normal":
        return {"dist": dist, "mean": draw(st.floats(-1e4, 1e6)), "std": draw(st.floats(0, 1e5)), "min": low, "max": high}
    return {"dist": dist, "median": draw(st.floats(1e-3, 1e7)), "sigma": draw(st.floats(0, 5)), "min": low, "max": high}


@st.composite
def lengths(draw) -> dict:
    dist = draw(st.sampled_from(["fixed", "uniform", "normal", "lognormal"]))
    if dist == "fixed":
        return {"dist": dist, "value": draw(st.integers(1, 10**6))}
    if dist == "uniform":
        low = draw(st.integers(1, 10**5))
        return {"dist": dist, "low": low, "high": draw(st.integers(low, 10**6))}
    return _bounded(draw, dist)


rates = st.floats(1e-3, 1e4)
arrivals = st.one_of(
    st.fixed_dictionaries({"process": st.just("poisson"), "rate_per_s": rates}),
    st.fixed_dictionaries({"process": st.just("gamma"), "rate_per_s": rates, "cv": st.floats(0.05, 10)}),
    st.fixed_dictionaries({"process": st.just("constant"), "rate_per_s": rates}),
    st.fixed_dictionaries({"process": st.just("closed_loop"), "users": st.integers(1, 100),
                           "think_time_s": st.floats(0, 100)}),
    st.just({"process": "offline"}),
)


def _within(values: np.ndarray, dist: dict) -> bool:
    low, high = {"fixed": ("value", "value"), "uniform": ("low", "high")}.get(dist["dist"], ("min", "max"))
    return bool(values.min() >= dist[low] and values.max() <= dist[high])


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 300), arrival=arrivals, prompt=lengths(), output=lengths(), seed=st.integers(0, 2**32))
def test_any_valid_synthetic_config_builds(n, arrival, prompt, output, seed):
    cfg = synth(arrival, n=n, prompt=prompt, output=output)
    specs = run(cfg, seed=seed)
    assert len(specs) == len(specs.prompt_tokens) == len(specs.output_tokens) == n
    assert specs.arrival_s[0] == 0.0 and np.all(np.isfinite(specs.arrival_s))
    assert np.all(np.diff(specs.arrival_s) >= 0)
    assert _within(specs.prompt_tokens, prompt) and _within(specs.output_tokens, output)
    assert (specs.closed_loop_users is not None) == (arrival["process"] == "closed_loop")


# --- the documentation's examples ----------------------------------------------------------------

def _doc_examples() -> list[str]:
    text = (ROOT / "docs" / "workloads.md").read_text()
    return re.findall(r"```yaml\n(.*?)```", text, flags=re.S)


def test_docs_have_examples():
    assert len(_doc_examples()) >= 12


@pytest.mark.parametrize("index", range(len(_doc_examples())))
def test_doc_example_validates_and_builds(tmp_path, index):
    # the "your own trace" example names traces/my-azure-trace.csv next to the scenario
    (tmp_path / "traces").mkdir()
    head = (data_dir("workloads") / "azure-conv.csv").read_text().splitlines()[:101]
    (tmp_path / "traces" / "my-azure-trace.csv").write_text("\n".join(head) + "\n")
    cfg = validate(Scenario, loads(_doc_examples()[index], "docs/workloads.md")).workload
    specs = run(cfg, base_dir=tmp_path)
    assert len(specs) >= 1


def test_trace_repeat_plays_back_to_back_then_limit():
    import numpy as np
    from simserve.workload import build
    from simserve.workload.config import TraceWorkload
    one = build(TraceWorkload(kind="trace", path="azure-conv"), np.random.default_rng(0))
    rep = build(TraceWorkload(kind="trace", path="azure-conv", repeat=3, limit=len(one) * 2 + 5), np.random.default_rng(0))
    n = len(one)
    assert len(rep) == 2 * n + 5
    assert np.array_equal(rep.prompt_tokens[n:2 * n], one.prompt_tokens)
    span = one.arrival_s[-1]
    period = span + span / (n - 1)
    assert np.allclose(rep.arrival_s[n:2 * n], one.arrival_s + period)
    assert np.all(np.diff(rep.arrival_s) >= 0)
