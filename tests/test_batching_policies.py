"""Request-level batching (static, dynamic): exact timelines under a constant 10 ms step, worked by hand
in the comments, and the closed form of static batching's padding and idle-slot waste."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simserve.engine.request import COMPLETED

from conftest import run_tiny, timeline


def static(batch_size, max_wait_s=0.05):
    return {"policy": "static", "batch_size": batch_size, "max_wait_s": max_wait_s}


def dynamic(max_batch_size, max_wait_s=0.05):
    return {"policy": "dynamic", "max_batch_size": max_batch_size, "max_wait_s": max_wait_s}


def stats(rec):
    st_ = rec.replicas[0].stats
    return st_.iterations, st_.tokens, st_.padding_tokens, st_.wasted_slot_steps


def itl_ms(rec):
    return sorted(round(x * 1e3, 3) for x, n in zip(rec.itl_s, rec.itl_counts) for _ in range(n))


# --- static ---------------------------------------------------------------------------------------

def test_static_batch_is_padded_and_runs_until_its_longest_request():
    # A (prompt 2, out 1), B (5, 4), C (3, 2) arrive at 0 and fill a batch of 3 at once.
    # step1 0-10: prefill 3 rows x 5 tokens = 15 (10 real, 5 padding); all sample their first token
    #   at 10; A is done.
    # step2 10-20: decode 3 rows (B, C; A's row idles); C's 2nd token at 20, C done.
    # step3 20-30 and step4 30-40: decode 3 rows (B; A's and C's rows idle); B done at 40.
    rec = run_tiny([(0, 2, 1), (0, 5, 4), (0, 3, 2)], scheduler=static(3))
    assert timeline(rec) == {0: (COMPLETED, 10.0, 10.0), 1: (COMPLETED, 10.0, 40.0), 2: (COMPLETED, 10.0, 20.0)}
    # closed form: padding 3 x 5 - (2 + 5 + 3) = 5; idle rows: A 3 steps + C 2 steps = 5;
    # tokens computed: 15 + 3 decode steps x 3 rows
    assert stats(rec) == (4, 15 + 9, 5, 3 + 2)
    assert itl_ms(rec) == [10.0, 10.0, 10.0, 10.0]       # C: 10->20; B: 10->20->30->40


def test_static_partial_batch_waits_max_wait_then_runs_padded_rows():
    # batch_size 4, max_wait 50 ms. A (prompt 2, out 2) arrives at 0: 1 < 4 waiting, so the replica
    # sleeps until 0 + 50 ms; B (3, 1) at 20 ms does not fill the batch either.
    # step1 50-60: prefill 4 rows x 3 = 12 tokens (A 2 + B 3 real, 7 padding; 2 rows empty);
    #   A's and B's first tokens at 60, B done.
    # C (1, 1) arrives at 55 ms, mid-batch: it does not join.
    # step2 60-70: decode 4 rows, only A's live (3 idle); A done at 70. The batch is over.
    # C waits from 55 ms until 55 + 50 = 105 ms (alone, below batch_size).
    # step3 105-115: prefill 4 rows x 1 token (1 real, 3 padding); C's only token at 115.
    rec = run_tiny([(0, 2, 2), (0.02, 3, 1), (0.055, 1, 1)], scheduler=static(4))
    assert timeline(rec) == {0: (COMPLETED, 60.0, 70.0), 1: (COMPLETED, 60.0, 60.0), 2: (COMPLETED, 115.0, 115.0)}
    assert stats(rec) == (3, 12 + 4 + 4, 7 + 3, 3)
    assert rec.duration_s == pytest.approx(0.115)


def test_static_full_batch_does_not_wait():
    # batch_size 2, max_wait 1 s: A at 0 waits; B at 15 ms fills the batch, which starts at once.
    rec = run_tiny([(0, 1, 1), (0.015, 1, 1)], scheduler=static(2, max_wait_s=1.0))
    assert timeline(rec) == {0: (COMPLETED, 25.0, 25.0), 1: (COMPLETED, 25.0, 25.0)}
    assert stats(rec) == (1, 2, 0, 0)


def test_static_zero_wait_batches_whatever_is_queued():
    # max_wait 0: A starts alone at 0 in a batch of 4 rows (3 empty, padding 3 x 2 = 6);
    # B (at 5 ms) waits for that batch to end at 20 ms, then runs alone.
    rec = run_tiny([(0, 2, 2), (0.005, 1, 1)], scheduler=static(4, max_wait_s=0.0))
    assert timeline(rec) == {0: (COMPLETED, 10.0, 20.0), 1: (COMPLETED, 30.0, 30.0)}
    # A's batch: 8 prefill tokens (6 padding), 1 decode step of 4 rows (3 idle); B's: 4 tokens (3 padding)
    assert stats(rec) == (3, 8 + 4 + 4, 6 + 3, 3)


def test_static_padding_costs_time_under_a_linear_model():
    # 1 ms per token. Batch of 3 (prompts 2, 5, 3; outputs 1, 4, 2): the prefill computes 15 tokens
    # (15 ms), each decode 3 rows (3 ms): C done at 15 + 3, B at 15 + 3 x 3.
    linear = {"kind": "linear", "base_s": 0.0, "per_token_s": 0.001}
    rows = [(0, 2, 1), (0, 5, 4), (0, 3, 2)]
    rec = run_tiny(rows, scheduler=static(3), cost_model=linear)
    assert timeline(rec) == {0: (COMPLETED, 15.0, 15.0), 1: (COMPLETED, 15.0, 24.0), 2: (COMPLETED, 15.0, 18.0)}
    # dynamic: no padding, finished rows are not computed: prefill 10 ms, decodes of 2, 1, 1 rows
    rec = run_tiny(rows, scheduler=dynamic(3), cost_model=linear)
    assert timeline(rec) == {0: (COMPLETED, 10.0, 10.0), 1: (COMPLETED, 10.0, 14.0), 2: (COMPLETED, 10.0, 12.0)}


def test_static_reserves_kv_for_padded_rows():
    # 8 blocks of 2 tokens. Batch of 2: A (prompt 4, out 1), B (prompt 1, out 3). Padded row length
    # 4 + 3 - 1 = 6 slots = 3 blocks each: 6 blocks fit. C (prompt 1, out 1) would make 3 rows of 3
    # blocks = 9 > 8: with batch_size 3, the batch holds A and B only, and C runs after it.
    # step1 0-10: prefill 3 rows x 4; A done. steps 2-3: decode 3 rows (B live), B done at 30.
    # Then C waits alone (1 < 3) until 0 + 50 ms after its arrival: step4 50-60 is C's batch.
    rec = run_tiny([(0, 4, 1), (0, 1, 3), (0, 1, 1)], num_blocks=8, block_size=2, scheduler=static(3))
    assert timeline(rec) == {0: (COMPLETED, 10.0, 10.0), 1: (COMPLETED, 10.0, 30.0), 2: (COMPLETED, 60.0, 60.0)}
    assert rec.replicas[0].stats.peak_kv_blocks == 6


# --- dynamic --------------------------------------------------------------------------------------

def test_dynamic_batches_by_size_or_timeout_without_joining():
    # max_batch_size 2, max_wait 30 ms.
    # t=0: A (prompt 4, out 3) and B (2, 1) fill a batch. step1 0-10: prefill 4 + 2 = 6 tokens, no
    #   padding; A's first token at 10, B done at 10.
    # C (3, 2) at 5 ms and D (1, 1) at 12 ms wait: nobody joins a running batch.
    # step2 10-20, step3 20-30: decode A alone (B's row idle); A done at 30.
    # t=30: C and D fill the next batch. step4 30-40: prefill 3 + 1; C first at 40, D done at 40.
    # step5 40-50: decode C (D's row idle); C done at 50.
    # E (2, 2) at 100 ms is alone: it starts at 100 + 30 = 130. step6 130-140: prefill, first token at
    #   140; step7 140-150: decode, done at 150.
    rows = [(0, 4, 3), (0, 2, 1), (0.005, 3, 2), (0.012, 1, 1), (0.1, 2, 2)]
    rec = run_tiny(rows, scheduler=dynamic(2, max_wait_s=0.03))
    assert timeline(rec) == {0: (COMPLETED, 10.0, 30.0), 1: (COMPLETED, 10.0, 10.0), 2: (COMPLETED, 40.0, 50.0),
                             3: (COMPLETED, 40.0, 40.0), 4: (COMPLETED, 140.0, 150.0)}
    # tokens: 6 + 1 + 1 + 4 + 1 + 2 + 1; idle rows: B twice, D once
    assert stats(rec) == (7, 16, 0, 3)
    # the same rows under static batching of 2: the same timeline with a constant step, but padded:
    # prompts 4,2 -> 8 (2 padding); 3,1 -> 6 (2); E's batch 2 rows x 2 (2, one empty row); every
    # decode computes 2 rows: idle B, B, D, and E's empty row
    rec_static = run_tiny(rows, scheduler=static(2, max_wait_s=0.03))
    assert timeline(rec_static) == timeline(rec)
    assert stats(rec_static) == (7, 8 + 2 + 2 + 6 + 2 + 4 + 2, 6, 4)


def test_dynamic_batch_limited_by_kv():
    # 4 blocks of 2 tokens. A (prompt 3, out 2) reserves 4 slots = 2 blocks, B (3, 3) 5 slots = 3
    # blocks: together 5 > 4. Two requests wait, so a batch forms at 0, but it holds only A (what KV
    # allows): A's tokens at 10 and 20. B, alone then, waits until 0 + 50 ms: tokens at 60, 70, 80.
    rec = run_tiny([(0, 3, 2), (0, 3, 3)], num_blocks=4, block_size=2, scheduler=dynamic(2))
    assert timeline(rec) == {0: (COMPLETED, 10.0, 20.0), 1: (COMPLETED, 60.0, 80.0)}
    assert rec.replicas[0].stats.peak_kv_blocks == 3


def test_failure_requeues_a_running_batch_elsewhere():
    # 2 replicas, static batches of 2 rows, max_wait 0. A and B (prompt 2, out 4) go to replicas
    # 0 and 1. Replica 0 fails at 15 ms (A has its first token, at 10): A moves to replica 1 and
    # waits for B's batch (ends at 40), then recomputes its prompt and first token (3 tokens,
    # padded to 2 rows x 3) and finishes 3 decodes later: 3 more tokens at 50, 60, 70.
    rec = run_tiny([(0, 2, 4), (0, 2, 4)], deployment__replicas=2, scheduler=static(2, max_wait_s=0.0),
                   failures={"events": [{"replica": 0, "at_s": 0.015, "repair_s": 1.0}]})
    assert timeline(rec) == {0: (COMPLETED, 10.0, 70.0), 1: (COMPLETED, 10.0, 40.0)}
    a = min(rec.requests, key=lambda q: q.id)
    assert (a.replica, a.num_requeues, a.num_generated) == (1, 1, 4)


# --- closed forms ----------------------------------------------------------------------------------

rows_at_zero = st.lists(st.tuples(st.integers(1, 12), st.integers(1, 9)), min_size=1, max_size=14)


@settings(max_examples=60, deadline=None)
@given(rows=rows_at_zero, batch=st.integers(1, 5))
def test_static_waste_closed_form(rows, batch):
    # every request arrives at 0, max_wait 0 and a large KV cache: batches are consecutive runs of
    # `batch` requests in arrival order (the last one may be partial); each takes max output
    # iterations; padding = rows x longest prompt - prompts; idle rows = rows x (max output - 1) -
    # sum of (output - 1)
    rec = run_tiny([(0, p, o) for p, o in rows], scheduler=static(batch, max_wait_s=0.0))
    iters = padding = idle = 0
    for i in range(0, len(rows), batch):
        ps, os_ = [p for p, _ in rows[i:i + batch]], [o for _, o in rows[i:i + batch]]
        iters += max(os_)
        padding += batch * max(ps) - sum(ps)
        idle += batch * (max(os_) - 1) - sum(o - 1 for o in os_)
    it, _, pad, wasted = stats(rec)
    assert (it, pad, wasted) == (iters, padding, idle)
    assert rec.duration_s == pytest.approx(iters * 0.01)
    assert all(q.outcome == COMPLETED for q in rec.requests)


@settings(max_examples=60, deadline=None)
@given(rows=rows_at_zero, batch=st.integers(1, 5))
def test_dynamic_waste_closed_form(rows, batch):
    rec = run_tiny([(0, p, o) for p, o in rows], scheduler=dynamic(batch, max_wait_s=0.0))
    iters = idle = tokens = 0
    for i in range(0, len(rows), batch):
        ps, os_ = [p for p, _ in rows[i:i + batch]], [o for _, o in rows[i:i + batch]]
        iters += max(os_)
        idle += sum(max(os_) - o for o in os_)
        tokens += sum(ps) + sum(o - 1 for o in os_)
    assert stats(rec) == (iters, tokens, 0, idle)


# --- robustness ----------------------------------------------------------------------------------

rows_any = st.lists(st.tuples(st.floats(0, 0.3), st.integers(1, 30), st.integers(1, 25)), min_size=1,
                    max_size=25).map(sorted)


@settings(max_examples=150, deadline=None)
@given(rows=rows_any, policy=st.sampled_from(["static", "dynamic"]), size=st.integers(1, 5),
       wait=st.sampled_from([0.0, 0.004, 0.03]), blocks=st.integers(4, 40), bs=st.sampled_from([1, 2, 16]),
       replicas=st.integers(1, 3), router=st.sampled_from(["round_robin", "least_kv", "prefix_affinity"]),
       fail=st.booleans(), timeout=st.one_of(st.none(), st.floats(0.01, 0.2)))
def test_request_level_batching_finishes_everything(rows, policy, size, wait, blocks, bs, replicas, router,
                                                    fail, timeout):
    sched = static(size, wait) if policy == "static" else dynamic(size, wait)
    kw = dict(num_blocks=blocks, block_size=bs, scheduler=sched, deployment__replicas=replicas,
              deployment__router={"policy": router})
    if fail:
        kw["failures"] = {"events": [{"replica": 0, "at_s": 0.037, "repair_s": 0.05}]}
    if timeout is not None:
        kw["admission"] = {"request_timeout_s": timeout}
    rec = run_tiny(rows, **kw)
    for q in rec.requests:
        assert q.outcome != "unfinished"
        if q.outcome == COMPLETED:
            assert q.num_generated == q.output_tokens and q.first_token_s <= q.finish_s
    for rep in rec.replicas:
        rep.scheduler.kv.check()
        assert rep.scheduler.kv.num_used == 0 and not rep.scheduler.running
