"""A replica: one copy of the model on its devices, as a SimPy process.

The loop is schedule -> ``yield env.timeout(step time)`` -> update: one event per iteration, never one
per token. The step time is the cost model's plus any host copies the step waits for (``transfer_s``).
When there is nothing to run the process sleeps on an event that the next arrival triggers, or until
the time the scheduler asks to be woken at (``Scheduler.next_wake_s``, a batching timer).
A failure interrupts the process; it sleeps until repaired.

On this hot path the loop reads SimPy's clock as ``env._now`` (``env.now`` is a property, which costs a
function call in CPython 3.11) and puts its timeouts on SimPy's queue itself (:func:`_timeout_at`, what
``env.timeout`` does without its two calls); pyproject.toml pins SimPy below 5 for these internals.

Fast-forward (``spans=True``): when the next iterations are *quiet* (only steady decoders, none
finishing, KV blocks at hand: :meth:`Scheduler.quiet_ticks`), the replica works out their step times in
one go and sleeps once until the last one ends. Nothing anybody can observe changes during a quiet
iteration, so the per-iteration bookkeeping is done when the span ends. A request routed here meanwhile
cuts the span short: the process wakes at the end of the iteration in progress instead and schedules
the newcomer then, exactly when the one-event-per-iteration loop would have (arrivals are urgent
events, so one arriving at the very end of an iteration is seen by the next schedule either way).
The cluster enables spans only where nothing else reads a replica mid-span.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from heapq import heappush
from itertools import accumulate
from typing import Callable

import simpy

from ..cost.batch import BatchShape
from ..cost.step import RooflineStep, StepCost
from .admission import expired
from .request import Request
from .scheduler import _NONE, Scheduler, Step

SPAN_TICKS = 16          # most iterations fast-forwarded at once (also capped at one KV block size)


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
                 on_timeout: Callable[[Request], None], timeout_s: float | None = None, spans: bool = False):
        self.env = env
        self.index = index
        self.scheduler = scheduler
        self.step_cost = step_cost
        self._cost = step_cost.step if isinstance(step_cost, RooflineStep) else step_cost   # skip a __call__
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
        self.spans = spans and getattr(scheduler, "fast_forward", False)
        self.decode_columns = getattr(step_cost, "decode_columns", None) or (
            lambda n, ctx, count: _columns([step_cost(BatchShape(n, n, n, n, ctx + j * n)) for j in range(count)]))
        self._span: tuple | None = None                  # a span's (times, bounds, FLOPs, bytes, end times)
        self._span_done = 0                              # of its iterations, those accounted for
        self._span_started = 0                           # of its iterations, those whose start is
        self._span_start = 0.0                           # when the span began
        self._span_stop = 0                              # of its iterations, those it runs (cut short by an arrival)
        self._sleeping_span = False                      # asleep until a span's last iteration ends
        self.process = env.process(self.run())

    def submit(self, req: Request) -> None:
        req.replica = self.index
        self.scheduler.add(req)
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()
        elif self._sleeping_span:
            self._cut_span()

    def _cut_span(self) -> None:
        """A request arrived in the middle of a span: the replica wakes at the end of the iteration in
        progress instead of the span's last (an arrival at the very instant an iteration ends is seen by
        the schedule that follows it, because arrivals are urgent events). Rather than interrupt the
        process (an urgent event, an exception thrown into its generator and a second sleep), its wait
        moves to a new event at that end, as SimPy's own interrupt moves it: off the old event's
        callbacks (which then fires with nobody waiting), onto the new one's."""
        self._sleeping_span = False
        ends = self._span[4]
        stop = bisect_left(ends, self.env._now) + 1
        self._span_stop = stop
        if stop < len(ends):
            proc = self.process
            proc._target.callbacks.remove(proc._resume)
            wake = _timeout_at(self.env, ends[stop - 1])
            wake.callbacks.append(proc._resume)
            proc._target = wake

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
            sched.now = env._now
            if self.spans:
                ticks = sched.quiet_ticks(SPAN_TICKS)
                if ticks:
                    try:
                        yield self._start_span(ticks)
                    except simpy.Interrupt:
                        self._lose_span()
                        raise
                    self._end_span()
                    continue
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
            cost: StepCost = self._cost(step.shape)
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
            self._step_start = env._now
            yield _timeout_at(env, env._now + time_s)     # env.timeout(time_s), two calls fewer
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
            for req in sched.update(step, env._now, self.itl_out):
                self.on_finish(req)


    # --- fast-forward -----------------------------------------------------------------------------
    def _start_span(self, ticks: int) -> simpy.Event:
        """Fast-forward: price the next ``ticks`` quiet iterations; the process sleeps on the returned event
        until the last ends (or, cut short by an arrival, the one in progress then), then calls
        :meth:`_end_span`."""
        env, sched = self.env, self.scheduler
        n = sched.num_steady
        times, bounds, flops, bytes_ = self.decode_columns(n, sched._steady_sum + n * (sched.tick + 1), ticks)  # steady_ctx_plus_one()
        ends = list(accumulate(times, initial=env._now))  # what SimPy's clock shows after each timeout
        del ends[0]
        self._span, self._span_done, self._span_started = (times, bounds, flops, bytes_, ends), 0, 0
        self._span_start = env._now
        self._span_stop = ticks                  # :meth:`_cut_span` may end it sooner
        self._sleeping_span = True
        return _timeout_at(env, ends[-1])

    def _end_span(self) -> None:
        """The span's last iteration ended: account for its iterations."""
        self._sleeping_span = False
        self._account(self._span_stop)
        self._span = None

    def _lose_span(self) -> None:
        """A failure in the middle of a span: the iterations before the one in progress are accounted for,
        and that one's start (it is lost)."""
        self._sleeping_span = False
        ends = self._span[4]
        in_progress = bisect_left(ends, self.env.now)
        self._account(in_progress)
        self._account_start(in_progress)
        self._step_start = ends[in_progress - 1] if in_progress else self._span_start
        self._span = None

    def flush(self, now: float) -> None:
        """The run stopped at ``now`` in the middle of a span: account for the iterations that ended by
        then, and for the start of the one in progress (as the per-iteration loop would have)."""
        if self._span is None:
            return
        ends = self._span[4]
        done = bisect_right(ends, now)
        self._account(done)
        if done < len(ends):
            self._account_start(done)
        self._span = None

    def _account_start(self, j: int) -> None:
        """What the per-iteration loop records when iteration ``j`` of the span starts."""
        if self._span_started > j:
            return
        sched, stats = self.scheduler, self.stats
        if sched.schedule_steady():              # the iteration's KV blocks (quiet: always at hand)
            raise RuntimeError(f"replica {self.index}: a quiet iteration preempted")
        used = sched.kv.num_used
        stats.sum_kv_blocks += used
        if used > stats.peak_kv_blocks:
            stats.peak_kv_blocks = used
        stats.sum_kv_tokens_used += sched.steady_ctx_plus_one()
        running = len(sched.running)
        stats.sum_running += running
        if running > stats.peak_running:
            stats.peak_running = running
        self._span_started = j + 1

    def _account(self, stop: int) -> None:
        """Account for the span's iterations up to ``stop`` (exclusive), start and end: what
        :meth:`_account_start`, the per-iteration loop's statistics and :meth:`Scheduler.advance_tick`
        do. The decoders are the same ``n`` throughout (they may finish only at the end of the span's
        last iteration), so the integer statistics are sums of arithmetic series; the floating-point ones
        are added one iteration at a time in the loop's order, so they have the same bits."""
        times, bounds, flops_, bytes__, ends = self._span
        done = self._span_done
        if stop <= done:
            return
        last = len(ends) - 1
        sched, stats, itl = self.scheduler, self.stats, self.itl_out
        n = sched.num_steady
        running = len(sched.running)
        if running > stats.peak_running:
            stats.peak_running = running
        tick0 = sched.tick - done                     # iteration j of the span runs tick tick0 + j
        first = self._span_started if self._span_started > done else done
        if stop > first:                              # iterations first..stop-1 start: KV blocks, usage
            kv, by_class = sched.kv, sched._by_class  # spans run only with blocks counted by class
            bs = len(by_class)
            used = kv.num_used
            if stop - first == 1:                     # Scheduler._schedule_by_class, inlined: quiet, so
                taken = extra = by_class[-(tick0 + first) % bs]   # the blocks are always at hand
            else:
                taken = extra = 0
                for t in range(tick0 + first, tick0 + stop):
                    need = by_class[-t % bs]
                    if need:
                        taken += need
                        extra += need * (tick0 + stop - t)   # in use from this iteration on
            if taken:
                kv.reserve(taken)
            sched._kv_tick = tick0 + stop - 1
            k = stop - first
            stats.sum_kv_blocks += used * k + extra
            if used + taken > stats.peak_kv_blocks:
                stats.peak_kv_blocks = used + taken
            ticks = (2 * tick0 + first + stop - 1) * k // 2     # sum of the ticks t
            stats.sum_kv_tokens_used += k * sched._steady_sum + n * (ticks + k)   # steady_ctx_plus_one()
            stats.sum_running += running * k
            self._span_started = stop
        k = stop - done
        stats.iterations += k
        stats.tokens += n * k
        stats.sum_batch_seqs += n * k
        finish_due, values, counts = sched._finish_due, itl.values, itl.counts
        bound_s = stats.bound_s
        busy_s, flops, bytes_ = stats.busy_s, stats.flops, stats.bytes
        for j in range(done, stop):
            time_s = times[j]
            busy_s += time_s
            flops += flops_[j]
            bytes_ += bytes__[j]
            bound = bounds[j]
            bound_s[bound] = bound_s.get(bound, 0.0) + time_s
            if j < last:
                end = ends[j]
                if sched._fresh:
                    sched.advance_tick(end, itl, n)
                else:                                 # advance_tick with nobody frozen since the last tick
                    t = sched.tick
                    values.append(end - sched.tick_end_s)
                    counts.append(n)
                    finish_due.pop(t, None)
                    sched.tick = t + 1
                    sched.tick_end_s = end
        stats.busy_s, stats.flops, stats.bytes = busy_s, flops, bytes_
        self._span_done = stop
        if stop > last:                               # decoders may finish in the span's last iteration
            for req in sched.update(Step(_NONE, _NONE, None, n), ends[last], itl):
                self.on_finish(req)


