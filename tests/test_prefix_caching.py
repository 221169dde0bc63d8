"""Prefix caching: shared prompt blocks are found by content hash and skip their prefill."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import simserve
from simserve.engine.request import COMPLETED
from simserve.engine.sim import Cluster
from simserve.errors import ScenarioError
from simserve.workload.specs import RequestSpecs

from conftest import TINY, tiny_resolved, timeline


def _run(rows, shared, caching=True, **sets):
    r = tiny_resolved(kv_cache={"enable_prefix_caching": caching}, scheduler__max_num_batched_tokens=16, **sets)
    specs = RequestSpecs(np.array([x[0] for x in rows], float), np.array([x[1] for x in rows], np.int64),
                         np.array([x[2] for x in rows], np.int64), shared_prefix_tokens=shared)
    return Cluster(r, specs).run()


def test_a_cached_system_prompt_skips_its_prefill_exactly():
    # budget 16, blocks of 16. A (prompt 40) prefills 16+16+8 -> first token 30 ms, done 40 ms; its two
    # full blocks of the 32-token system prompt stay cached. B (same prefix) arrives at 50 ms, reuses
    # both blocks, prefills 8 tokens -> first token 60 ms, done 70 ms.
    rows = [(0, 40, 2), (0.05, 40, 2)]
    rec = _run(rows, shared=32)
    assert timeline(rec) == {0: (COMPLETED, 30.0, 40.0), 1: (COMPLETED, 60.0, 70.0)}
    sched = rec.replicas[0].scheduler
    assert (sched.prefix_hit_tokens, sched.admitted_prompt_tokens) == (32, 80)
    # without caching B prefills all 40 tokens: 16+16+8 -> 80 ms, done 90 ms
    rec = _run(rows, shared=32, caching=False)
    assert timeline(rec)[1] == (COMPLETED, 80.0, 90.0)


def test_a_fully_cached_prompt_still_computes_one_token():
    rec = _run([(0, 32, 1), (0.05, 32, 1)], shared=32)
    # B's 32 tokens are both cached blocks, but the last block is recomputed so the model can sample:
    # only the first block (16 tokens) is reused, 16 tokens run -> one step
    assert timeline(rec)[1] == (COMPLETED, 60.0, 60.0)
    assert rec.replicas[0].scheduler.prefix_hit_tokens == 16


def test_mooncake_trace_gives_real_hit_rates():
    base = {"model": "llama-3.1-8b", "hardware": "h100-sxm-80gb",
            "kv_cache": {"enable_prefix_caching": True},
            "workload": {"kind": "trace", "path": "mooncake-conversation", "limit": 200}}
    on = simserve.simulate(base).summary
    off = simserve.simulate(base, ["kv_cache.enable_prefix_caching=false"]).summary
    assert on["prefix_cache"]["hit_rate"] > 0.1
    assert off["prefix_cache"]["hit_tokens"] == 0
    assert on["mean_ttft_ms"] < off["mean_ttft_ms"]
    assert on["completed"] == off["completed"] == 200


def test_only_continuous_batching_caches_prefixes():
    with pytest.raises(ScenarioError, match="kv_cache.enable_prefix_caching: is supported by the continuous scheduler only"):
        simserve.simulate(dict(TINY, kv_cache={"enable_prefix_caching": True},
                               scheduler={"policy": "static"}))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.tuples(st.floats(0, 0.2), st.integers(1, 60), st.integers(1, 10)), min_size=1, max_size=20).map(sorted),
       shared=st.integers(0, 48), blocks=st.integers(6, 30))
def test_prefix_caching_keeps_every_invariant(rows, shared, blocks):
    r = tiny_resolved(num_blocks=blocks, block_size=4, kv_cache={"enable_prefix_caching": True},
                      scheduler__max_num_batched_tokens=24)
    specs = RequestSpecs(np.array([x[0] for x in rows], float), np.array([x[1] for x in rows], np.int64),
                         np.array([x[2] for x in rows], np.int64), shared_prefix_tokens=shared)
    rec = Cluster(r, specs).run()
    for q in rec.requests:
        if q.outcome == COMPLETED:
            assert q.arrival_s <= q.first_token_s <= q.finish_s and q.num_generated == q.output_tokens
    assert sorted(q.id for q in rec.requests) == list(range(len(rows)))
    kv = rec.replicas[0].scheduler.kv
    kv.check()
    assert kv.num_used == 0


def test_offload_tier_keeps_evicted_prefixes_and_charges_their_copy_back():
    # blocks of 4 tokens, 6 on the device; every prompt starts with the same 8 tokens (2 blocks).
    # A (prompt 9) runs 0-10 ms and leaves its 2 prefix blocks cached. B (prompt 2, output 21, no
    # full shared block) grows to all 6 blocks by 230 ms, evicting both into the offload tier. C
    # (prompt 9) at 300 ms finds them there: 2 blocks are copied back (1 ms each at the chosen
    # bandwidth), C computes its last token, and the step takes 10 + 2 ms -> done at 312 ms.
    block_bytes = 131072 * 4                       # llama-3.1-8b bf16 KV per token x block size
    offload = {"capacity_gb": 1.0, "bandwidth_gb_s": block_bytes / 1e-3 / 1e9, "latency_us": 0}
    r = tiny_resolved(num_blocks=6, block_size=4, scheduler__max_num_batched_tokens=16,
                      kv_cache={"enable_prefix_caching": True, "block_size": 4, "offload": offload})
    rows = [(0, 9, 1), (0.02, 2, 21), (0.3, 9, 1)]
    specs = RequestSpecs(np.array([x[0] for x in rows], float), np.array([x[1] for x in rows], np.int64),
                         np.array([x[2] for x in rows], np.int64), shared_prefix_tokens=8)
    rec = Cluster(r, specs).run()
    assert timeline(rec) == {0: (COMPLETED, 10.0, 10.0), 1: (COMPLETED, 30.0, 230.0), 2: (COMPLETED, 312.0, 312.0)}
    tier = rec.replicas[0].scheduler.kv.offload
    assert (tier.stored_blocks, tier.loaded_blocks) == (2, 2)
    assert rec.replicas[0].scheduler.prefix_hit_tokens == 8


def test_offload_needs_prefix_caching():
    with pytest.raises(ScenarioError, match="kv_cache.offload: is a tier of the prefix cache"):
        tiny_resolved(kv_cache={"offload": {"capacity_gb": 1}})
