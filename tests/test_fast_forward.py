"""Fast-forward through quiet iterations changes nothing: a run with spans and the same run with one
SimPy event per iteration give identical summaries, requests and per-replica statistics.

The engine's one-event-per-iteration loop is the reference here (tests/test_differential.py checks the
scheduler itself against a straightforward one). Arrival times are drawn both at random and on the
exact instants iterations end, where the order of simultaneous events matters.
"""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simserve.engine import replica as replica_mod
from simserve.engine import sim
from simserve.metrics import requests_frame, summarize

from conftest import specs, tiny_resolved

STEP_S = 0.01
# the instants a replica busy from t=0 ends its iterations, as SimPy computes them
GRID = [0.0]
for _ in range(60):
    GRID.append(GRID[-1] + STEP_S)


def _run(spans: bool, monkeypatch, rows, roofline: bool, **kw):
    with monkeypatch.context() as m:
        if not spans:           # the reference: one event per iteration, one block-due event per block
            m.setattr(sim, "fast_forward_safe", lambda *a: False)
            m.setattr(sim, "blocks_never_shared", lambda *a: False)
        resolved = tiny_resolved(**kw) if not roofline else tiny_resolved(cost_model={"kind": "roofline"}, **kw)
        rec = sim.Cluster(resolved, specs(rows)).run()
    summary = summarize(resolved, rec, requests_frame(rec))
    reps = [{k: getattr(r.stats, k) for k in r.stats.__slots__} for r in rec.replicas]
    itl = sorted(np.repeat(rec.itl_s, rec.itl_counts).tolist())
    return summary, requests_frame(rec).to_csv(), reps, itl


times = st.one_of(st.floats(0, 0.3), st.sampled_from(GRID))
rows = st.lists(st.tuples(times, st.integers(1, 40), st.integers(1, 60)), min_size=1, max_size=30).map(sorted)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(rows=rows, blocks=st.integers(6, 60), bs=st.sampled_from([1, 2, 4, 16]), budget=st.integers(8, 64),
       seqs=st.integers(1, 8), chunked=st.booleans(), replicas=st.integers(1, 3),
       router=st.sampled_from(["round_robin", "least_outstanding"]),
       limit=st.one_of(st.none(), st.floats(0.02, 0.5), st.sampled_from(GRID[2:])), roofline=st.booleans())
def test_spans_change_nothing(monkeypatch, rows, blocks, bs, budget, seqs, chunked, replicas, router, limit, roofline):
    kw = dict(num_blocks=blocks, block_size=bs, scheduler__max_num_batched_tokens=max(budget, seqs),
              scheduler__max_num_seqs=seqs, scheduler__chunked_prefill=chunked, deployment__replicas=replicas,
              deployment__router={"policy": router})
    if not chunked:
        kw["scheduler__max_model_len"] = max(budget, seqs, 100)
        kw["scheduler__max_num_batched_tokens"] = max(budget, seqs, 100)
    if limit is not None:
        kw["run__max_duration_s"] = limit
    assert _run(True, monkeypatch, rows, roofline, **kw) == _run(False, monkeypatch, rows, roofline, **kw)


def test_spans_are_taken_and_cover_most_iterations(monkeypatch):
    """A long decode-heavy run goes through spans for most of its iterations (the test above would
    pass vacuously if the fast path were never taken)."""
    spanned = []
    original = replica_mod.Replica._end_span

    def counting(self):
        before = self.stats.iterations
        original(self)
        spanned.append(self.stats.iterations - before)

    monkeypatch.setattr(replica_mod.Replica, "_end_span", counting)
    rows = [(0.05 * i, 20, 200) for i in range(20)]
    resolved = tiny_resolved(num_blocks=400, block_size=16, scheduler__max_num_seqs=32,
                             scheduler__max_num_batched_tokens=64)
    rec = sim.Cluster(resolved, specs(rows)).run()
    total = sum(r.stats.iterations for r in rec.replicas)
    assert sum(spanned) > 0.8 * total
    assert all(q.outcome == "completed" for q in rec.requests)


def test_no_spans_where_someone_looks_inside_a_replica():
    base = tiny_resolved()
    assert sim.fast_forward_safe(base, specs([(0.0, 1, 1)]))
    for kw in ({"failures": {"events": [{"replica": 0, "at_s": 0.1, "repair_s": 0.1}]}},
               {"kv_cache__enable_prefix_caching": True},
               {"sampling__n": 2},
               {"deployment__replicas": 2, "deployment__router": {"policy": "least_kv"}}):
        assert not sim.fast_forward_safe(tiny_resolved(**kw), specs([(0.0, 1, 1)])), kw
    assert not sim.fast_forward_safe(base, specs([(0.0, 1, 1)], users=1))


def test_timeout_at_lands_exactly_where_no_delay_can():
    import simpy

    from simserve.engine.replica import _timeout_at
    now, t = 0.009774222167285455, 0.11921001034763902
    delay = t - now
    assert now + delay != t and now + __import__("math").nextafter(delay, 1.0) != t   # SimPy's way misses
    env = simpy.Environment()
    env.run(until=now)
    seen = []
    ev = _timeout_at(env, t)
    ev.callbacks.append(lambda e: seen.append(env.now))
    env.run()
    assert seen == [t]
