"""Preemption by swap (``scheduler.preemption: swap``): a preempted request's KV is copied to host memory
over the hardware's host link and back when it is readmitted, instead of being recomputed. Exact
timelines under a constant 10 ms step (worked by hand in the comments), the fallback to recompute when
the swap space is full, closed forms of the bytes and copy time, and the fast scheduler against the
reference with swapping on."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simserve.engine.request import COMPLETED
from simserve.engine.sim import Cluster
from simserve.errors import ScenarioError
from simserve.hardware import Link
from simserve.metrics import summarize

from conftest import specs, tiny_resolved, timeline
from test_differential import _observed, _run

KV_BYTES_PER_TOKEN = 131072           # Llama-3.1-8B, bf16: 2 x 32 layers x 8 KV heads x 128 x 2 bytes
BLOCK_BYTES = 2 * KV_BYTES_PER_TOKEN  # blocks of 2 tokens below


def resolved(num_blocks, block_size, link_gb_s=None, latency_us=None, **sets):
    """TINY with swapping on, a KV cache of ``num_blocks`` and optionally another host link."""
    r = tiny_resolved(num_blocks=num_blocks, block_size=block_size, scheduler__preemption="swap",
                      scheduler__max_num_batched_tokens=16, **sets)
    assert r.memory.kv_bytes_per_token == KV_BYTES_PER_TOKEN
    if link_gb_s is not None:
        hw = r.hardware.model_copy(update={"host_link": Link(bandwidth_gb_s=link_gb_s, latency_us=latency_us)})
        r = dataclasses.replace(r, hardware=hw)
    return r


# a host link on which one copy of k blocks of 2 tokens takes 1 ms + k ms: 262,144 bytes per ms
SLOW_LINK = dict(link_gb_s=BLOCK_BYTES / 1e6, latency_us=1000.0)


def run(r, rows):
    rec = Cluster(r, specs(rows)).run()
    return rec, summarize(r, rec)


def itl_ms(rec):
    return sorted(round(x * 1e3, 3) for x, n in zip(rec.itl_s, rec.itl_counts) for _ in range(n))


# --- exact timelines ------------------------------------------------------------------------------

def test_preemption_by_swap_exact():
    # The recompute example of test_timeline.py (4 blocks of 2 tokens; A prompt 4 out 4, B prompt 2
    # out 4), with swapping; a copy of k blocks takes 1 + k ms.
    # step1 0-10: A 4 tokens (2 blocks), B 2 tokens (1 block); both sample their first token at 10.
    # step2: A needs a 3rd block (the last free one), B a 2nd: none left, B (last admitted) is
    #   preempted; its 2 computed tokens (1 block) are copied out: 2 ms. Step 10-22; A's 2nd token at 22.
    # step3 22-32: B needs 2 blocks (2 tokens + the one it sampled), 1 is free: it waits. A's 3rd token.
    # step4 32-42: A takes the last block for its 4th token and finishes, freeing all 4.
    # step5: B is readmitted: its block is copied back (2 ms) and it computes just its sampled token
    #   (recompute would prefill 3 tokens). Step 42-54: B's 2nd token at 54; then 64 and 74.
    rec, s = run(resolved(4, 2, **SLOW_LINK), [(0, 4, 4), (0, 2, 4)])
    assert timeline(rec) == {0: (COMPLETED, 10.0, 42.0), 1: (COMPLETED, 10.0, 74.0)}
    # A: 10->22->32->42; B: 10->54->64->74
    assert itl_ms(rec) == [10.0, 10.0, 10.0, 10.0, 12.0, 44.0]
    assert rec.requests[1].num_preemptions == 1 and s["preemptions"] == 1
    assert s["swap"] == {"swapped_out": 1, "swapped_in": 1, "swap_out_bytes": BLOCK_BYTES, "swap_in_bytes": BLOCK_BYTES,
                         "transfer_s": pytest.approx(0.004), "recompute_fallbacks": 0,
                         "peak_host_kv_bytes": BLOCK_BYTES, "host_kv_capacity_bytes": (4e9 // BLOCK_BYTES) * BLOCK_BYTES}
    # nothing is computed twice: 4 + 2 prompt tokens, then A's 3 and B's 3 fed-back tokens
    assert rec.replicas[0].stats.tokens == (4 + 3) + (2 + 3)
    assert s["duration_s"] == pytest.approx(0.074) and s["device_utilization"] == pytest.approx(1.0)
    # prefix_cache.admitted_tokens counts the tokens to compute: B has 1 left when it is readmitted
    assert rec.replicas[0].scheduler.admitted_prompt_tokens == 4 + 2 + 1


def test_swap_falls_back_to_recompute_when_the_host_is_full():
    # no swap space: exactly the recompute timeline of test_timeline.py (A done at 40, B at 70)
    rec, s = run(resolved(4, 2, kv_cache={"swap_space_gb": 0}), [(0, 4, 4), (0, 2, 4)])
    assert timeline(rec) == {0: (COMPLETED, 10.0, 40.0), 1: (COMPLETED, 10.0, 70.0)}
    assert s["swap"]["swapped_out"] == 0 and s["swap"]["recompute_fallbacks"] == 1
    assert s["swap"]["host_kv_capacity_bytes"] == 0.0
    assert rec.replicas[0].stats.tokens == 6 + 1 + 1 + 1 + 3 + 1 + 1     # B recomputes 3 tokens


def test_swap_space_bounds_what_is_swapped():
    # 5 blocks of 2 tokens, host room for 1 block (0.0003 GB / 262,144 bytes). A (prompt 4, out 4),
    # B (2, 4), C (2, 4); copies take 1 + k ms.
    # step1 0-10: A 4 (2 blocks), B 2 (1), C 2 (1); 1 block free; all sample at 10.
    # step2: A takes the free block; B needs one: C (last) is preempted and swapped (1 block, host now
    #   full, 2 ms); B takes C's block. 10-22: A, B 2nd tokens.
    # step3 22-32: C needs 2 blocks, none free: waits. A, B 3rd tokens.
    # step4: A needs a 4th block, none free: B is preempted; its 4 computed tokens (2 blocks) do not fit
    #   the host: by recompute. A takes a block. 32-42: A's 4th token, A done (4 blocks freed).
    # step5: B (front of the queue) recomputes its 5 tokens (3 blocks) and C is swapped back in (2
    #   blocks, 2 ms) to compute its sampled token. 42-54: B's 4th token (done), C's 2nd.
    # step6 54-64, step7 64-74: C's 3rd and 4th tokens.
    r = resolved(5, 2, kv_cache={"swap_space_gb": 0.0003}, **SLOW_LINK)
    rec, s = run(r, [(0, 4, 4), (0, 2, 4), (0, 2, 4)])
    assert timeline(rec) == {0: (COMPLETED, 10.0, 42.0), 1: (COMPLETED, 10.0, 54.0), 2: (COMPLETED, 10.0, 74.0)}
    # A: 12, 10, 10; B: 12, 10, then 32 -> 54; C: 10 -> 54, 10, 10
    assert itl_ms(rec) == [10.0, 10.0, 10.0, 10.0, 10.0, 12.0, 12.0, 22.0, 44.0]
    assert s["preemptions"] == 2
    assert (s["swap"]["swapped_out"], s["swap"]["swapped_in"], s["swap"]["recompute_fallbacks"]) == (1, 1, 1)
    assert s["swap"]["peak_host_kv_bytes"] == s["swap"]["host_kv_capacity_bytes"] == BLOCK_BYTES
    assert s["swap"]["transfer_s"] == pytest.approx(0.004)


def test_swap_beats_recompute_when_recompute_costs_compute():
    # With a step time that grows with the tokens computed (linear model, 0.1 ms per token), a
    # preempted request with a long context is cheaper to copy over PCIe than to prefill again.
    # 70 blocks of 16: both 400-token prompts fit (50 blocks), and as they grow the second is
    # preempted with about 560 tokens of context
    rows = [(0, 400, 300), (0, 400, 300)]
    cost = {"kind": "linear", "base_s": 0.005, "per_token_s": 0.0001}
    common = dict(num_blocks=70, block_size=16, scheduler__max_num_batched_tokens=2048, cost_model=cost)
    rec_r = Cluster(tiny_resolved(**common), specs(rows)).run()
    rec_s = Cluster(tiny_resolved(scheduler__preemption="swap", **common), specs(rows)).run()
    assert rec_r.replicas[0].scheduler.num_preemptions == rec_s.replicas[0].scheduler.num_preemptions == 1
    # recomputing ~560 tokens costs ~56 ms; copying 35 blocks of 2 MB each way at 64 GB/s about 2 x 1.1 ms
    assert rec_s.duration_s < rec_r.duration_s - 0.05
    assert rec_s.replicas[0].stats.tokens == sum(p + o - 1 for _, p, o in rows)
    assert rec_r.replicas[0].stats.tokens > rec_s.replicas[0].stats.tokens


# --- closed forms and invariants ------------------------------------------------------------------

rows_st = st.lists(st.tuples(st.floats(0, 0.2), st.integers(1, 30), st.integers(1, 25)), min_size=1, max_size=25).map(sorted)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_st, blocks=st.integers(4, 30), bs=st.sampled_from([1, 2, 4]), gb=st.sampled_from([0.0, 0.0005, 0.002, 4.0]))
def test_swap_bytes_and_copy_time_closed_form(rows, blocks, bs, gb):
    r = tiny_resolved(num_blocks=blocks, block_size=bs, scheduler__preemption="swap",
                      scheduler__max_num_batched_tokens=32, kv_cache={"swap_space_gb": gb})
    rec, s = run(r, rows)
    sw, link = s["swap"], r.hardware.host_link
    block_bytes = bs * KV_BYTES_PER_TOKEN
    host_blocks = int(gb * 1e9 // block_bytes)
    assert sw["host_kv_capacity_bytes"] == host_blocks * block_bytes
    fit = [(a, p, o) for a, p, o in rows if p + o - 1 <= blocks * bs]     # the others are rejected on arrival
    assert s["completed"] == len(fit)
    # every request completes, so every swapped-out request came back, with the same blocks
    assert sw["swapped_out"] == sw["swapped_in"] and sw["swap_out_bytes"] == sw["swap_in_bytes"]
    assert sw["swapped_out"] + sw["recompute_fallbacks"] == s["preemptions"]
    assert sw["peak_host_kv_bytes"] <= sw["host_kv_capacity_bytes"]
    assert rec.replicas[0].scheduler.swap.num_used == 0
    # each copy is one transfer: latency + bytes / bandwidth
    copies = sw["swapped_out"] + sw["swapped_in"]
    expected = copies * link.latency_us * 1e-6 + (sw["swap_out_bytes"] + sw["swap_in_bytes"]) / (link.bandwidth_gb_s * 1e9)
    assert sw["transfer_s"] == pytest.approx(expected, rel=1e-9, abs=1e-15)
    # without a fallback nothing is ever computed twice
    if sw["recompute_fallbacks"] == 0:
        assert rec.replicas[0].stats.tokens == sum(p + o - 1 for _, p, o in fit)
    # with the constant cost model the run takes the steps plus the copies
    assert rec.replicas[0].stats.busy_s == pytest.approx(rec.replicas[0].stats.iterations * 0.01 + sw["transfer_s"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(rows=rows_st, blocks=st.integers(4, 40), bs=st.sampled_from([1, 2, 4, 16]), budget=st.integers(4, 48),
       seqs=st.integers(1, 6), chunked=st.booleans(), replicas=st.integers(1, 3),
       gb=st.sampled_from([0.0, 0.0005, 0.002, 4.0]), fail=st.booleans(), timeout=st.booleans())
def test_fast_scheduler_matches_reference_with_swap(monkeypatch, rows, blocks, bs, budget, seqs, chunked, replicas,
                                                     gb, fail, timeout):
    kw = dict(num_blocks=blocks, block_size=bs, scheduler__max_num_batched_tokens=max(budget, seqs),
              scheduler__max_num_seqs=seqs, scheduler__chunked_prefill=chunked, scheduler__preemption="swap",
              deployment__replicas=replicas, kv_cache={"swap_space_gb": gb})
    if not chunked:
        kw["scheduler__max_model_len"] = max(budget, seqs)
    if fail:
        kw["failures"] = {"events": [{"replica": 0, "at_s": 0.037, "repair_s": 0.05}]}
    if timeout:
        kw["admission"] = {"request_timeout_s": 0.05}
    fast = _run(monkeypatch, False, rows, **kw)
    ref = _run(monkeypatch, True, rows, **kw)
    assert _observed(fast) == _observed(ref)
    swaps = [(r.scheduler.swap.swapped_out, r.scheduler.swap.swapped_in, r.scheduler.swap.out_blocks,
              r.scheduler.swap.fallbacks, r.scheduler.swap.num_used) for r in fast.replicas]
    assert swaps == [(r.scheduler.swap.swapped_out, r.scheduler.swap.swapped_in, r.scheduler.swap.out_blocks,
                      r.scheduler.swap.fallbacks, r.scheduler.swap.num_used) for r in ref.replicas]
    # every request ended (completed, timed out, or moved off a failed replica): no host space is held
    assert all(rep.scheduler.swap.num_used == 0 for rep in fast.replicas)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_st, blocks=st.integers(6, 30), shared=st.integers(0, 12), gb=st.sampled_from([0.0005, 4.0]))
def test_swap_with_prefix_caching_keeps_the_block_invariants(rows, blocks, shared, gb):
    # a swapped request's blocks (shared prefix blocks too) come back as private blocks
    r = tiny_resolved(num_blocks=blocks, block_size=2, scheduler__preemption="swap", scheduler__max_num_batched_tokens=32,
                      kv_cache={"swap_space_gb": gb, "enable_prefix_caching": True})
    sp = specs(rows)
    sp = type(sp)(sp.arrival_s, sp.prompt_tokens, sp.output_tokens, shared_prefix_tokens=shared)
    rec = Cluster(r, sp).run()
    sched = rec.replicas[0].scheduler
    assert all(q.outcome == COMPLETED for q in rec.requests if q.prompt_tokens + q.output_tokens - 1 <= blocks * 2)
    sched.kv.check()
    assert sched.kv.num_used == 0 and sched.swap.num_used == 0
    assert sched.swap.swapped_out == sched.swap.swapped_in


# --- configuration --------------------------------------------------------------------------------

def test_swap_is_a_continuous_scheduler_option():
    with pytest.raises(ScenarioError) as exc:
        tiny_resolved(scheduler={"policy": "static", "preemption": "swap"})
    assert exc.value.path == "scheduler.preemption"
    assert tiny_resolved().config.scheduler.preemption == "recompute"
    assert tiny_resolved().config.kv_cache.swap_space_gb == 4.0


def test_host_swap_space_is_counted_in_blocks_per_device():
    # tensor parallel 2 halves the KV bytes per token on each device, so the same swap space holds
    # twice the blocks
    from simserve.engine.sim import host_swap
    r1 = tiny_resolved(scheduler__preemption="swap")
    r2 = tiny_resolved(scheduler__preemption="swap", deployment__tensor_parallel=2)
    s1, s2 = host_swap(r1), host_swap(r2)
    assert s1.block_bytes == 16 * 131072 and s2.block_bytes == 16 * 65536
    assert (s1.num_blocks, s2.num_blocks) == (4e9 // (16 * 131072), 4e9 // (16 * 65536))
    # PCIe Gen5 x16 on the H100 profile: 64 GB/s, 2 us
    assert s1.copy_s(10) == pytest.approx(2e-6 + 10 * 16 * 131072 / 64e9)
    assert s2.copy_s(10) == pytest.approx(2e-6 + 10 * 16 * 65536 / 64e9)
