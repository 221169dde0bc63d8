"""A pipeline-parallel replica: stages as SimPy processes, fed micro-batches by virtual engines.

As vLLM's pipeline parallelism with virtual engines (v0): the replica has ``pp`` virtual engines, each a
batch scheduler of its own over ``1/pp`` of the KV blocks. An arriving request joins the engine with the
fewest unfinished requests (ties: the lowest) and stays there. Each engine loops: schedule a step (a
micro-batch), put it into stage 0's queue, wait until the last stage has run it, update. So up to ``pp``
micro-batches are in flight, and a request is in at most one of them. Stage ``s`` is a process that takes
micro-batches from its queue in order, receives their activations from stage ``s - 1`` over the link
between them and runs its layers (one ``yield env.timeout`` for both), and queues them for stage ``s + 1``.
Tokens appear when the last stage finishes. With one busy engine each stage idles while the others run
(the pipeline bubble); with ``pp`` busy engines the stages overlap.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import simpy

from ..cost.batch import BatchShape
from ..cost.step import StepCost
from .admission import expired
from .replica import ReplicaStats, _delay_until
from .request import Request
from .scheduler import Scheduler, Step

_EMPTY_STEP = Step([], [], BatchShape(), 0)


class PipelineStats:
    """Per stage busy time, and the time the pipeline held at least one micro-batch."""

    __slots__ = ("stage_busy_s", "active_s", "microbatches", "transfers", "transfer_s", "_in_flight", "_since")

    def __init__(self, pp: int) -> None:
        self.stage_busy_s = [0.0] * pp
        self.active_s = 0.0           # wall time with at least one micro-batch in flight
        self.microbatches = 0         # micro-batches that left the last stage
        self.transfers = 0            # activation sends between stages
        self.transfer_s = 0.0         # their time, summed
        self._in_flight = 0
        self._since = 0.0

    def enter(self, now: float) -> None:
        if self._in_flight == 0:
            self._since = now
        self._in_flight += 1

    def leave(self, now: float) -> None:
        self._in_flight -= 1
        self.microbatches += 1
        if self._in_flight == 0:
            self.active_s += now - self._since

    def settle(self, now: float) -> None:
        if self._in_flight:
            self.active_s += now - self._since
            self._since = now


@dataclass(slots=True)
class MicroBatch:
    step: Step
    done: simpy.Event


class _KvGroup:
    """The virtual engines' block managers seen as one (for routers and metrics)."""

    offload = None

    def __init__(self, engines: list[Scheduler]):
        self._engines = engines

    @property
    def num_used(self) -> int:
        return sum(e.kv.num_used for e in self._engines)


class EngineGroup:
    """What routers, the cluster and the metrics read of a replica's scheduler, summed over its virtual
    engines. Requests are added to the engine with the fewest unfinished requests."""

    swap = None

    def __init__(self, engines: list[Scheduler]):
        self.engines = engines
        self.kv = _KvGroup(engines)

    @property
    def waiting(self) -> list[Request]:
        return [req for e in self.engines for req in e.waiting]

    @property
    def num_outstanding(self) -> int:
        return sum(e.num_outstanding for e in self.engines)

    @property
    def num_preemptions(self) -> int:
        return sum(e.num_preemptions for e in self.engines)

    @property
    def prefix_hit_tokens(self) -> int:
        return sum(e.prefix_hit_tokens for e in self.engines)

    @property
    def admitted_prompt_tokens(self) -> int:
        return sum(e.admitted_prompt_tokens for e in self.engines)

    def pick(self) -> int:
        """vLLM v0: the virtual engine with the fewest unfinished requests; ties go to the lowest index."""
        return min(range(len(self.engines)), key=lambda i: self.engines[i].num_outstanding)

    def bind(self, step_cost, cost_of, rng) -> None:
        for e in self.engines:
            e.bind(step_cost, cost_of, rng)

    def settle(self) -> None:
        for e in self.engines:
            e.settle()


