"""Prefill/decode disaggregation: exact timelines, the KV transfer time in closed form, decodes that no
long prompt stalls, and invariants under random workloads."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simserve.engine.disaggregation import kv_transfer_s
from simserve.engine.request import COMPLETED, REJECTED, UNFINISHED
from simserve.engine.sim import Cluster
from simserve.errors import ScenarioError
from simserve.metrics import requests_frame, summarize

from conftest import run_tiny, specs, tiny_resolved, timeline

SPLIT = {"prefill_replicas": 1, "decode_replicas": 1}


def _transfer_ms(prompt_tokens: int, link: str = "inter_node") -> float:
    """The closed form, from the profile's numbers (H100 SXM): overhead + latency + bytes / bandwidth."""
    hw = tiny_resolved().hardware
    kv_per_token = 2 * 32 * 8 * 128 * 2          # Llama-3.1-8B: K and V, 32 layers, 8 KV heads of 128, bf16
    ln = getattr(hw.interconnect, link)
    eff = hw.efficiency.send_recv
    return (eff.overhead_us * 1e-6 + ln.latency_us * 1e-6
            + prompt_tokens * kv_per_token / (ln.bandwidth_gb_s * 1e9 * eff.bandwidth_fraction)) * 1e3


def test_exact_timeline_one_prefill_one_decode_replica():
    # 10 ms steps, budget 8. Prefill replica: step 0-10: A's 4 prompt tokens + B's first 4 -> A's first
    # token at 10 (TTFT). Step 10-20: B's last 2 -> B's first token at 20.
    # A's 4 tokens of KV cross the inter-node link: tA = 4.634 us + 5 us + 4 x 131072 B / (50 GB/s x 0.803)
    # = 22.69 us; A joins the idle decode replica at 10 + tA, whose steps end at 20 + tA (token 2) and
    # 30 + tA (token 3, done). B (6 tokens, tB = 29.22 us) arrives at 20 + tB, just after A's second step
    # began at 20 + tA, so it decodes in the next one: 30 + tA -> 40 + tA, its second and last token.
    tA, tB = _transfer_ms(4), _transfer_ms(6)
    assert tA == pytest.approx(0.02269, abs=1e-5) and tB == pytest.approx(0.02922, abs=1e-5)
    rec = run_tiny([(0, 4, 3), (0, 6, 2)], deployment__disaggregation=SPLIT)
    r3 = lambda x: round(x, 3)  # noqa: E731
    assert timeline(rec) == {0: (COMPLETED, 10.0, r3(30 + tA)), 1: (COMPLETED, 20.0, r3(40 + tA))}
    # A: 10 -> 20+tA (the transfer shows in the first gap), then 10 ms; B: 20 -> 40+tA
    itl = sorted(round(x * 1e3, 6) for x in rec.itl_s)
    assert itl == pytest.approx(sorted([10 + tA, 10.0, 20 + tA]), abs=1e-6)
    assert [q.replica for q in sorted(rec.requests, key=lambda q: q.id)] == [1, 1]
    assert rec.replicas[0].stats.iterations == 2 and rec.replicas[1].stats.iterations == 3
    assert rec.disaggregation["kv_transfers"] == 2
    assert rec.disaggregation["kv_transfer_s"] * 1e3 == pytest.approx(tA + tB)
    # the prefill replica freed every block; so did the decode replica
    assert rec.replicas[0].scheduler.kv.num_used == 0 and rec.replicas[1].scheduler.kv.num_used == 0


def test_a_single_token_request_never_leaves_the_prefill_pool():
    rec = run_tiny([(0, 4, 1)], deployment__disaggregation=SPLIT)
    assert timeline(rec) == {0: (COMPLETED, 10.0, 10.0)}
    assert rec.disaggregation["kv_transfers"] == 0 and rec.replicas[1].stats.iterations == 0


