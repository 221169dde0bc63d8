"""Routers (least_kv, prefix_affinity): which replica each request goes to, and the resulting timeline,
under a constant 10 ms step (worked by hand in the comments)."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from simserve.engine.request import COMPLETED
from simserve.engine import sim
from simserve.engine.sim import Cluster
from simserve.resources import data_dir
from simserve.scenario import load_scenario
from simserve.workload.specs import RequestSpecs

from conftest import run_tiny, tiny_resolved, timeline


def replicas_of(rec):
    return [q.replica for q in sorted(rec.requests, key=lambda q: q.id)]


def run_with_prefixes(rows, hashes, **sets):
    """``rows``: [(arrival_s, prompt, output)]; ``hashes``: each request's prefix hashes."""
    specs = RequestSpecs(np.array([r[0] for r in rows], dtype=float),
                         np.array([r[1] for r in rows], dtype=np.int64),
                         np.array([r[2] for r in rows], dtype=np.int64),
                         prefix_hashes=tuple(tuple(h) for h in hashes))
    return Cluster(tiny_resolved(**sets), specs).run()


# --- least_kv ---------------------------------------------------------------------------------------

def test_least_kv_follows_blocks_not_request_counts():
    # 16-token blocks, 2 replicas, a 64-token budget. A (prompt 40, out 5) at 0: both caches empty,
    # tie -> replica 0, which allocates 3 blocks for A's whole prompt. B (1, 5) at 5 ms: 3 blocks vs 0 -> replica 1,
    # idle, which starts B at once (1 block). C (1, 1) at 6 ms: 3 blocks vs 1 -> replica 1, although
    # both replicas hold one request (least_outstanding would pick replica 0).
    # Replica 0: A's tokens at 10, 20, ..., 50. Replica 1: step 5-15 B prefill (first token 15);
    # step 15-25 B decode + C prefill (C done at 25); B's tokens at 25, 35, 45, 55.
    rows = [(0, 40, 5), (0.005, 1, 5), (0.006, 1, 1)]
    kw = dict(deployment__replicas=2, scheduler__max_num_batched_tokens=64)
    rec = run_tiny(rows, deployment__router={"policy": "least_kv"}, **kw)
    assert replicas_of(rec) == [0, 1, 1]
    assert timeline(rec) == {0: (COMPLETED, 10.0, 50.0), 1: (COMPLETED, 15.0, 55.0), 2: (COMPLETED, 25.0, 25.0)}
    rec = run_tiny(rows, deployment__router={"policy": "least_outstanding"}, **kw)
    assert replicas_of(rec) == [0, 1, 0]


def test_least_kv_ties_go_to_the_lowest_index():
    # all arrive at 0, before any replica has scheduled: every cache is empty, so all go to replica 0
    rec = run_tiny([(0, 1, 1)] * 3, deployment__replicas=3, deployment__router={"policy": "least_kv"})
    assert replicas_of(rec) == [0, 0, 0]
    assert timeline(rec) == {i: (COMPLETED, 10.0, 10.0) for i in range(3)}


# --- prefix_affinity --------------------------------------------------------------------------------

AFFINITY = {"policy": "prefix_affinity"}


def test_prefix_affinity_keeps_a_prefix_on_one_replica():
    # 3 replicas, all arrive at 0 (outstanding counts as each is routed):
    # R0 (7, 1): prefix 7 unseen -> least outstanding, all 0 -> replica 0; remember 7 -> 0
    # R1 (8, 2): unseen -> least outstanding (1, 0, 0) -> replica 1; remember 8 -> 1
    # R2 (7, 3): prefix 7 was last sent to replica 0 -> replica 0, though it is the busiest
    # R3 (): no prefix hashes -> least outstanding (2, 1, 0) -> replica 2
    # R4 (8,): -> replica 1
    # R5 (9,): unseen -> least outstanding (2, 2, 1) -> replica 2
    hashes = [(7, 1), (8, 2), (7, 3), (), (8,), (9,)]
    rows = [(0, 1, 1)] * 6
    rec = run_with_prefixes(rows, hashes, deployment__replicas=3, deployment__router=AFFINITY)
    assert replicas_of(rec) == [0, 1, 0, 2, 1, 2]
    assert timeline(rec) == {i: (COMPLETED, 10.0, 10.0) for i in range(6)}
    # the request carries its prefix hashes from the workload
    assert [q.prefix_hashes for q in sorted(rec.requests, key=lambda q: q.id)] == hashes
    # with a key of two blocks, R2 (7, 3) no longer matches R0 (7, 1): least outstanding (1, 1, 0) -> 2;
    # R3 -> (1, 1, 1) -> 0; R4 (8,) is a different key from (8, 2): (2, 1, 1) -> 1; R5 -> (2, 2, 1) -> 2
    rec = run_with_prefixes(rows, hashes, deployment__replicas=3,
                            deployment__router={"policy": "prefix_affinity", "key_blocks": 2})
    assert replicas_of(rec) == [0, 1, 2, 0, 1, 2]


