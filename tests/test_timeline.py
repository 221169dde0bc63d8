"""Exact timelines of tiny scenarios under a constant 10 ms step (worked by hand in the comments)."""
from __future__ import annotations

import numpy as np
import pytest

from simserve.engine.request import COMPLETED, REJECTED, UNFINISHED
from simserve.metrics import requests_frame, summarize

from conftest import run_tiny, tiny_resolved, timeline


def itl_ms(rec):
    return [round(x * 1e3, 3) for x in rec.itl_s]


def test_chunked_prefill_shares_steps_with_decode():
    # budget 8. step1: A prefill 4 + B chunk 4 -> A token. step2: A decode 1 + B last 2 prompt tokens ->
    # A token, B first token. step3: both decode -> both finish.
    rec = run_tiny([(0, 4, 3), (0, 6, 2)])
    assert timeline(rec) == {0: (COMPLETED, 10.0, 30.0), 1: (COMPLETED, 20.0, 30.0)}
    assert itl_ms(rec) == [10.0, 10.0, 10.0]
    assert rec.replicas[0].stats.iterations == 3
    assert rec.replicas[0].stats.tokens == 4 + 4 + (1 + 2) + (1 + 1)


def test_without_chunked_prefill_a_prompt_stalls_decodes():
    # step1: prefill A only (B's 6 tokens do not fit the 4 left). step2: prefill B alone while A waits:
    # A's next token comes 20 ms after its first. step3: decode A and B (B done). step4: decode A.
    rec = run_tiny([(0, 4, 3), (0, 6, 2)], scheduler__chunked_prefill=False, scheduler__max_model_len=8)
    assert timeline(rec) == {0: (COMPLETED, 10.0, 40.0), 1: (COMPLETED, 20.0, 30.0)}
    assert itl_ms(rec) == [20.0, 10.0, 10.0]


def test_preemption_by_recompute_exact():
    # 4 blocks of 2 tokens. step1: A 4 tokens (2 blocks), B 2 tokens (1 block); both sample a token.
    # step2: A needs a 3rd block (last free), B needs a 2nd: none left -> B (last) preempted.
    # steps 3-4: A alone (B cannot fit: needs 2 blocks, 1 free); A finishes at 40 ms and frees 4 blocks.
    # step5: B recomputes prompt + its 1 token (3 tokens) and samples token 2 at 50 ms; then 60, 70 ms.
    rec = run_tiny([(0, 4, 4), (0, 2, 4)], num_blocks=4, block_size=2, scheduler__max_num_batched_tokens=16)
    assert timeline(rec) == {0: (COMPLETED, 10.0, 40.0), 1: (COMPLETED, 10.0, 70.0)}
    b = [q for q in rec.requests if q.id == 1][0]
    assert b.num_preemptions == 1
    assert rec.replicas[0].scheduler.num_preemptions == 1
    # A's three ITLs of 10 ms, then B's 40 ms gap (10 -> 50) and two of 10 ms
    assert sorted(itl_ms(rec)) == [10.0, 10.0, 10.0, 10.0, 10.0, 40.0]


def test_arrivals_join_at_iteration_boundaries():
    # A alone from 0; B arrives at 15 ms, mid-step, and joins the step starting at 20 ms.
    rec = run_tiny([(0, 1, 4), (0.015, 1, 1)])
    assert timeline(rec) == {0: (COMPLETED, 10.0, 40.0), 1: (COMPLETED, 30.0, 30.0)}


def test_idle_replica_wakes_on_arrival():
    rec = run_tiny([(0, 1, 1), (1.0, 1, 2)])
    assert timeline(rec) == {0: (COMPLETED, 10.0, 10.0), 1: (COMPLETED, 1010.0, 1020.0)}
    assert rec.duration_s == pytest.approx(1.02)


def test_max_num_seqs_limits_the_batch():
    rec = run_tiny([(0, 1, 2)] * 3, scheduler__max_num_seqs=2)
    assert timeline(rec) == {0: (COMPLETED, 10.0, 20.0), 1: (COMPLETED, 10.0, 20.0), 2: (COMPLETED, 30.0, 40.0)}


def test_round_robin_alternates_replicas():
    rec = run_tiny([(0, 1, 1)] * 4, deployment__replicas=2)
    assert [q.replica for q in sorted(rec.requests, key=lambda q: q.id)] == [0, 1, 0, 1]
    assert timeline(rec) == {i: (COMPLETED, 10.0, 10.0) for i in range(4)}