class PipelinedReplica:
    """``stage_costs[s](shape) -> StepCost`` is stage ``s``'s compute; ``send_s(s, shape)`` the time to send
    a micro-batch's activations from stage ``s`` to ``s + 1``."""

    def __init__(self, env: simpy.Environment, index: int, engines: list[Scheduler], stage_costs: list[Callable],
                 send_s: Callable[[int, BatchShape], float], itl_out, on_finish: Callable[[Request], None],
                 on_timeout: Callable[[Request], None], timeout_s: float | None = None):
        self.env = env
        self.index = index
        self.scheduler = EngineGroup(engines)
        self.stage_costs = stage_costs
        self.send_s = send_s
        self.itl_out = itl_out
        self.on_finish = on_finish
        self.on_timeout = on_timeout
        self.timeout_s = timeout_s
        pp = len(stage_costs)
        self.stats = ReplicaStats()     # busy, FLOPs and bytes are the mean over the pp stages' devices
        self.pipeline = PipelineStats(pp)
        self.up = self.accepting = True
        self._wake: list[simpy.Event | None] = [None] * len(engines)
        self._queue = [simpy.Store(env) for _ in range(pp)]          # micro-batches waiting for stage s
        for s in range(pp):
            env.process(self._stage(s))
        for v in range(len(engines)):
            env.process(self._engine(v))

    def submit(self, req: Request) -> None:
        req.replica = self.index
        v = self.scheduler.pick()
        self.scheduler.engines[v].add(req)
        wake = self._wake[v]
        if wake is not None and not wake.triggered:
            wake.succeed()

    def _engine(self, v: int):
        env, stats = self.env, self.stats
        engines = self.scheduler.engines
        sched = engines[v]
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
                    raise RuntimeError(f"replica {self.index} engine {v}: scheduler made no progress")
                self._wake[v] = env.event()
                if wake_s is None:
                    yield self._wake[v]
                else:
                    yield self._wake[v] | env.timeout(_delay_until(env.now, wake_s))
                self._wake[v] = None
                continue
            waiting = sum(len(e.waiting) for e in engines)
            running = sum(len(e.running) for e in engines)
            used = self.scheduler.kv.num_used
            stats.peak_waiting = max(stats.peak_waiting, waiting)
            stats.peak_running = max(stats.peak_running, running)
            stats.peak_kv_blocks = max(stats.peak_kv_blocks, used)
            stats.sum_kv_blocks += used
            stats.sum_running += running
            stats.sum_kv_tokens_used += sched.kv_tokens_in_use(step) + sum(
                e.kv_tokens_in_use(_EMPTY_STEP) for e in engines if e is not sched)
            mb = MicroBatch(step, env.event())
            self.pipeline.enter(env.now)
            self._queue[0].put(mb)
            yield mb.done
            self.pipeline.leave(env.now)
            stats.iterations += 1
            stats.tokens += step.shape.num_tokens
            stats.sum_batch_seqs += step.shape.num_seqs
            for req in sched.update(step, env.now, self.itl_out):
                self.on_finish(req)

    def _stage(self, s: int):
        """Stage ``s`` takes micro-batches in order; from the second stage on it first receives the
        activations from stage ``s - 1`` (a blocking receive, as NCCL's point-to-point recv before the
        forward: the link is busy only while the receiver is ready), then runs its layers."""
        env, stats, pp = self.env, self.stats, len(self.stage_costs)
        cost_fn, last, pipe = self.stage_costs[s], s == pp - 1, self.pipeline
        while True:
            mb = yield self._queue[s].get()
            cost: StepCost = cost_fn(mb.step.shape)
            recv_s = self.send_s(s - 1, mb.step.shape) if s else 0.0
            yield env.timeout(recv_s + cost.time_s)
            if s:
                pipe.transfers += 1
                pipe.transfer_s += recv_s
            pipe.stage_busy_s[s] += cost.time_s
            stats.busy_s += cost.time_s / pp
            stats.flops += cost.flops / pp
            stats.bytes += cost.bytes / pp
            stats.bound_s[cost.bound] = stats.bound_s.get(cost.bound, 0.0) + cost.time_s / pp
            if last:
                mb.done.succeed()
            else:
                self._queue[s + 1].put(mb)
