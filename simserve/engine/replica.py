"""A replica: one copy of the model on its devices, as a SimPy process.

The loop is schedule -> ``yield env.timeout(step time)`` -> update: one event per iteration, never one
per token. When there is nothing to run the process sleeps on an event that the next arrival triggers.
"""
from __future__ import annotations

from typing import Callable

import simpy

from ..cost.step import StepCost
from .request import Request
from .scheduler import Scheduler


class ReplicaStats:
    """What the replica did, accumulated per iteration (no per-token storage)."""

    __slots__ = ("iterations", "busy_s", "flops", "bytes", "tokens", "bound_s", "peak_kv_blocks",
                 "peak_waiting", "peak_running", "sum_batch_seqs")

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


class Replica:
    def __init__(self, env: simpy.Environment, index: int, scheduler: Scheduler,
                 step_cost: Callable, itl_out: list[float], on_finish: Callable[[Request], None]):
        self.env = env
        self.index = index
        self.scheduler = scheduler
        self.step_cost = step_cost
        self.itl_out = itl_out
        self.on_finish = on_finish
        self.stats = ReplicaStats()
        self._wake: simpy.Event | None = None
        self.process = env.process(self.run())

    def submit(self, req: Request) -> None:
        req.replica = self.index
        self.scheduler.add(req)
        waiting = len(self.scheduler.waiting)
        if waiting > self.stats.peak_waiting:
            self.stats.peak_waiting = waiting
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def run(self):
        env, sched, stats = self.env, self.scheduler, self.stats
        while True:
            step = sched.schedule()
            if step is None:
                if sched.waiting:
                    raise RuntimeError(f"replica {self.index}: scheduler made no progress with "
                                       f"{len(sched.waiting)} waiting and {len(sched.running)} running")
                self._wake = env.event()
                yield self._wake
                continue
            cost: StepCost = self.step_cost(step.shape)
            used = sched.kv.num_used
            if used > stats.peak_kv_blocks:
                stats.peak_kv_blocks = used
            if len(sched.running) > stats.peak_running:
                stats.peak_running = len(sched.running)
            yield env.timeout(cost.time_s)
            stats.iterations += 1
            stats.busy_s += cost.time_s
            stats.flops += cost.flops
            stats.bytes += cost.bytes
            stats.tokens += step.shape.num_tokens
            stats.sum_batch_seqs += step.shape.num_seqs
            stats.bound_s[cost.bound] = stats.bound_s.get(cost.bound, 0.0) + cost.time_s
            for req in sched.update(step, env.now, self.itl_out):
                self.on_finish(req)
