"""Overload: runs end, report instability, and admission control rejects with counted reasons."""
from __future__ import annotations

import pytest

from simserve.engine.request import COMPLETED, REJECTED
from simserve.metrics import requests_frame, stability, summarize

from conftest import run_tiny, tiny_resolved, timeline


def test_max_queue_rejects_arrivals_beyond_it():
    rec = run_tiny([(0, 1, 1)] * 5, scheduler__max_num_seqs=1, admission={"max_queue": 2})
    t = timeline(rec)
    assert [t[i][0] for i in range(5)] == [COMPLETED, COMPLETED, REJECTED, REJECTED, REJECTED]
    assert {q.reason for q in rec.requests if q.outcome == REJECTED} == {"queue_full"}


def test_request_timeout_drops_requests_that_waited_too_long():
    # one sequence at a time: A runs 0-20 ms, B starts at 20 ms (waited 20 < 25), C is checked at
    # 30 ms (waited 30 > 25) and dropped.
    rec = run_tiny([(0, 1, 2)] * 3, scheduler__max_num_seqs=1, admission={"request_timeout_s": 0.025})
    assert timeline(rec) == {0: (COMPLETED, 10.0, 20.0), 1: (COMPLETED, 30.0, 40.0), 2: (REJECTED, None, None)}
    assert rec.requests[2].reason == "timeout"


def _rows(rate, n):
    return [(i / rate, 4, 10) for i in range(n)]


def test_ten_times_the_sustainable_rate_ends_and_is_reported_unstable():
    # 4 sequences of 10 steps each per ~110 ms: about 36 requests/s is sustainable
    sets = dict(scheduler__max_num_seqs=4, scheduler__max_num_batched_tokens=16)
    calm = run_tiny(_rows(18, 400), **sets)
    assert not stability(calm)["unstable"]
    hot = run_tiny(_rows(360, 4000), run__max_duration_s=5.0, **sets)
    st = stability(hot)
    assert st["unstable"] and st["queue_growth_per_s"] > 0.5 * 360
    assert hot.duration_s == pytest.approx(5.0)
    r = tiny_resolved(run__max_duration_s=5.0, **sets)
    s = summarize(r, hot, requests_frame(hot))
    assert s["completed"] + s["unfinished"] == 4000 and s["unfinished_reasons"]["not_arrived"] > 0
    assert s["stability"]["unstable"] is True


def test_admission_keeps_an_overloaded_replica_bounded():
    sets = dict(scheduler__max_num_seqs=4, scheduler__max_num_batched_tokens=16, admission={"max_queue": 8})
    rec = run_tiny(_rows(360, 2000), **sets)
    assert max(r.stats.peak_waiting for r in rec.replicas) <= 8
    reasons = {q.reason for q in rec.requests if q.outcome == REJECTED}
    assert reasons == {"queue_full"}
    assert all(q.outcome in (COMPLETED, REJECTED) for q in rec.requests)


def test_memory_stays_bounded_under_heavy_overload():
    # 10x the sustainable rate for 20,000 requests: memory grows with the requests (one record each),
    # never with the backlog's tokens or the simulated time
    import tracemalloc
    sets = dict(scheduler__max_num_seqs=4, scheduler__max_num_batched_tokens=16, run__max_duration_s=60.0)
    tracemalloc.start()
    rec = run_tiny(_rows(360, 20000), **sets)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert stability(rec)["unstable"]
    assert peak < 20000 * 2000        # under 2 kB per request, everything included