def _columns(costs: list[StepCost]) -> tuple[list, list, list, list]:
    """Step costs as the columns ``RooflineStep.decode_columns`` gives."""
    return ([c.time_s for c in costs], [c.bound for c in costs], [c.flops for c in costs], [c.bytes for c in costs])


def _timeout_at(env: simpy.Environment, t: float) -> simpy.Event:
    """An event that fires at exactly ``t`` (>= now), as a timeout would. ``env.timeout(t - now)`` cannot
    always do it: ``now + (t - now)`` may round to a neighbour of ``t``, and no delay may round to ``t``.
    So the event goes on SimPy's queue at ``t`` itself, the way ``Environment.schedule`` puts it there
    (same priority, next sequence number)."""
    if t < env._now:
        raise ValueError(f"cannot schedule at {t!r}, before now ({env.now!r})")
    event = _Triggered.__new__(_Triggered)
    event.env, event.callbacks = env, []         # Event.__init__, inlined as SimPy's Timeout does
    event._ok, event._value = True, None
    heappush(env._queue, (t, simpy.events.NORMAL, next(env._eid), event))
    return event


class _Triggered(simpy.Event):
    """An event made already triggered (successful, no value), as a timeout is: see :func:`_timeout_at`."""


def _delay_until(now: float, t: float) -> float:
    """A delay that SimPy, adding it to ``now``, turns into a time no earlier than ``t`` (rounding)."""
    delay = t - now
    while now + delay < t:
        delay = math.nextafter(delay, math.inf)
    return delay
