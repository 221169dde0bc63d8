"""Pipeline parallelism: exact timelines with a constant stage time, the GPipe bubble in closed form,
activation transfers on the right link, the per-stage memory plan, and one-line errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import simserve
from simserve.cli import main
from simserve.config.base import set_path
from simserve.cost import pipeline as pl
from simserve.cost.batch import BatchShape
from simserve.cost.memory import stage_weight_bytes_per_device
from simserve.cost.step import RooflineStep
from simserve.engine.request import COMPLETED
from simserve.engine.sim import Cluster
from simserve.hardware import load_profile
from simserve.metrics import summarize
from simserve.scenario import load_scenario

from conftest import TINY, run_tiny, specs, tiny_resolved, timeline


def itl_ms(rec):
    return sorted(round(x * 1e3, 3) for x in rec.itl_s)


# --- exact timelines (constant 10 ms per stage) ---------------------------------------------------------

def test_one_request_waits_for_every_stage():
    # one engine busy: each token passes stage 0 (10 ms) then stage 1 (10 ms); the other stage idles meanwhile
    rec = run_tiny([(0, 1, 3)], deployment__pipeline_parallel=2)
    assert timeline(rec) == {0: (COMPLETED, 20.0, 60.0)}
    assert itl_ms(rec) == [20.0, 20.0]
    p = rec.replicas[0].pipeline
    assert p.stage_busy_s == pytest.approx([0.03, 0.03]) and p.active_s == pytest.approx(0.06)


def test_two_requests_overlap_in_two_virtual_engines():
    # A -> engine 0, B -> engine 1 (fewest unfinished). Stage 0 runs A 0-10, B 10-20, A 20-30, B 30-40, ...;
    # stage 1 one step behind: A's tokens at 20, 40, 60; B's at 30, 50, 70. A micro-batch is formed as soon
    # as the engine's previous one leaves the last stage, while the other engine's is in flight.
    rec = run_tiny([(0, 1, 3), (0, 1, 3)], deployment__pipeline_parallel=2)
    assert timeline(rec) == {0: (COMPLETED, 20.0, 60.0), 1: (COMPLETED, 30.0, 70.0)}
    assert itl_ms(rec) == [20.0] * 4
    assert [q.replica for q in rec.requests] == [0, 0]
    assert rec.replicas[0].stats.iterations == 6


def test_a_third_request_joins_the_less_loaded_engine_at_its_next_step():
    # C arrives at 5 ms: both engines hold one request; ties go to engine 0, whose next micro-batch is
    # formed at 20 ms (A's token) and carries A's decode and C's prompt: C's first token at 40 ms.
    rec = run_tiny([(0, 1, 2), (0, 1, 2), (0.005, 1, 1)], deployment__pipeline_parallel=2)
    assert timeline(rec) == {0: (COMPLETED, 20.0, 40.0), 1: (COMPLETED, 30.0, 50.0), 2: (COMPLETED, 40.0, 40.0)}


def test_activation_transfer_is_charged_between_stages():
    # stage 0 0-10, send 10-11, stage 1 11-21 -> first token at 21; the next at 42
    rec = run_tiny([(0, 1, 2)], deployment__pipeline_parallel=2, cost_model__transfer_s=0.001)
    assert timeline(rec) == {0: (COMPLETED, 21.0, 42.0)}
    p = rec.replicas[0].pipeline
    assert p.transfers == 2 and p.transfer_s == pytest.approx(0.002)


def test_three_stages_one_request_per_engine():
    # three engines, one prompt each, all at t=0: stage s runs micro-batch j from (s + j) * 10 ms
    rec = run_tiny([(0, 1, 1)] * 3, deployment__pipeline_parallel=3)
    assert timeline(rec) == {0: (COMPLETED, 30.0, 30.0), 1: (COMPLETED, 40.0, 40.0), 2: (COMPLETED, 50.0, 50.0)}


# --- the bubble in closed form -------------------------------------------------------------------------

def bubble(rows, pp):
    r = tiny_resolved(deployment__pipeline_parallel=pp)
    rec = Cluster(r, specs(rows)).run()
    return summarize(r, rec)["pipeline"]["pipeline_bubble_fraction"], rec


@pytest.mark.parametrize("pp, m", [(2, 1), (2, 2), (3, 3), (4, 2), (4, 4)])
def test_gpipe_bubble_of_m_microbatches_launched_together(pp, m):
    # m one-token requests at t=0 in m engines (m <= pp): m micro-batches back to back
    got, _ = bubble([(0, 1, 1)] * m, pp)
    assert got == pytest.approx(pl.gpipe_bubble_fraction(pp, m)) == pytest.approx((pp - 1) / (m + pp - 1))


@pytest.mark.parametrize("n", [1, 3, 10])
def test_full_pipeline_keeps_the_start_up_bubble_only(n):
    # pp requests of n tokens keep every engine busy: m = pp x n micro-batches flow without a gap
    pp = 2
    got, rec = bubble([(0, 1, n)] * pp, pp)
    assert rec.replicas[0].pipeline.microbatches == pp * n
    assert got == pytest.approx((pp - 1) / (pp * n + pp - 1))


def test_one_request_idles_every_stage_but_one():
    got, _ = bubble([(0, 1, 5)], 4)
    assert got == pytest.approx(3 / 4)


def test_summary_reports_stages():
    r = tiny_resolved(deployment__pipeline_parallel=2)
    s = simserve.simulate(r).summary
    p = s["pipeline"]
    assert (p["stages"], p["tensor_parallel"], p["devices_per_replica"], p["layers_per_stage"]) == (2, 1, 2, [16, 16])
    assert p["stage_links"] == ["intra_node"] and p["derived"] == []
    assert s["devices"] == 2
    assert "pipeline" not in simserve.simulate(tiny_resolved()).summary


# --- stage costs and transfers -------------------------------------------------------------------------

def test_split_layers_as_vllm():
    assert pl.split_layers(126, 2) == [63, 63]
    assert pl.split_layers(126, 4) == [31, 32, 32, 31]
    assert pl.split_layers(32, 3) == [11, 11, 10]
    assert pl.split_layers(5, 5) == [1] * 5
    with pytest.raises(ValueError):
        pl.split_layers(4, 5)


def test_stage_costs_add_up_to_the_whole_model():
    r = load_scenario("pipeline-parallel-405b")
    whole = RooflineStep(r.model, r.hardware, r.precision, 8)
    parts = [RooflineStep(r.model, r.hardware, r.precision, 8, stage=s) for s in pl.stages(126, 2)]
    for shape in (BatchShape.from_pairs([(1, 500)] * 16), BatchShape.from_pairs([(512, 0)])):
        got = [p(shape) for p in parts]
        assert sum(c.time_s for c in got) == pytest.approx(whole(shape).time_s, rel=1e-12)
        assert sum(c.flops for c in got) == pytest.approx(whole(shape).flops, rel=1e-12)
        # the first stage carries the embedding and the framework overhead, the last the LM head
        assert got[0].time_s != got[1].time_s


def test_boundaries_cross_nodes_where_the_devices_do():
    assert pl.boundary_links(load_profile("h100-sxm-80gb"), 8, 2) == ["inter_node"]
    assert pl.boundary_links(load_profile("h100-sxm-80gb"), 4, 2) == ["intra_node"]
    assert pl.boundary_links(load_profile("h100-sxm-80gb"), 4, 4) == ["intra_node", "inter_node", "intra_node"]
    assert pl.boundary_links(load_profile("h100-sxm-80gb"), 3, 4) == ["intra_node", "inter_node", "inter_node"]
    assert pl.boundary_links(load_profile("cerebras-cs3"), 1, 3) == ["inter_node"] * 2


def test_activation_transfer_time_by_hand():
    hw = load_profile("h100-sxm-80gb")
    eff = hw.efficiency.send_recv          # bandwidth_fraction 0.803, overhead 4.634 us, hop scale 1
    msg = 100 * 16384 * 2                  # 100 tokens of Llama-3.1-405B's hidden state in 16 bits
    assert pl.activation_bytes(100, 16384, 2.0) == msg == 3_276_800
    inter = pl.activation_transfer_s(100, 16384, 2.0, hw.interconnect.inter_node, eff)
    intra = pl.activation_transfer_s(100, 16384, 2.0, hw.interconnect.intra_node, eff)
    assert inter == pytest.approx(msg / (50e9 * 0.803) + 5e-6 + 4.634e-6)     # 91.24 us
    assert intra == pytest.approx(msg / (450e9 * 0.803) + 3e-6 + 4.634e-6)    # 16.70 us


def test_405b_transfers_cross_nodes():
    s = simserve.simulate("pipeline-parallel-405b", ["workload.num_requests=20"]).summary
    p = s["pipeline"]
    assert p["stage_links"] == ["inter_node"] and s["devices"] == 16
    assert p["activation_transfers"] == p["microbatches"] == s["iterations"]
    assert 0 < p["pipeline_bubble_fraction"] < 1
    assert s["mean_user_decode_tps"] < p["per_user_decode_tps_bound"]


# --- memory ----------------------------------------------------------------------------------------------

def test_405b_fits_on_two_nodes_as_two_stages():
    r = load_scenario("pipeline-parallel-405b")
    m = r.model
    table = 128256 * 16384
    layer = m.params_per_layer
    first, last = pl.stages(126, 2)
    assert stage_weight_bytes_per_device(m, r.precision, 8, first) == (63 * layer + table) * 2 / 8
    assert [p.weight_bytes for p in r.stage_memory] == [(63 * layer + table) * 2 / 8] * 2   # ~51 GB each
    assert all(p.weight_bytes < 72e9 for p in r.stage_memory)
    # the KV of a token takes a slot on both stages; the last stage also holds the fp32 logits workspace
    assert r.memory.num_blocks == min(p.num_blocks for p in r.stage_memory)
    assert r.memory is min(r.stage_memory, key=lambda p: p.num_blocks)


def scenario_file(tmp_path, **sets):
    data = dict(TINY, workload={**TINY["workload"], "num_requests": 3})
    for k, v in sets.items():
        data = set_path(data, k.replace("__", "."), v)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("args, message", [
    (["deployment.pipeline_parallel=0"], "deployment.pipeline_parallel: must be an integer >= 1 or 'auto', got 0"),
    (["deployment.pipeline_parallel=two"], "deployment.pipeline_parallel: must be an integer >= 1 or 'auto', got 'two'"),
    (["deployment.pipeline_parallel=1.5"], "deployment.pipeline_parallel: must be an integer >= 1 or 'auto', got 1.5"),
    (["deployment.pipeline_parallel=33"], "deployment.pipeline_parallel: must be <= the model's 32 layers, got 33"),
    (["deployment.pipeline_parallel=2", "scheduler.policy=static", "scheduler.max_num_batched_tokens=8"],
     "deployment.pipeline_parallel: > 1 needs scheduler.policy: continuous, not 'static'"),
    (["deployment.pipeline_parallel=2", "failures.events=[{replica: 0, at_s: 1, repair_s: 1}]"],
     "failures: are not modelled with deployment.pipeline_parallel > 1 yet"),
    (["deployment.pipeline_parallel=2", "scheduler.preemption=swap"],
     "scheduler.preemption: swap is not modelled with deployment.pipeline_parallel > 1 yet"),
    (["deployment.pipeline_parallel=2", "sampling.beam_width=4"],
     "sampling.beam_width: > 1 is not modelled with deployment.pipeline_parallel > 1 yet"),
    (["model=llama-3.1-405b", "deployment.tensor_parallel=8", "scheduler.max_num_batched_tokens=4096"],
     "deployment.tensor_parallel: llama-3.1-405b needs 101.5 GB of weights per device at tensor_parallel=8"),
    (["model=llama-3.1-405b", "deployment.tensor_parallel=2", "deployment.pipeline_parallel=2"],
     "deployment.pipeline_parallel: llama-3.1-405b needs 202.9 GB of weights per device on stage 0 (63 layers, "
     "embedding) at tensor_parallel=2, pipeline_parallel=2"),
    (["hardware=groq-lpu", "precision.activations=fp16", "precision.weights=fp16", "deployment.pipeline_parallel=auto"],
     "deployment.pipeline_parallel: auto: no split of llama-3.1-8b over groq-lpu devices holds its weights"),
])
@pytest.mark.parametrize("command", ["run", "validate"])
def test_bad_pipeline_input_exits_2_with_one_line(tmp_path, command, args, message):
    path = scenario_file(tmp_path)
    extra = ["--out", str(tmp_path / "o")] if command == "run" else []
    sets = [x for a in args for x in ("--set", a)]
    res = CliRunner().invoke(main, [command, str(path), *sets, *extra])
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("error: " + message), res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr and res.stdout == ""


def test_docs_errors_md_quotes_the_pipeline_errors():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "errors.md").read_text()
    for message in ("deployment.pipeline_parallel: must be an integer >= 1 or 'auto', got 0",
                    "deployment.pipeline_parallel: must be <= the model's 32 layers, got 33",
                    "deployment.pipeline_parallel: > 1 needs scheduler.policy: continuous, not 'static'",
                    "deployment.pipeline_parallel: llama-3.1-405b needs 202.9 GB of weights per device on stage 0 "
                    "(63 layers, embedding) at tensor_parallel=2, pipeline_parallel=2",
                    "deployment.pipeline_parallel: auto: no split of llama-3.1-8b over groq-lpu devices holds its "
                    "weights and the KV of scheduler.max_num_seqs x max_model_len = "):
        assert f"`{message}" in doc


def test_explicit_single_stage_is_the_default_path():
    assert simserve.simulate(tiny_resolved(deployment__pipeline_parallel=1)).summary_json() == \
        simserve.simulate(tiny_resolved()).summary_json()


def test_validate_names_the_stages(tmp_path):
    res = CliRunner().invoke(main, ["validate", "pipeline-parallel-405b"])
    assert res.exit_code == 0
    assert res.output.startswith("ok: pipeline-parallel-405b: llama-3.1-405b on 1 x 8 x 2 stages x h100-sxm-80gb; "
                                 "per device (tightest stage) 50.7 GB weights")


# --- invariants ------------------------------------------------------------------------------------------

rows = st.lists(st.tuples(st.floats(0, 0.2), st.integers(1, 40), st.integers(1, 12)), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows, pp=st.integers(2, 4), transfer=st.sampled_from([0.0, 0.002]), blocks=st.sampled_from([None, 12]))
def test_every_request_finishes_in_order(rows, pp, transfer, blocks):
    rows = sorted(rows)
    rec = run_tiny(rows, num_blocks=blocks, block_size=4, deployment__pipeline_parallel=pp,
                   cost_model__transfer_s=transfer)
    for q in rec.requests:
        assert q.outcome in ("completed", "rejected")
        if q.outcome == "completed":
            assert q.arrival_s <= q.first_token_s <= q.finish_s <= rec.duration_s
            assert q.num_generated == q.output_tokens
    p = rec.replicas[0].pipeline
    assert all(b <= p.active_s + 1e-12 for b in p.stage_busy_s)
    assert p.active_s <= rec.duration_s + 1e-12
    assert p.microbatches == rec.replicas[0].stats.iterations