def test_least_outstanding_prefers_the_emptier_replica():
    # A (long) goes to replica 0 at t=0, B to 1; B finishes at 10 ms, so C at 15 ms goes to 1 and
    # D (also 15 ms) to 0 (1 outstanding each, tie -> lowest index).
    rows = [(0, 1, 5), (0, 1, 1), (0.015, 1, 1), (0.015, 1, 1)]
    rec = run_tiny(rows, deployment__replicas=2, deployment__router={"policy": "least_outstanding"})
    assert [q.replica for q in sorted(rec.requests, key=lambda q: q.id)] == [0, 1, 1, 0]


def test_closed_loop_user_sends_after_each_response():
    rec = run_tiny([(0, 1, 2)] * 3, users=1, think_s=0.005)
    # each request takes 20 ms; the next arrives 5 ms after the previous finished
    assert timeline(rec) == {0: (COMPLETED, 10.0, 20.0), 1: (COMPLETED, 35.0, 45.0), 2: (COMPLETED, 60.0, 70.0)}
    arrivals = [round(q.arrival_s * 1e3, 3) for q in sorted(rec.requests, key=lambda q: q.id)]
    assert arrivals == [0.0, 25.0, 50.0]


def test_too_long_requests_are_rejected_with_a_reason_and_never_block():
    rec = run_tiny([(0, 10, 10), (0, 2, 2)], scheduler__max_model_len=8)
    assert timeline(rec) == {0: (REJECTED, None, None), 1: (COMPLETED, 10.0, 20.0)}
    assert rec.requests[0].reason == "exceeds_max_model_len"


def test_requests_larger_than_the_kv_cache_are_rejected():
    rec = run_tiny([(0, 9, 2), (0, 2, 2)], num_blocks=4, block_size=2, scheduler__max_num_batched_tokens=16)
    assert timeline(rec)[0] == (REJECTED, None, None)
    assert rec.requests[0].reason == "exceeds_kv_capacity"


def test_max_duration_leaves_requests_unfinished():
    rec = run_tiny([(0, 1, 100), (0, 1, 1), (1.0, 1, 1)], run__max_duration_s=0.05)
    assert timeline(rec) == {0: (UNFINISHED, 10.0, None), 1: (COMPLETED, 10.0, 10.0), 2: (UNFINISHED, None, None)}
    assert [q.reason for q in sorted(rec.requests, key=lambda q: q.id)] == ["run_ended", "", "not_arrived"]
    assert rec.duration_s == pytest.approx(0.05)


def test_summary_of_the_chunked_timeline():
    r = tiny_resolved(slo={"ttft_ms": 15})
    from conftest import specs
    from simserve.engine.sim import Cluster
    rec = Cluster(r, specs([(0, 4, 3), (0, 6, 2)])).run()
    s = summarize(r, rec, requests_frame(rec))
    assert s["completed"] == 2 and s["duration_s"] == pytest.approx(0.03)
    assert s["mean_ttft_ms"] == pytest.approx(15.0)
    assert s["p99_ttft_ms"] == pytest.approx(np.percentile([10.0, 20.0], 99))
    assert s["mean_tpot_ms"] == pytest.approx(((30 - 10) / 2 + (30 - 20) / 1) / 2)
    assert s["mean_e2el_ms"] == pytest.approx(30.0)
    assert s["request_throughput"] == pytest.approx(2 / 0.03)
    assert s["output_throughput"] == pytest.approx(5 / 0.03)
    assert s["total_token_throughput"] == pytest.approx(15 / 0.03)
    assert s["request_goodput"] == pytest.approx(1 / 0.03)      # only A meets TTFT <= 15 ms
    assert s["device_utilization"] == pytest.approx(1.0)
    assert s["iterations"] == 3
    # cost: one H100 for 0.03 s at its on-demand price
    price = r.hardware.pricing["on_demand"].usd_per_device_hour
    assert s["cost_usd"] == pytest.approx(price * 0.03 / 3600)
    assert s["cost_per_million_output_tokens_usd"] == pytest.approx(price * 0.03 / 3600 / 5 * 1e6)
    assert s["energy_wh"] == pytest.approx(r.hardware.power.busy_w * 0.03 / 3600)