def test_transfer_time_closed_form_and_tensor_parallel_shards():
    hw = tiny_resolved().hardware
    eff, inter, intra = hw.efficiency.send_recv, hw.interconnect.inter_node, hw.interconnect.intra_node
    # 1000 tokens of Llama-3.1-8B bf16 KV: 131,072,000 bytes over 50 GB/s x 0.803
    assert kv_transfer_s(1000, 131072.0, inter, eff) == pytest.approx(
        4.634e-6 + 5e-6 + 131_072_000 / (50e9 * 0.803))
    assert kv_transfer_s(1000, 131072.0, intra, eff) == pytest.approx(
        4.634e-6 + 3e-6 + 131_072_000 / (450e9 * 0.803))
    # tensor parallel 2: each device holds and sends half the KV heads, in parallel with its peer
    tp2 = tiny_resolved(deployment__tensor_parallel=2).memory.kv_bytes_per_token
    assert tp2 == 131072.0 / 2
    fixed = 4.634e-6 + 5e-6
    assert kv_transfer_s(1000, tp2, inter, eff) - fixed == pytest.approx((kv_transfer_s(1000, 131072.0, inter, eff) - fixed) / 2)
    # and the engine uses it: one request over the intra-node link
    rec = run_tiny([(0, 8, 2)], deployment__disaggregation={**SPLIT, "link": "intra_node"})
    assert rec.requests[0].finish_s * 1e3 == pytest.approx(10 + _transfer_ms(8, "intra_node") + 10)


def test_long_prompts_do_not_stall_decodes():
    # roofline step times: 16 decoders of 300 tokens, and twelve 8000-token prompts arriving among them.
    # Colocated on 2 replicas, iterations that carry a prompt chunk are slow and every decoder of that
    # replica waits for them; split 1 + 1 on the same 2 devices, the decode replica never runs a prompt.
    rows = sorted([(0.0, 16, 300)] * 16 + [(0.1 * i, 8000, 2) for i in range(1, 13)])
    common = dict(cost_model={"kind": "roofline"}, scheduler__max_num_seqs=64, scheduler__max_num_batched_tokens=8192)
    colocated = run_tiny(rows, deployment__replicas=2, **common)
    split = run_tiny(rows, deployment__disaggregation=SPLIT, **common)
    p99 = lambda rec: np.percentile(np.repeat(rec.itl_s, rec.itl_counts), 99)  # noqa: E731
    assert all(q.outcome == COMPLETED for q in colocated.requests + split.requests)
    assert p99(split) < p99(colocated) / 3
    # same devices, so the same cost per second
    r_split = tiny_resolved(deployment__disaggregation=SPLIT)
    assert r_split.num_devices == tiny_resolved(deployment__replicas=2).num_devices == 2


def test_summary_counts_both_pools_and_reports_transfers():
    r = tiny_resolved(deployment__disaggregation={"prefill_replicas": 2, "decode_replicas": 1},
                      deployment__tensor_parallel=2)
    rec = Cluster(r, specs([(0, 4, 3), (0, 6, 2), (0, 5, 1)])).run()
    s = summarize(r, rec, requests_frame(rec))
    assert s["devices"] == 2 * 3 and r.config.deployment.replicas == 3
    d = s["disaggregation"]
    assert (d["prefill_replicas"], d["decode_replicas"], d["link"]) == (2, 1, "inter_node")
    assert (d["kv_transfers"], d["kv_transfer_tokens"]) == (2, 10)
    assert d["kv_transfer_bytes_per_device"] == 10 * 131072 / 2
    assert d["mean_kv_transfer_ms"] == pytest.approx(d["kv_transfer_s"] / 2 * 1e3)
    assert "disaggregation" not in summarize(tiny_resolved(), run_tiny([(0, 1, 1)]))


