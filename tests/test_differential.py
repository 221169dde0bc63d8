"""The fast scheduler reproduces the reference (one object per request, every request touched every
iteration) exactly: same first token and finish for every request, same preemptions, same pooled ITLs."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simserve.engine import sim
from simserve.metrics import sorted_records, weighted_percentile
from simserve.policies import SCHEDULERS

from conftest import run_tiny
from reference_scheduler import ReferenceContinuous


def _run(monkeypatch, reference: bool, rows, by_class: bool = True, **kw):
    if not by_class:            # steady decoders' blocks handed out one by one (block-due events)
        monkeypatch.setattr(sim, "blocks_never_shared", lambda *a: False)
    if reference:
        entry = SCHEDULERS._entries["continuous"]
        monkeypatch.setitem(SCHEDULERS._entries, "continuous", (entry[0], ReferenceContinuous))
    try:
        return run_tiny(rows, **kw)
    finally:
        monkeypatch.undo()


def _observed(rec):
    reqs = sorted(rec.requests, key=lambda q: q.id)
    per_req = [(q.outcome, q.reason, q.first_token_s, q.finish_s, q.num_preemptions, q.num_generated, q.replica)
               for q in reqs]
    itl = sorted(np.repeat(rec.itl_s, rec.itl_counts).tolist())
    reps = [(r.stats.iterations, r.stats.sum_kv_blocks, r.stats.peak_kv_blocks, r.stats.tokens,
             r.stats.sum_kv_tokens_used, r.stats.sum_running, r.stats.transfer_s) for r in rec.replicas]
    return per_req, itl, reps, rec.duration_s


rows = st.lists(st.tuples(st.floats(0, 0.3), st.integers(1, 30), st.integers(1, 25)), min_size=1, max_size=30).map(sorted)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(rows=rows, blocks=st.integers(4, 40), bs=st.sampled_from([1, 2, 4, 16]), budget=st.integers(4, 48),
       seqs=st.integers(1, 6), chunked=st.booleans(), replicas=st.integers(1, 3),
       limit=st.one_of(st.none(), st.floats(0.02, 0.4)), fail=st.booleans(), by_class=st.booleans())
def test_fast_scheduler_matches_reference(monkeypatch, rows, blocks, bs, budget, seqs, chunked, replicas, limit, fail,
                                          by_class):
    kw = dict(num_blocks=blocks, block_size=bs, scheduler__max_num_batched_tokens=max(budget, seqs),
              scheduler__max_num_seqs=seqs, scheduler__chunked_prefill=chunked, deployment__replicas=replicas)
    if not chunked:
        kw["scheduler__max_model_len"] = max(budget, seqs)
    if limit is not None:
        kw["run__max_duration_s"] = limit
    if fail:
        kw["failures"] = {"events": [{"replica": 0, "at_s": 0.037, "repair_s": 0.05}]}
    fast = _observed(_run(monkeypatch, False, rows, by_class, **kw))
    ref = _observed(_run(monkeypatch, True, rows, **kw))
    assert fast == ref


@pytest.mark.parametrize("p", [0, 1, 37.5, 50, 90, 99, 100])
def test_weighted_percentile_equals_numpy_on_the_expanded_array(p):
    rng = np.random.default_rng(3)
    values = rng.normal(size=50)
    counts = rng.integers(1, 9, size=50)
    expanded = np.repeat(values, counts)
    assert weighted_percentile(values, counts, p) == pytest.approx(np.percentile(expanded, p), rel=1e-12, abs=1e-12)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 0.25, 1e-3, 7.5, 1e-9, 3.0e4]), st.integers(1, 600)), min_size=1, max_size=60))
def test_records_sorted_as_lexsort_sorts_them(records):
    """The ITL summary sorts (value, count) records with one complex sort; lexsort's order, exactly."""
    values = np.array([v for v, _ in records], dtype=float)
    counts = np.array([c for _, c in records], dtype=np.int64)
    order = np.lexsort((counts, values))
    got_values, got_counts = sorted_records(values, counts)
    assert got_values.tobytes() == values[order].tobytes() and got_counts.tolist() == counts[order].tolist()
