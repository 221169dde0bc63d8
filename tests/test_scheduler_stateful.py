"""A hypothesis state machine drives the continuous scheduler directly through arrivals, iterations,
failures (everything dropped and re-queued) and preemptions, and checks after every step that no
request is lost or duplicated, the KV cache is consistent, and the steady-decoder bookkeeping agrees
with the requests it stands for."""
from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from simserve.engine.kv import BlockManager
from simserve.engine.request import Request
from simserve.engine.scheduler import ItlRecorder
from simserve.policies.continuous import ContinuousBatching, ContinuousParams


class SchedulerMachine(RuleBasedStateMachine):
    by_class = False

    def __init__(self):
        super().__init__()
        params = ContinuousParams(policy="continuous", max_num_seqs=4, max_num_batched_tokens=12)
        self.sched = ContinuousBatching(params, BlockManager(num_blocks=10, block_size=4))
        if self.by_class:
            self.sched.count_blocks_by_class()
        self.requests: dict[int, Request] = {}
        self.finished: set[int] = set()
        self.now = 0.0
        self.itl = ItlRecorder()
        self.next_id = 0

    @rule(prompt=st.integers(1, 20), output=st.integers(1, 12))
    def arrive(self, prompt, output):
        if prompt + output - 1 > 40:      # the engine rejects what can never fit (10 blocks x 4 tokens)
            return
        req = Request(self.next_id, self.now, prompt, output)
        self.next_id += 1
        self.requests[req.id] = req
        self.sched.add(req)

    @rule(steps=st.integers(1, 5))
    def iterate(self, steps):
        for _ in range(steps):
            step = self.sched.schedule()
            if step is None:
                assert not self.sched.waiting, "no progress while requests wait"
                return
            self.now += 0.01
            for req in self.sched.update(step, self.now, self.itl):
                assert req.num_generated == req.output_tokens and req.id not in self.finished
                self.finished.add(req.id)

    @rule()
    def fail_and_requeue(self):
        for req in self.sched.drain():
            assert req.num_computed == 0
            self.sched.add(req)

    @invariant()
    def every_request_is_somewhere_once(self):
        waiting = [r.id for r in self.sched.waiting]
        running = list(self.sched.running)
        places = waiting + running + sorted(self.finished)
        assert sorted(places) == sorted(self.requests), "a request was lost or duplicated"
        assert self.sched.num_outstanding == len(waiting) + len(running)     # kept, not counted
        assert len(running) <= 4

    @invariant()
    def kv_and_steady_bookkeeping_agree(self):
        kv, sched = self.sched.kv, self.sched
        kv.check()
        steady = [r for r in sched.running.values() if r.steady]
        assert len(steady) == sched.num_steady
        assert sum(r.c0 - r.k0 for r in steady) == sched._steady_sum
        for r in sched.running.values():
            computed = r.c0 + (sched.tick - r.k0) if r.steady else r.num_computed
            assert sched.blocks_held(r) * kv.block_size >= computed    # computed tokens have KV slots
        for r in sched.waiting:
            assert kv.num_held(r.id) == 0
        held = sum(sched.blocks_held(r) for r in sched.running.values())
        assert held == kv.num_used


TestSchedulerMachine = SchedulerMachine.TestCase
TestSchedulerMachine.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)


class SchedulerByClassMachine(SchedulerMachine):
    """The same, with steady decoders' blocks counted by class (Scheduler.count_blocks_by_class)."""
    by_class = True


TestSchedulerByClassMachine = SchedulerByClassMachine.TestCase
TestSchedulerByClassMachine.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)


def _drive(sched, leave_at=None, iterations=120):
    """Run a fixed set of requests through ``sched``; what each iteration ran and the KV in use."""
    for i in range(6):
        sched.add(Request(i, 0.0, 3 + 5 * i, 9 + 4 * i))
    itl, trace, now = ItlRecorder(), [], 0.0
    for k in range(iterations):
        if k == leave_at:
            sched._leave_class_mode()
        step = sched.schedule()
        if step is None:
            break
        now += 0.01
        done = [r.id for r in sched.update(step, now, itl)]
        trace.append((step.num_steady, [r.id for r in step.requests], list(step.new_tokens), sched.kv.num_used, done))
        sched.kv.check()
    return trace


def test_leaving_class_counting_midway_changes_nothing():
    # blocks counted by class, then (as when sharing begins) one block-due event per decoder from some
    # iteration on: the same iterations, preemptions and KV use as block-due events throughout
    def make(by_class):
        params = ContinuousParams(policy="continuous", max_num_seqs=4, max_num_batched_tokens=16)
        sched = ContinuousBatching(params, BlockManager(num_blocks=14, block_size=4))
        if by_class:
            sched.count_blocks_by_class()
        return sched
    reference = _drive(make(False))
    for leave_at in (None, 3, 10, 25):
        assert _drive(make(True), leave_at) == reference