def test_validation():
    with pytest.raises(ScenarioError, match=r"^deployment\.replicas: must be unset or prefill_replicas \+ decode_replicas \(2\)"):
        tiny_resolved(deployment__disaggregation=SPLIT, deployment__replicas=3)
    assert tiny_resolved(deployment__disaggregation=SPLIT, deployment__replicas=2).config.deployment.replicas == 2
    with pytest.raises(ScenarioError, match=r"^failures: "):
        tiny_resolved(deployment__disaggregation=SPLIT, failures={"events": [{"replica": 0, "at_s": 1.0, "repair_s": 1.0}]})
    with pytest.raises(ScenarioError, match=r"^deployment\.disaggregation: "):
        tiny_resolved(deployment__disaggregation=SPLIT, scheduler={"policy": "static"})
    with pytest.raises(ScenarioError, match=r"^deployment\.disaggregation\.prefill_replicas"):
        tiny_resolved(deployment__disaggregation={"prefill_replicas": 0, "decode_replicas": 1})
    with pytest.raises(ScenarioError, match=r"^deployment\.disaggregation\.link"):
        tiny_resolved(deployment__disaggregation={**SPLIT, "link": "pcie"})


class _Counting(Cluster):
    """Records every request end (completed or rejected) by id."""

    def _count(self, req):
        self.ended = getattr(self, "ended", [])
        self.ended.append(req.id)
        super()._count(req)


rows = st.lists(st.tuples(st.floats(0, 0.3), st.integers(1, 30), st.integers(1, 25)), min_size=1, max_size=25).map(sorted)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows, prefill=st.integers(1, 2), decode=st.integers(1, 2), blocks=st.integers(4, 40),
       bs=st.sampled_from([1, 2, 4, 16]), budget=st.integers(4, 48), seqs=st.integers(1, 6),
       chunked=st.booleans(), limit=st.one_of(st.none(), st.floats(0.02, 0.4)),
       router=st.sampled_from(["round_robin", "least_outstanding", "least_kv"]),
       max_queue=st.one_of(st.none(), st.integers(1, 4)))
def test_every_request_ends_exactly_once(rows, prefill, decode, blocks, bs, budget, seqs, chunked, limit, router,
                                         max_queue):
    sets = dict(num_blocks=blocks, block_size=bs, scheduler__max_num_batched_tokens=max(budget, seqs),
                scheduler__max_num_seqs=seqs, scheduler__chunked_prefill=chunked,
                deployment__disaggregation={"prefill_replicas": prefill, "decode_replicas": decode,
                                            "decode_router": {"policy": router}})
    if not chunked:
        sets["scheduler__max_model_len"] = max(budget, seqs)
    if limit is not None:
        sets["run__max_duration_s"] = limit
    if max_queue is not None:
        sets["admission__max_queue"] = max_queue
    cluster = _Counting(tiny_resolved(**sets), specs(rows))
    rec = cluster.run()
    ended = getattr(cluster, "ended", [])
    assert len(ended) == len(set(ended))
    reqs = sorted(rec.requests, key=lambda q: q.id)
    assert [q.id for q in reqs] == list(range(len(rows)))
    for q in reqs:
        assert q.outcome in (COMPLETED, REJECTED, UNFINISHED)
        assert (q.id in ended) == (q.outcome != UNFINISHED)
        if q.outcome == COMPLETED:
            assert q.num_generated == q.output_tokens and 0 <= q.first_token_s <= q.finish_s
            if q.output_tokens > 1:       # at least the transfer and one step after the first token
                assert q.finish_s - q.first_token_s >= 0.01
    if limit is None:
        assert all(q.outcome != UNFINISHED for q in reqs)
        assert all(r.scheduler.kv.num_used == 0 for r in rec.replicas)
    started = sum(1 for q in reqs if q.first_token_s >= 0 and q.output_tokens > 1)
    if limit is None:
        assert rec.disaggregation["kv_transfers"] == started
    else:
        assert rec.disaggregation["kv_transfers"] <= started
