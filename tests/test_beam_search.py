"""Beam search (``sampling.beam_width``): one prefill, a fork into W beams sharing the prompt's KV, and after
every iteration some beams take over others' blocks (full blocks shared, a partly filled last block copied
on write); one output per request."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simserve.engine.beam import BeamSearch
from simserve.engine.kv import BlockManager
from simserve.engine.request import COMPLETED, REJECTED, Request
from simserve.engine.scheduler import ItlRecorder
from simserve.errors import ScenarioError
from simserve.metrics import requests_frame
from simserve.policies.continuous import ContinuousBatching, ContinuousParams

from conftest import run_tiny, timeline


class Scripted:
    """A stand-in generator for ``BeamSearch``, which draws 2 m uniforms per group of m beams: the first m
    say whether each beam redraws its parent (here all do), the others pick the parent (here the next list
    of ``script``)."""

    def __init__(self, script):
        self.script = list(script)

    def random(self, size):
        m = size // 2
        parents = self.script.pop(0)
        assert len(parents) == m and all(0 <= p < m for p in parents)
        return np.array([0.0] * m + [(p + 0.5) / m for p in parents])


def drive(rows, num_blocks, block_size, rng, reshuffle=1.0, budget=64, check=True, log=None):
    """Run ``rows`` = [(prompt, output, beams), ...] (all waiting at t = 0) through one continuous scheduler
    with beam search and 10 ms steps. ``log`` collects, per step, its end time (ms), the ids computing
    tokens besides the steady decoders, the number of steady decoders and every running sequence's block
    table after the step. Returns (finished requests, peak KV blocks in use, scheduler)."""
    sched = ContinuousBatching(ContinuousParams(policy="continuous", max_num_batched_tokens=budget),
                               BlockManager(num_blocks, block_size))
    sched.beams = sched.copies = BeamSearch(reshuffle, rng)
    for i, (p, o, w) in enumerate(rows):
        sched.add(Request(i, 0.0, p, o, n=w, beam=w > 1))
    itl, done, peak, now = ItlRecorder(), [], 0, 0.0
    for _ in range(10_000):
        step = sched.schedule()
        if step is None:
            break
        peak = max(peak, sched.kv.num_used)
        tables = {r: sched.kv.table(r) for r in sched.running}
        now = round(now + 0.01, 6)
        done += sched.update(step, now, itl)
        if log is not None:
            log.append((round(now * 1e3), [(r.id, n) for r, n in zip(step.requests, step.new_tokens)],
                        step.num_steady, tables))
        if check:
            sched.kv.check()
    assert sched.kv.num_used == 0 and not sched.running and not sched.waiting
    return done, peak, sched


def test_beam_timeline_exact():
    # Prompt 3, output 4, 2 beams; blocks of 2 tokens, 10 ms steps. Request 0 is beam 0, its child -1 beam 1.
    # step 1 (0-10 ms): the prompt fills block 0 and half of block 1; first token at 10 ms; fork: both beams
    #   share blocks 0 and 1.
    # step 2 (10-20 ms): both write slot 4 into the shared half block: beam 0 copies it (block 2, the 1st
    #   copy), beam 1 then owns block 1 alone. After it the search keeps two children of beam 0 (parents
    #   [0, 0]): beam 1 drops blocks 0-1 (block 1 is freed) and shares beam 0's full blocks 0 and 2, no copy.
    # step 3 (20-30 ms): both need a block for slot 5: beam 0 takes block 1, beam 1 block 3. After it both
    #   children come from beam 1 (parents [1, 1]): beam 0 drops block 1 and shares 0, 2, 3; block 3 holds
    #   one token, so both get a block event at the next step.
    # step 4 (30-40 ms): beam 0 copies block 3 on write (into block 1, the 2nd copy); beam 1 writes in place.
    #   Last token at 40 ms.
    log = []
    done, peak, sched = drive([(3, 4, 2)], num_blocks=8, block_size=2, rng=Scripted([[0, 0], [1, 1]]), log=log)
    assert log == [
        (10, [(0, 3)], 0, {0: (0, 1)}),
        (20, [], 2, {0: (0, 2), -1: (0, 1)}),
        (30, [], 2, {0: (0, 2, 1), -1: (0, 2, 3)}),
        (40, [], 2, {0: (0, 2, 1), -1: (0, 2, 3)}),
    ]
    req = done[0]
    assert [r.id for r in done] == [0] and (req.first_token_s, req.finish_s) == (0.01, 0.04)
    assert sched.beams.num_moves == 2 and sched.kv.num_copied == sched.beams.num_copied == 2
    assert req.total_generated == 8
    assert peak == 4 < req.max_kv_blocks(2) == 5      # beam 1 took over beam 0's second block


def test_beam_search_through_the_cluster():
    # the same request through the whole engine with the constant cost model: TTFT 10 ms, E2EL 40 ms; the
    # user gets one output of 4 tokens, so TPOT = (40 - 10) / (4 - 1) = 10 ms; the model generated 2 x 4
    rec = run_tiny([(0, 3, 4)], num_blocks=8, block_size=2, sampling__beam_width=2)
    assert timeline(rec) == {0: (COMPLETED, 10.0, 40.0)}
    itl = [round(x * 1e3, 3) for x, k in zip(rec.itl_s, rec.itl_counts) for _ in range(k)]
    assert itl == [10.0] * 6                  # three gaps per beam, pooled over both beams
    row = requests_frame(rec).iloc[0]
    assert (row.output_tokens, row.generated_tokens) == (4, 8)
    assert row.tpot_ms == pytest.approx(10.0)
    assert rec.replicas[0].stats.iterations == 4
    beams = rec.replicas[0].scheduler.beams
    assert beams.copy_s == 0.0 and beams.num_copied >= 1     # constant cost model: copies take no time


@pytest.mark.parametrize("p,o,w,bs", [(3, 4, 2, 2), (4, 5, 3, 2), (7, 9, 4, 4), (16, 1, 3, 4), (5, 2, 8, 4),
                                      (8, 8, 2, 8), (1, 12, 3, 1)])
def test_kv_blocks_closed_form(p, o, w, bs):
    # never more than the prompt's full blocks once plus, per beam, its blocks past them (half block included)
    blocks = -(-(p + o - 1) // bs)                     # one sequence at its largest
    shared = p // bs if o > 1 else blocks
    bound = shared + w * (blocks - shared)
    assert Request(0, 0.0, p, o, n=w, beam=True).max_kv_blocks(bs) == bound
    # beams that never swap (reshuffle 0) hold exactly the bound, like parallel sampling
    done, peak, _ = drive([(p, o, w)], 64, bs, np.random.default_rng(0), reshuffle=0.0)
    assert peak == bound and done[0].total_generated == w * o
    for seed in range(5):
        done, peak, _ = drive([(p, o, w)], 64, bs, np.random.default_rng(seed))
        assert peak <= bound and done[0].total_generated == w * o
    # W separate requests share nothing
    _, peak_apart, _ = drive([(p, o, 1)] * w, 64, bs, np.random.default_rng(0))
    assert peak_apart == w * blocks >= bound


def test_copies_closed_form():
    # 2 beams, beam 1 replaced by a copy of beam 0 after every step. A move that makes two beams share a
    # partly filled last block costs exactly one copy at the next step; with the last block full, none.
    # Prompt 2, output 6, blocks of 4: after the prefill the beams decode 5 ticks (tokens 2-6); after
    # ticks 1-4 they hold 3, 4, 5, 6 KV slots and are reshuffled (after the 5th they are done): 4 moves,
    # 3 of them onto a partly filled block; plus the fork's copy of the half-filled prompt block.
    rng = Scripted([[0, 0]] * 4)
    done, _, sched = drive([(2, 6, 2)], 16, 4, rng)
    assert not rng.script
    assert sched.beams.num_moves == 4 and sched.kv.num_copied == 1 + 3


def test_seeded_runs_are_deterministic():
    def once():
        rec = run_tiny([(0, 5, 20), (0.001, 9, 15), (0.002, 3, 7)], num_blocks=40, block_size=2,
                       sampling__beam_width=4, seed=3, cost_model={"kind": "roofline"})
        return requests_frame(rec).to_csv(), vars_of(rec.replicas[0].scheduler.beams)
    assert once() == once()


def vars_of(beams):
    return beams.num_moves, beams.num_copied, beams.copy_bytes, beams.copy_s


def test_roofline_charges_the_copies():
    base = dict(num_blocks=200, block_size=16, cost_model={"kind": "roofline"})
    rows = [(0, 100, 64)]
    rec = run_tiny(rows, sampling__beam_width=4, **base)
    beams = rec.replicas[0].scheduler.beams
    assert beams.num_copied > 0 and beams.copy_s > 0
    from simserve.engine.sim import beam_search
    from conftest import tiny_resolved
    r = tiny_resolved(num_blocks=200, block_size=16, sampling__beam_width=4, cost_model={"kind": "roofline"})
    block_bytes = r.memory.kv_bytes_per_token * 16
    assert beams.copy_bytes == pytest.approx(2 * beams.num_copied * block_bytes)   # read + write each
    assert beam_search(r, np.random.default_rng(0)).copy_cost is not None
    # the same run with reshuffle 0 copies only at the fork, and takes no longer than with reshuffles
    still = run_tiny(rows, sampling__beam_width=4, sampling__beam_reshuffle=0.0, **base)
    b0 = still.replicas[0].scheduler.beams
    assert b0.num_moves == 0 and b0.num_copied == 3
    assert still.requests[0].finish_s <= rec.requests[0].finish_s


def test_group_too_large_for_the_device_is_rejected():
    rec = run_tiny([(0, 4, 3)], num_blocks=4, block_size=2, sampling__beam_width=3)
    assert rec.requests[0].outcome == REJECTED and rec.requests[0].reason == "exceeds_kv_capacity"
    assert run_tiny([(0, 4, 3)], num_blocks=5, block_size=2, sampling__beam_width=3).requests[0].outcome == COMPLETED


@pytest.mark.parametrize("sets,path", [
    ({"sampling__beam_width": 2, "sampling__n": 2}, "sampling.beam_width"),
    ({"sampling__beam_width": 2, "scheduler": {"policy": "static", "max_num_seqs": 4}}, "sampling.beam_width"),
    ({"sampling__beam_reshuffle": 0.5}, "sampling.beam_reshuffle"),
    ({"sampling__beam_width": 0}, "sampling.beam_width"),
    ({"sampling__beam_width": 2, "sampling__beam_reshuffle": 1.5}, "sampling.beam_reshuffle"),
])
def test_bad_input(sets, path):
    with pytest.raises((ScenarioError, ValueError), match=path.replace(".", r"\.")):
        run_tiny([(0, 1, 1)], **sets)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 4)), min_size=1, max_size=6),
       num_blocks=st.integers(8, 20), bs=st.sampled_from([1, 2, 4]), budget=st.integers(4, 32),
       reshuffle=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 99))
def test_random_runs_keep_block_invariants(rows, num_blocks, bs, budget, reshuffle, seed):
    # preemption included: block tables and reference counts agree after every step, all blocks come back
    rows = [r for r in rows if Request(0, 0.0, r[0], r[1], n=r[2], beam=True).max_kv_blocks(bs) <= num_blocks]
    done, _, _ = drive(rows, num_blocks, bs, np.random.default_rng(seed), reshuffle, budget=budget)
    assert sorted(r.id for r in done) == list(range(len(rows)))
    for req in done:
        assert req.total_generated == req.n * req.output_tokens
        assert req.finish_s >= req.first_token_s > 0


@settings(max_examples=25, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 10), st.integers(1, 10)), min_size=1, max_size=5),
       w=st.integers(2, 4), swap=st.booleans(), caching=st.booleans())
def test_random_cluster_runs_complete(rows, w, swap, caching):
    rows = sorted((t * 0.01, p, o) for t, p, o in rows)
    rec = run_tiny(rows, num_blocks=24, block_size=2, sampling__beam_width=w, scheduler__max_num_batched_tokens=16,
                   scheduler__preemption="swap" if swap else "recompute",
                   kv_cache__enable_prefix_caching=caching)
    kv = rec.replicas[0].scheduler.kv
    kv.check()
    assert kv.num_used == 0
    df = requests_frame(rec)
    for req, out in zip(sorted(rec.requests, key=lambda r: r.id), df.output_tokens):
        fits = req.max_kv_blocks(2) <= 24
        assert req.outcome == (COMPLETED if fits else REJECTED)
        if fits:
            assert req.total_generated == w * req.output_tokens and out == req.output_tokens


def test_beams_that_never_swap_run_like_parallel_sampling():
    # reshuffle 0 under KV pressure (preemptions) and the constant cost model: the same timeline as n = W
    # parallel sampling; only the output-token count differs (one beam returned, not W samples)
    rows = [(0.0, 6, 9), (0.0, 3, 12), (0.01, 9, 5), (0.02, 4, 10), (0.02, 5, 8)]
    kw = dict(num_blocks=20, block_size=2, scheduler__max_num_batched_tokens=16)
    beams = run_tiny(rows, sampling__beam_width=3, sampling__beam_reshuffle=0.0, **kw)
    samples = run_tiny(rows, sampling__n=3, **kw)
    assert timeline(beams) == timeline(samples)
    assert all(r.outcome == COMPLETED for r in beams.requests)
    assert sum(r.scheduler.num_preemptions for r in beams.replicas) > 0
    b, s = requests_frame(beams), requests_frame(samples)
    assert list(b.generated_tokens) == list(s.generated_tokens)
    assert list(b.output_tokens * 3) == list(s.output_tokens)


@pytest.mark.parametrize("w,r", [(4, 1.0), (4, 0.3), (2, 1.0), (8, 0.5)])
def test_moves_closed_form(w, r):
    # a beam dies when nobody picks it: its own parent is redrawn and is another beam (r (1 - 1/W)) and
    # each of the W - 1 others keeps its parent or draws another (1 - r/W); expected moves per iteration
    # W r (1 - 1/W) (1 - r/W)^(W - 1). With blocks of one token no block is ever partly filled: no copies.
    o = 3000
    done, _, sched = drive([(1, o, w)], w * o, 1, np.random.default_rng(7), reshuffle=r, check=False)
    selections = o - 2                      # after every decode iteration but the last
    expected = w * r * (1 - 1 / w) * (1 - r / w) ** (w - 1) * selections
    assert sched.beams.num_moves == pytest.approx(expected, rel=0.05)
    assert sched.kv.num_copied == 0


def test_beams_that_never_swap_run_like_parallel_sampling_under_the_roofline_too():
    # with the roofline cost model the fork's copy-on-write copies take time, for beams and samples alike
    rows = [(0.0, 6, 9), (0.0, 3, 12), (0.01, 9, 5), (0.02, 4, 10), (0.02, 5, 8)]
    kw = dict(num_blocks=20, block_size=2, scheduler__max_num_batched_tokens=16, cost_model={"kind": "roofline"})
    beams = run_tiny(rows, sampling__beam_width=3, sampling__beam_reshuffle=0.0, **kw)
    samples = run_tiny(rows, sampling__n=3, **kw)
    assert timeline(beams) == timeline(samples)
    b, s = beams.replicas[0].scheduler.copies, samples.replicas[0].scheduler.copies
    assert s.num_copied == b.num_copied > 0 and s.copy_s == b.copy_s > 0
