"""A replica: one copy of the model on its devices, as a SimPy process.

The loop is schedule -> ``yield env.timeout(step time)`` -> update: one event per iteration, never one
per token. The step time is the cost model's plus any host copies the step waits for (``transfer_s``).
When there is nothing to run the process sleeps on an event that the next arrival triggers, or until
the time the scheduler asks to be woken at (``Scheduler.next_wake_s``, a batching timer).
A failure interrupts the process; it sleeps until repaired.
"""
from __future__ import annotations

import math
from typing import Callable

import simpy

from ..cost.step import StepCost
from .admission import expired
from .request import Request
from .scheduler import Scheduler


class ReplicaStats:
    """What the replica did, accumulated per iteration (no per-token storage)."""

    __slots__ = ("iterations", "busy_s", "flops", "bytes", "tokens", "bound_s", "peak_kv_blocks",
                 "peak_waiting", "peak_running", "sum_batch_seqs", "sum_kv_blocks", "down_s",
                 "padding_tokens", "wasted_slot_steps", "sum_kv_tokens_used", "sum_running", "transfer_s")

    def __init__(self) -> None:
        self.iterations = 0
        self.busy_s = 0.0
        self.flops = 0.0
        self.bytes = 0.0
        self.tokens = 0
        self.bound_s: dict[str, float] = {}
        self.peak_kv_blocks = 0
        self.peak_waiting = 0
        self.peak_running = 0
        self.sum_batch_seqs = 0
        self.sum_kv_blocks = 0       # KV blocks in use, summed over iterations (mean KV utilization)
        self.down_s = 0.0
        self.padding_tokens = 0      # prompt padding computed (Step.padding_tokens)
        self.wasted_slot_steps = 0   # batch rows without an unfinished request, summed over iterations
        self.sum_kv_tokens_used = 0  # KV slots filled once each iteration has run, summed (Scheduler.kv_tokens_in_use)
        self.sum_running = 0         # running requests at the start of each iteration, summed
        self.transfer_s = 0.0        # device <-> host copy time charged to steps (Step.transfer_s)


class Replica:
    def __init__(self, env: simpy.Environment, index: int, scheduler: Scheduler, step_cost: Callable,
                 itl_out, on_finish: Callable[[Request], None],
                 on_timeout: Callable[[Request], None], timeout_s: float | None = None):
        self.env = env
        self.index = index
        self.scheduler = scheduler
        self.step_cost = step_cost
        self.itl_out = itl_out
        self.on_finish = on_finish
        self.on_timeout = on_timeout
        self.timeout_s = timeout_s
        self.stats = ReplicaStats()
        self.up = True             # serving
        self.accepting = True      # the router may send here (False while down or draining)
        self._wake: simpy.Event | None = None
        self._repaired: simpy.Event | None = None
        self._down_since = 0.0
        self._step_start = 0.0
        self.process = env.process(self.run())

    def submit(self, req: Request) -> None:
        req.replica = self.index
        self.scheduler.add(req)
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def fail(self) -> list[Request]:
        """Stop now: the step in progress is lost, KV is dropped. Returns the requests it held."""
        lost = self.scheduler.drain()
        self.up = self.accepting = False
        self._down_since = self.env.now
        self._repaired = self.env.event()
        self.process.interrupt("failure")
        return lost

    def repair(self) -> None:
        self.up = self.accepting = True
        self.stats.down_s += self.env.now - self._down_since
        self._repaired.succeed()

    def run(self):
        while True:
            try:
                yield from self._serve()
            except simpy.Interrupt:
                busy = self.env.now - self._step_start if self._step_start >= 0 else 0.0
                self.stats.busy_s += busy            # the lost step still occupied the devices
                self._step_start = -1.0
                yield self._repaired

    def _serve(self):
        env, sched, stats = self.env, self.scheduler, self.stats
        while True:
            if self.timeout_s is not None and sched.waiting:
                for req in expired(sched.waiting, env.now, self.timeout_s):
                    sched.discard(req)
                    self.on_timeout(req)
            sched.now = env.now
            step = sched.schedule()
            if step is None:
                wake_s = sched.next_wake_s()
                if (wake_s is None and sched.waiting) or (wake_s is not None and wake_s <= env.now):
                    raise RuntimeError(f"replica {self.index}: scheduler made no progress with "
                                       f"{len(sched.waiting)} waiting and {len(sched.running)} running")
                self._step_start = -1.0
                self._wake = env.event()
                if wake_s is None:
                    yield self._wake
                else:
                    yield self._wake | env.timeout(_delay_until(env.now, wake_s))
                self._wake = None
                continue
            cost: StepCost = self.step_cost(step.shape)
            time_s = cost.time_s
            if step.transfer_s:                      # host copies the iteration waits for
                time_s += step.transfer_s
            if step.extra is not None:               # work outside the batch shape (a draft model)
                time_s += step.extra.time_s
            if len(sched.waiting) > stats.peak_waiting:
                stats.peak_waiting = len(sched.waiting)
            used = sched.kv.num_used
            stats.sum_kv_blocks += used
            if used > stats.peak_kv_blocks:
                stats.peak_kv_blocks = used
            stats.sum_kv_tokens_used += sched.kv_tokens_in_use(step)
            stats.sum_running += len(sched.running)
            if len(sched.running) > stats.peak_running:
                stats.peak_running = len(sched.running)
            self._step_start = env.now
            yield env.timeout(time_s)
            self._step_start = -1.0
            stats.iterations += 1
            stats.busy_s += time_s
            if step.transfer_s:
                stats.transfer_s += step.transfer_s
            stats.flops += cost.flops
            stats.bytes += cost.bytes
            if step.extra is not None:
                stats.flops += step.extra.flops
                stats.bytes += step.extra.bytes
            stats.tokens += step.shape.num_tokens
            stats.sum_batch_seqs += step.shape.num_seqs
            stats.padding_tokens += step.padding_tokens
            stats.wasted_slot_steps += step.idle_slots
            stats.bound_s[cost.bound] = stats.bound_s.get(cost.bound, 0.0) + time_s
            for req in sched.update(step, env.now, self.itl_out):
                self.on_finish(req)


def _delay_until(now: float, t: float) -> float:
    """A delay that SimPy, adding it to ``now``, turns into a time no earlier than ``t`` (rounding)."""
    delay = t - now
    while now + delay < t:
        delay = math.nextafter(delay, math.inf)
    return delay
