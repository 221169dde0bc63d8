"""Parallel sampling (``sampling.n``): one prefill, a fork into n sequences sharing the prompt's KV
blocks (copy-on-write of a partly filled last block), independent decodes, one completion per request."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simserve.engine.kv import BlockManager
from simserve.engine.request import COMPLETED, REJECTED, Request
from simserve.engine.scheduler import ItlRecorder
from simserve.metrics import requests_frame
from simserve.policies.continuous import ContinuousBatching, ContinuousParams

from conftest import run_tiny, timeline


def drive(rows, num_blocks, block_size, budget=64, check=False):
    """Run ``rows`` = [(prompt, output, n), ...] (all waiting at t = 0) through one continuous scheduler
    with 10 ms steps; returns (finished requests, peak KV blocks in use)."""
    sched = ContinuousBatching(ContinuousParams(policy="continuous", max_num_batched_tokens=budget),
                               BlockManager(num_blocks, block_size))
    for i, (p, o, n) in enumerate(rows):
        sched.add(Request(i, 0.0, p, o, n=n))
    itl, done, peak, now = ItlRecorder(), [], 0, 0.0
    for _ in range(10_000):
        step = sched.schedule()
        if step is None:
            break
        peak = max(peak, sched.kv.num_used)
        now = round(now + 0.01, 6)
        done += sched.update(step, now, itl)
        if check:
            sched.kv.check()
    assert sched.kv.num_used == 0 and not sched.running and not sched.waiting
    return done, peak


def test_fork_timeline_exact():
    # Prompt 3, output 3, n = 2; blocks of 2 tokens, constant 10 ms steps.
    # step 1 (0-10 ms): the prompt's 3 tokens fill block 0 and half of block 1; the first token is sampled
    #   at 10 ms (TTFT) and the request forks: parent and child share blocks 0 and 1.
    # step 2 (10-20 ms): both write their first token into slot 4, the shared half block: the parent copies
    #   it (copy-on-write, a 3rd block), the child then owns block 1 alone. Second tokens at 20 ms.
    # step 3 (20-30 ms): both need a block for slot 5 (4th and 5th blocks) and sample their last token.
    # E2EL 30 ms; TPOT over all 2 x 3 output tokens: (30 - 10) / (6 - 1) = 4 ms.
    rec = run_tiny([(0, 3, 3)], num_blocks=16, block_size=2, sampling__n=2)
    assert timeline(rec) == {0: (COMPLETED, 10.0, 30.0)}
    itl = [round(x * 1e3, 3) for x, k in zip(rec.itl_s, rec.itl_counts) for _ in range(k)]
    assert itl == [10.0] * 4                  # two inter-token gaps per sequence
    row = requests_frame(rec).iloc[0]
    assert (row.output_tokens, row.generated_tokens) == (6, 6)
    assert row.tpot_ms == pytest.approx(4.0)
    assert rec.replicas[0].stats.iterations == 3
    req = rec.requests[0]
    assert req.max_kv_blocks(2) == 5          # 1 shared prompt block + 2 x (copied half block + 1)


def test_n1_is_todays_request():
    assert timeline(run_tiny([(0, 3, 3)], num_blocks=16, block_size=2)) == {0: (COMPLETED, 10.0, 30.0)}


@pytest.mark.parametrize("p,o,n,bs", [(3, 3, 2, 2), (4, 5, 3, 2), (7, 9, 4, 4), (16, 1, 3, 4), (5, 2, 8, 4),
                                      (8, 8, 2, 8)])
def test_kv_blocks_closed_form(p, o, n, bs):
    blocks = -(-(p + o - 1) // bs)                     # one sequence at its largest
    shared = p // bs if o > 1 else blocks              # full prompt blocks held once by the whole group
    with_sharing = shared + n * (blocks - shared)      # each sequence: its copy of the half block + its own
    done, peak = drive([(p, o, n)], num_blocks=64, block_size=bs, check=True)
    assert peak == with_sharing == Request(0, 0.0, p, o, n=n).max_kv_blocks(bs)
    _, peak_apart = drive([(p, o, 1)] * n, num_blocks=64, block_size=bs)
    assert peak_apart == n * blocks                    # n separate requests: no sharing
    assert len(done) == 1 and done[0].total_generated == n * o


def test_group_too_large_for_the_device_is_rejected():
    # prompt 4 (2 full blocks of 2 shared), output 3: each sequence needs 1 more block -> 2 + 3 x 1 = 5 > 4
    rec = run_tiny([(0, 4, 3)], num_blocks=4, block_size=2, sampling__n=3)
    assert rec.requests[0].outcome == REJECTED and rec.requests[0].reason == "exceeds_kv_capacity"
    assert run_tiny([(0, 4, 3)], num_blocks=5, block_size=2, sampling__n=3).requests[0].outcome == COMPLETED


def test_only_continuous_batching_samples_in_parallel():
    from simserve.errors import ScenarioError
    with pytest.raises(ScenarioError, match="sampling.n"):
        run_tiny([(0, 1, 1)], sampling__n=2, scheduler={"policy": "static", "max_num_seqs": 4})


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 4)), min_size=1, max_size=6),
       num_blocks=st.integers(8, 20), bs=st.sampled_from([1, 2, 4]), budget=st.integers(4, 32))
def test_random_runs_keep_block_invariants(rows, num_blocks, bs, budget):
    rows = [r for r in rows if Request(0, 0.0, *r).max_kv_blocks(bs) <= num_blocks]
    done, _ = drive(rows, num_blocks, bs, budget=budget, check=True)
    assert sorted(r.id for r in done) == list(range(len(rows)))
    for req in done:
        assert req.total_generated == req.n * req.output_tokens
        assert req.finish_s >= req.first_token_s > 0


@settings(max_examples=25, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 10), st.integers(1, 10)), min_size=1, max_size=5),
       n=st.integers(1, 4), swap=st.booleans(), caching=st.booleans())
def test_random_cluster_runs_complete(rows, n, swap, caching):
    rows = sorted((t * 0.01, p, o) for t, p, o in rows)
    rec = run_tiny(rows, num_blocks=24, block_size=2, sampling__n=n, scheduler__max_num_batched_tokens=16,
                   scheduler__preemption="swap" if swap else "recompute",
                   kv_cache__enable_prefix_caching=caching)
    kv = rec.replicas[0].scheduler.kv
    kv.check()
    assert kv.num_used == 0
    for req in rec.requests:
        fits = req.max_kv_blocks(2) <= 24
        assert req.outcome == (COMPLETED if fits else REJECTED)
        if fits:
            assert req.total_generated == n * req.output_tokens