def test_prefix_affinity_falls_back_when_its_replica_is_down():
    # 2 replicas. R0 (prefix 7) at 0 -> replica 0 (tie). Replica 0 fails at 5 ms: R0 is routed again;
    # replica 0 is not open, so least outstanding among the open ones -> replica 1, which now owns
    # prefix 7. R1 (prefix 7) at 1.5 s, after the repair at 1.005 s: still replica 1.
    # R0 restarts on replica 1 at 5 ms: first token at 15, second at 25. R1: 1510, 1520.
    rows = [(0, 1, 2), (1.5, 1, 2)]
    rec = run_with_prefixes(rows, [(7,), (7,)], deployment__replicas=2, deployment__router=AFFINITY,
                            failures={"events": [{"replica": 0, "at_s": 0.005, "repair_s": 1.0}]})
    assert replicas_of(rec) == [1, 1]
    assert timeline(rec) == {0: (COMPLETED, 15.0, 25.0), 1: (COMPLETED, 1510.0, 1520.0)}


def test_prefix_affinity_without_prefix_hashes_is_least_outstanding():
    rows = [(0, 1, 5), (0, 1, 1), (0.015, 1, 1), (0.015, 1, 1), (0.02, 3, 2), (0.021, 1, 1)]
    got = run_tiny(rows, deployment__replicas=2, deployment__router=AFFINITY)
    want = run_tiny(rows, deployment__replicas=2, deployment__router={"policy": "least_outstanding"})
    assert replicas_of(got) == replicas_of(want) == [0, 1, 1, 0, 1, 0]
    assert timeline(got) == timeline(want)


# --- the request count routers read ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["quickstart", "parallel-sampling", "beam-search", "failures-and-spot",
                                  "speculative-decoding", "preemption-swap", "dynamic-batching",
                                  "static-batching", "pipeline-parallel-405b"])
def test_outstanding_count_is_kept_on_every_path(name, monkeypatch):
    """``Scheduler.num_outstanding`` is kept as requests come and go (arrival, finish, fork, timeout,
    failure, speculative acceptance...), not counted: at every routing decision and at the end of the run
    it equals the waiting plus running requests of every engine."""
    def agree(cluster):
        for rep in cluster.replicas:
            for sched in getattr(rep.scheduler, "engines", [rep.scheduler]):
                assert sched.num_outstanding == len(sched.waiting) + len(sched.running)
        return True

    route = Cluster._route
    clusters = []

    def checked(self, req, pool=None, router=None):
        clusters.append(self) if not clusters else None
        agree(self)
        return route(self, req, pool, router)

    monkeypatch.setattr(Cluster, "_route", checked)
    if name == "failures-and-spot":          # compressed so that requests time out and a failure requeues
        data = yaml.safe_load((data_dir("scenarios") / f"{name}.yaml").read_text())
        data["workload"].update(limit=300, time_scale=0.01)
        data["admission"] = {"request_timeout_s": 1.0}
        data["failures"]["events"] = [{"replica": 0, "at_s": 0.8, "repair_s": 1}]
        resolved = load_scenario(data)
    else:
        limit = "limit" if load_scenario(name).config.workload.kind == "trace" else "num_requests"
        resolved = load_scenario(name, [f"workload.{limit}=300"])
    rec = sim.run(resolved)
    assert len(rec.requests) == 300 and agree(clusters[0])
    if name == "failures-and-spot":
        assert "timeout" in {r.reason for r in rec.requests} and sum(r.num_requeues for r in rec.requests) > 0
