"""Contiguous KV (``kv_cache.layout: contiguous``): every request reserves ``max_model_len`` tokens of KV at
admission, as servers did before paged attention. Exact timelines under a constant 10 ms step (worked
by hand in the comments), the concurrency it allows in closed form, and the reserved-but-unused KV
computed analytically and compared with what the simulator reports, for both layouts."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import simserve
from simserve.engine.request import COMPLETED
from simserve.engine.sim import Cluster
from simserve.errors import ScenarioError
from simserve.metrics import summarize
from simserve.scenario import load_scenario

from conftest import TINY, run_tiny, specs, tiny_resolved, timeline


def contiguous(max_model_len: int, num_requests: int | None = None, **sets):
    """The TINY scenario with the contiguous layout; optionally room for exactly ``num_requests``."""
    r = tiny_resolved(kv_cache={"layout": "contiguous"}, scheduler__max_model_len=max_model_len, **sets)
    assert (r.memory.kv_layout, r.memory.block_size) == ("contiguous", max_model_len)
    if num_requests is not None:
        plan = dataclasses.replace(r.memory, num_blocks=num_requests, kv_capacity_tokens=num_requests * max_model_len)
        r = dataclasses.replace(r, memory=plan)
    return r


def run(resolved, rows):
    rec = Cluster(resolved, specs(rows)).run()
    return rec, summarize(resolved, rec)


# --- exact timelines ------------------------------------------------------------------------------

def test_contiguous_reservations_limit_concurrency_exact():
    # max_model_len 8 and room for 2 requests (2 x 8 tokens). A (prompt 4, out 3), B (2, 2), C (3, 2)
    # arrive at 0; budget 8.
    # step1 0-10: A (4 tokens) and B (2) are admitted and reserve 8 slots each; C would fit the budget
    #   (2 left) but there is no third reservation. A's and B's first tokens at 10.
    # step2 10-20: A and B decode; B's 2nd token at 20, B done and its 8 slots freed.
    # step3 20-30: C is admitted (prompt 3); A decodes: A done at 30, C's first token at 30.
    # step4 30-40: C decodes, done at 40.
    rows = [(0, 4, 3), (0, 2, 2), (0, 3, 2)]
    rec, s = run(contiguous(8, num_requests=2), rows)
    assert timeline(rec) == {0: (COMPLETED, 10.0, 30.0), 1: (COMPLETED, 10.0, 20.0), 2: (COMPLETED, 30.0, 40.0)}
    assert s["peak_running_requests"] == 2 and s["iterations"] == 4
    # KV slots reserved and filled (once each iteration has run), per iteration:
    #   step1: 2 x 8 reserved; A 4 + B 2 = 6 used      step2: 16 reserved; A 5 + B 3 = 8 used
    #   step3: A + C = 16 reserved; A 6 + C 3 = 9 used  step4: C alone, 8 reserved; 4 used
    assert s["mean_kv_tokens_reserved"] == pytest.approx((16 + 16 + 16 + 8) / 4)
    assert s["mean_kv_tokens_wasted"] == pytest.approx((10 + 8 + 7 + 4) / 4)
    assert s["mean_kv_tokens_used_fraction"] == pytest.approx(27 / 56)
    assert s["mean_running_requests"] == pytest.approx((2 + 2 + 2 + 1) / 4)
    assert s["mean_kv_utilization"] == pytest.approx((2 + 2 + 2 + 1) / 4 / 2)
    assert s["preemptions"] == 0

    # paged, blocks of 4 tokens (plenty): all three run at once.
    # step1: A 4 + B 2 + C 2 of its 3 prompt tokens (budget 8); A, B sample at 10.
    # step2: A, B decode and C's last prompt token; B done at 20, C's first token at 20.
    # step3: A and C decode: both done at 30.
    rec, s = run(tiny_resolved(num_blocks=64, block_size=4), rows)
    assert timeline(rec) == {0: (COMPLETED, 10.0, 30.0), 1: (COMPLETED, 10.0, 20.0), 2: (COMPLETED, 20.0, 30.0)}
    # blocks of 4: step1 A 4 (1 block), B 2 (1), C 2 (1): 12 reserved, 8 used;
    # step2 A 5 (2), B 3 (1), C 3 (1): 16, 11; step3 A 6 (2), C 4 (1): 12, 10
    assert s["mean_kv_tokens_used_fraction"] == pytest.approx(29 / 40)
    assert s["mean_kv_tokens_wasted"] == pytest.approx((4 + 5 + 2) / 3)


def test_a_contiguous_reservation_is_never_outgrown():
    # two requests growing from 20 to 40 tokens, each in a reservation of 64: prefilled together
    # (first tokens at 10), 20 decode steps (done at 210), never a new block, never a preemption
    rows = [(0, 20, 21), (0, 20, 21)]
    rec, s = run(contiguous(64, num_requests=2, scheduler__max_num_batched_tokens=64), rows)
    assert timeline(rec) == {0: (COMPLETED, 10.0, 210.0), 1: (COMPLETED, 10.0, 210.0)}
    assert s["preemptions"] == 0 and rec.replicas[0].stats.peak_kv_blocks == 2
    # paged, 4 blocks of 16 (the same 64 tokens): both start in 2 blocks each and the first to cross
    # 32 tokens finds none free, so one is preempted
    rec = run_tiny(rows, num_blocks=4, block_size=16, scheduler__max_num_batched_tokens=64)
    assert rec.replicas[0].scheduler.num_preemptions > 0


# --- closed forms ---------------------------------------------------------------------------------

def test_contiguous_concurrency_is_capacity_over_max_model_len():
    # Llama-3.1-8B on one H100 at its full 131,072-token context: the KV cache holds 3 requests
    sched = {"policy": "continuous", "max_num_seqs": 64, "max_num_batched_tokens": 4096}
    r = load_scenario({**TINY, "kv_cache": {"layout": "contiguous"}, "scheduler": sched})
    paged = load_scenario({**TINY, "scheduler": sched}).memory
    capacity_tokens = int(paged.kv_bytes // paged.kv_bytes_per_token)     # 418,352
    assert r.max_model_len == 131072
    assert r.memory.num_blocks == capacity_tokens // 131072 == 3
    workload = ["workload.num_requests=200", "workload.output_tokens.value=20"]
    for max_len, num_seqs in ((131072, 64), (16384, 64), (4096, 64), (4096, 8)):
        sets = [f"scheduler.max_model_len={max_len}", f"scheduler.max_num_seqs={num_seqs}"] + workload
        s = simserve.simulate({**TINY, "kv_cache": {"layout": "contiguous"}, "scheduler": sched}, sets).summary
        m = s["memory_per_device"]
        capacity_tokens = int(m["kv_bytes"] // m["kv_bytes_per_token"])
        assert m["num_blocks"] == capacity_tokens // max_len and m["block_size"] == max_len
        assert s["completed"] == 200
        assert s["peak_running_requests"] == min(capacity_tokens // max_len, num_seqs, 200)
    # paged: the same cache holds as many of these requests as max_num_seqs lets run (2 blocks each)
    s = simserve.simulate({**TINY, "scheduler": sched}, workload).summary
    assert s["peak_running_requests"] == 64


def wasted_token_iterations(rows, reserve) -> tuple[int, int]:
    """Analytic (reserved, used) KV slots summed over iterations, for requests whose prompt is computed
    in one iteration and that then decode every iteration until done: a request with prompt p and
    output o runs o iterations and fills p + k - 1 slots in its k-th; ``reserve(n)`` is what it holds
    for n slots."""
    reserved = used = 0
    for _, p, o in rows:
        for k in range(1, o + 1):
            reserved += reserve(p + k - 1)
            used += p + k - 1
    return reserved, used


rows_st = st.lists(st.tuples(st.floats(0, 0.2), st.integers(1, 30), st.integers(1, 30)), min_size=1, max_size=25).map(sorted)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_st, slots=st.integers(1, 5), seqs=st.integers(1, 6))
def test_contiguous_waste_matches_the_closed_form(rows, slots, seqs):
    # budget 256 covers every running decode and any prompt: nothing is chunked, so the sums are exact
    M = 64
    r = contiguous(M, num_requests=slots, scheduler__max_num_batched_tokens=256, scheduler__max_num_seqs=seqs)
    rec, s = run(r, rows)
    assert s["completed"] == len(rows)
    assert s["peak_running_requests"] <= min(slots, seqs)
    reserved, used = wasted_token_iterations(rows, lambda n: M)
    iters = s["iterations"]
    assert s["mean_kv_tokens_reserved"] * iters == pytest.approx(reserved)
    assert s["mean_kv_tokens_wasted"] * iters == pytest.approx(reserved - used)
    assert s["mean_kv_tokens_used_fraction"] == pytest.approx(used / reserved)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_st, bs=st.sampled_from([1, 2, 4, 16]))
def test_paged_waste_matches_the_closed_form(rows, bs):
    # enough blocks for everyone (no preemption): each request holds ceil(slots / block_size) blocks
    r = tiny_resolved(num_blocks=2000, block_size=bs, scheduler__max_num_batched_tokens=256,
                      scheduler__max_num_seqs=32)
    rec, s = run(r, rows)
    reserved, used = wasted_token_iterations(rows, lambda n: -(-n // bs) * bs)
    iters = s["iterations"]
    assert s["mean_kv_tokens_wasted"] * iters == pytest.approx(reserved - used)
    assert s["mean_kv_tokens_used_fraction"] == pytest.approx(used / reserved)
    if bs == 1:
        assert s["mean_kv_tokens_used_fraction"] == 1.0


def test_contiguous_with_request_level_batching():
    # dynamic batches reserve max_model_len per request too: room for 2 limits a batch to 2
    r = contiguous(16, num_requests=2,
                   scheduler={"policy": "dynamic", "max_batch_size": 4, "max_wait_s": 0, "max_model_len": 16})
    rec, s = run(r, [(0, 2, 2), (0, 2, 2), (0, 2, 2)])
    # batch 1 (A, B): 0-10 prefill, 10-20 decode; batch 2 (C): 20-30, 30-40
    assert timeline(rec) == {0: (COMPLETED, 10.0, 20.0), 1: (COMPLETED, 10.0, 20.0), 2: (COMPLETED, 30.0, 40.0)}
    assert s["mean_kv_tokens_used_fraction"] == pytest.approx((2 + 2 + 3 + 3 + 2 + 3) / (16 * 2 * 2 + 16 * 2))


# --- configuration --------------------------------------------------------------------------------

def test_contiguous_needs_room_for_one_max_model_len():
    with pytest.raises(ScenarioError) as exc:
        tiny_resolved(kv_cache={"layout": "contiguous", "gpu_memory_utilization": 0.3})
    assert exc.value.path == "scheduler.max_model_len"
    assert "reserves max_model_len=131072 tokens" in str(exc.value)
    tiny_resolved(kv_cache={"layout": "contiguous", "gpu_memory_utilization": 0.3}, scheduler__max_model_len=8192)


def test_contiguous_excludes_prefix_caching():
    with pytest.raises(ScenarioError) as exc:
        tiny_resolved(kv_cache={"layout": "contiguous", "enable_prefix_caching": True})
    assert exc.value.path == "kv_cache.enable_prefix_caching"


def test_paged_is_the_default_and_reported():
    r = tiny_resolved()
    assert r.config.kv_cache.layout == "paged" and r.memory.kv_layout == "paged"
    assert r.memory.block_size == 16
