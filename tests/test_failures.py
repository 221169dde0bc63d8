"""Failure injection: exact timelines under a constant 10 ms step, and invariants under random faults."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simserve.engine.request import COMPLETED, REJECTED, UNFINISHED
from simserve.errors import ScenarioError
from simserve.metrics import requests_frame, summarize

from conftest import run_tiny, tiny_resolved, timeline


def by_id(rec):
    return sorted(rec.requests, key=lambda q: q.id)


def test_failed_replica_requests_move_and_recompute():
    # A on replica 0 gets its first token at 10 ms; replica 0 fails at 15 ms mid-step. A moves to
    # replica 1, joins at 20 ms recomputing prompt + 1 token (2 tokens), samples token 2 at 30 ms
    # (ITL 20 ms), then 40 and 50 ms. B on replica 1 is undisturbed: 10, 20, 30, 40 ms.
    fail = {"events": [{"replica": 0, "at_s": 0.015, "repair_s": 1.0}]}
    rec = run_tiny([(0, 1, 4), (0, 1, 4)], deployment__replicas=2, failures=fail)
    assert timeline(rec) == {0: (COMPLETED, 10.0, 50.0), 1: (COMPLETED, 10.0, 40.0)}
    a = by_id(rec)[0]
    assert (a.replica, a.num_requeues) == (1, 1)
    r = tiny_resolved(deployment__replicas=2, failures=fail)
    s = summarize(r, rec, requests_frame(rec))
    f = s["failures"]
    assert (f["failure_events"], f["requeued_requests"], f["failure_rejected_requests"]) == (1, 1, 0)
    assert f["replica_downtime_s"] == pytest.approx(0.035)          # down from 15 ms to the end at 50 ms
    assert f["availability"] == pytest.approx(1 - 0.035 / 0.1)
    assert f["mean_e2el_ms_requeued"] == pytest.approx(50.0) and f["mean_e2el_ms_unaffected"] == pytest.approx(40.0)


def test_reject_on_failure():
    fail = {"events": [{"replica": 0, "at_s": 0.015, "repair_s": 1.0}], "on_failure": "reject"}
    rec = run_tiny([(0, 1, 4), (0, 1, 4)], deployment__replicas=2, failures=fail)
    assert timeline(rec) == {0: (REJECTED, 10.0, None), 1: (COMPLETED, 10.0, 40.0)}
    assert by_id(rec)[0].reason == "replica_failure"


def test_repaired_replica_serves_again_and_no_replica_means_rejection():
    fail = {"events": [{"replica": 0, "at_s": 0.005, "repair_s": 0.02}]}
    # one replica: A fails at 5 ms with nowhere to go; B arrives at 10 ms while it is down; C at 30 ms
    rec = run_tiny([(0, 1, 1), (0.01, 1, 1), (0.03, 1, 1)], failures=fail)
    assert timeline(rec) == {0: (REJECTED, None, None), 1: (REJECTED, None, None), 2: (COMPLETED, 40.0, 40.0)}
    assert [q.reason for q in by_id(rec)[:2]] == ["no_replica_available", "no_replica_available"]
    assert rec.replicas[0].stats.down_s == pytest.approx(0.02)


def test_failure_event_must_name_an_existing_replica():
    with pytest.raises(ScenarioError, match=r"failures.events.0.replica: must be < deployment.replicas \(1\), got 3"):
        tiny_resolved(failures={"events": [{"replica": 3, "at_s": 1, "repair_s": 1}]})


def test_spot_reclaim_drains_then_fails():
    spot = {"spot": {"replicas": 1, "reclaim_rate_per_hour": 3600 * 50, "notice_s": 0.02, "replace_s": 0.05}}
    rows = [(i * 0.01, 1, 5) for i in range(60)]
    rec = run_tiny(rows, deployment__replicas=2, failures=spot, deployment__router={"policy": "least_outstanding"})
    outcomes = {q.outcome for q in rec.requests}
    assert outcomes <= {COMPLETED, REJECTED}
    r = tiny_resolved(deployment__replicas=2, failures=spot)
    s = summarize(r, rec, requests_frame(rec))
    assert s["failures"]["spot_reclaims"] >= 1
    assert s["failures"]["failure_events"] >= 1
    assert s["completed"] + s["rejected"] == 60


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.tuples(st.floats(0, 0.3), st.integers(1, 12), st.integers(1, 8)), min_size=1, max_size=20)
       .map(sorted),
       events=st.lists(st.tuples(st.integers(0, 2), st.floats(0, 0.3), st.floats(0.001, 0.2)), max_size=4),
       mtbf=st.one_of(st.none(), st.floats(0.02, 0.5)), policy=st.sampled_from(["requeue", "reject"]),
       blocks=st.integers(6, 16))
def test_no_request_is_lost_or_duplicated_under_faults(rows, events, mtbf, policy, blocks):
    fail = {"events": [{"replica": r, "at_s": t, "repair_s": d} for r, t, d in events],
            "mtbf_s": mtbf, "repair_s": 0.05, "on_failure": policy}
    rec = run_tiny(rows, num_blocks=blocks, block_size=2, deployment__replicas=3, failures=fail,
                   scheduler__max_num_batched_tokens=16, run__max_duration_s=5.0)
    assert sorted(q.id for q in rec.requests) == list(range(len(rows)))
    for q in rec.requests:
        assert q.outcome in (COMPLETED, REJECTED, UNFINISHED)
        if q.outcome == COMPLETED:
            assert q.arrival_s <= q.first_token_s <= q.finish_s and q.num_generated == q.output_tokens
    for rep in rec.replicas:
        rep.scheduler.kv.check()
        live = {q.id for q in rep.scheduler.running} | {q.id for q in rep.scheduler.waiting}
        assert len(live) == len(rep.scheduler.running) + len(rep.scheduler.waiting)
