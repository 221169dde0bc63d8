"""Strict loading: every mistake is one ScenarioError naming its dotted path and what is allowed."""
from __future__ import annotations

import pytest

from simserve.config.base import parse_path, set_path
from simserve.config.yamlio import loads
from simserve.errors import ScenarioError
from simserve.scenario import load_scenario

from conftest import TINY


def err(data=None, overrides=()):
    with pytest.raises(ScenarioError) as e:
        load_scenario(TINY if data is None else data, list(overrides))
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("override, expected", [
    ("scheduler.max_num_seqs=0", "scheduler.max_num_seqs: must be >= 1, got 0"),
    ("scheduler.max_num_seq=3", "scheduler.max_num_seq: unknown key 'max_num_seq' (did you mean 'max_num_seqs'?)"),
    ("hardware=h10", "hardware: unknown profile 'h10', known: a100-sxm-40gb, a100-sxm-80gb"),
    ("model=llama-9", "model: unknown model 'llama-9', known:"),
    ("seed=-1", "seed: must be >= 0, got -1"),
    ("seed=1.5", "seed: must be an integer, got 1.5"),
    ("kv_cache.gpu_memory_utilization=1.5", "kv_cache.gpu_memory_utilization: must be <= 1"),
    ("kv_cache.block_size=abc", "kv_cache.block_size: must be an integer, got 'abc'"),
    ("cost_model.kind=magic", "cost_model: unknown kind 'magic'"),
    ("cost_model.step_s=-1", "cost_model.step_s: must be > 0, got -1"),
    ("deployment.router.policy=random", "deployment.router: unknown policy 'random'"),
    ("workload.arrival.process=poisson", "workload.arrival.rate_per_s: required key is missing"),
    ("workload.num_requests=.nan", "workload.num_requests: must be an integer"),
    ("slo.ttft_ms=.inf", "slo.ttft_ms: must be a finite number"),
    ("precision.weights=int3", "precision.weights: must be one of"),
    ("pricing=spot", "pricing: unknown pricing model 'spot'"),
    ("model=llama-2-70b", "deployment.tensor_parallel: llama-2-70b needs 138.0 GB of weights"),
    ("deployment.tensor_parallel=3", "deployment.tensor_parallel: must divide the model's 32 attention heads, got 3"),
    ("scheduler.max_model_len=200000", "scheduler.max_model_len: must be <= the model's max_context (131072)"),
    ("scheduler.max_num_seqs=64", "scheduler.max_num_batched_tokens: must be >= scheduler.max_num_seqs (64), got 8"),
    ("scheduler.chunked_prefill=false", "scheduler.max_num_batched_tokens: must be >= max_model_len (131072) when chunked_prefill is false"),
    ("workload.prompt_tokens={dist: uniform, low: 5, high: 3}", "workload.prompt_tokens.high: must be >= low (5), got 3"),
])
def test_one_line_errors_name_the_path(override, expected):
    assert expected in err(overrides=[override])


def test_fp8_needs_hardware_support():
    assert "precision.activations: a100-sxm-80gb has no fp8 compute" in err(
        overrides=["hardware=a100-sxm-80gb", "precision.activations=fp8"])


def test_errors_inside_inline_models_and_profiles_have_full_paths(tmp_path):
    inline = dict(TINY, model={"name": "m", "num_layers": 0, "hidden_size": 64, "num_heads": 4, "num_kv_heads": 4,
                               "ffn_size": 128, "ffn_gated": True, "vocab_size": 100, "max_context": 512})
    assert err(inline).startswith("model.num_layers: must be >= 1, got 0")
    bad = tmp_path / "hw.yaml"
    bad.write_text("name: x\n")
    assert f"{bad} display_name: required key is missing" in err(dict(TINY, hardware=str(bad)))


def test_top_level_and_yaml_errors(tmp_path):
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n")
    assert err(str(listy)).startswith("(top level): a scenario must be a mapping")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert err(str(empty)).startswith("(top level): the scenario is empty")
    assert err({}).startswith("model: required key is missing")
    assert "required key is missing" in err({"hardware": "h100-sxm-80gb", "workload": TINY["workload"]})
    with pytest.raises(ScenarioError, match="line 2: duplicate key 'a'"):
        loads("a: 1\na: 2\n")
    with pytest.raises(ScenarioError, match="invalid YAML"):
        loads("a: [1, 2\n")


def test_alias_bomb_is_refused_quickly():
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 10):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    with pytest.raises(ScenarioError, match="expands to more than"):
        loads("\n".join(lines))
    many = "a: &a 1\nb: [" + ",".join(["*a"] * 101) + "]"
    with pytest.raises(ScenarioError, match="more than 100 YAML aliases"):
        loads(many)


def test_scientific_notation_is_a_number():
    assert loads("x: 1e6") == {"x": 1e6}
    assert loads("x: 2.5E-3") == {"x": 2.5e-3}


def test_overrides_use_the_same_dotted_paths():
    r = load_scenario(TINY, ["scheduler.max_num_seqs=2", "deployment.replicas=3", "workload.arrival={process: poisson, rate_per_s: 2}"])
    assert r.config.scheduler.max_num_seqs == 2 and r.config.deployment.replicas == 3
    assert r.config.workload.arrival.rate_per_s == 2
    assert parse_path("a.0.b") == ["a", 0, "b"]
    assert set_path({"a": [{"b": 1}]}, "a.0.b", 2) == {"a": [{"b": 2}]}
    with pytest.raises(ScenarioError, match="not a mapping"):
        set_path({"a": 1}, "a.b", 2)
    with pytest.raises(ScenarioError, match="dotted path"):
        parse_path("a..b")


def test_config_is_frozen():
    r = load_scenario(TINY)
    with pytest.raises(Exception):
        r.config.scheduler.max_num_seqs = 9
