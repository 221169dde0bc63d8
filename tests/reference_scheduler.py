"""Test oracle: the first, straightforward continuous-batching scheduler (one Python object per
request, every request touched every iteration). The fast scheduler in simserve must reproduce its
timelines exactly; tests/test_differential.py checks that on random workloads, with preemption by
recompute and by swap (``swap``: the engine's HostSwap, whose copy times are charged to the step)."""
from __future__ import annotations

from collections import deque

from simserve.cost.batch import BatchAccumulator
from simserve.engine.request import Request
from simserve.engine.scheduler import Step


class ReferenceScheduler:
    """Base class. Subclasses implement :meth:`schedule`; they may use the helpers below."""

    def __init__(self, params, kv, swap=None):
        self.params = params
        self.kv = kv
        self.swap = swap
        self.transfer_s = 0.0            # host copies made while scheduling, charged to the next step
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    # --- hooks -----------------------------------------------------------------------------------
    def schedule(self) -> Step | None:
        """Hook: the next iteration, or None when there is nothing to run. Must make progress whenever
        ``running`` is non-empty (preempting if KV runs out), and must allocate KV for every token it
        schedules through ``self.kv.allocate_slots``."""
        raise NotImplementedError

    def next_wake_s(self) -> float | None:
        """Hook (the engine's contract): no batching timer, sleep until the next arrival."""
        return None

    # --- shared bookkeeping ----------------------------------------------------------------------
    def add(self, req: Request) -> None:
        """A request routed to this replica joins the waiting queue."""
        self.waiting.append(req)

    @property
    def num_outstanding(self) -> int:
        return len(self.waiting) + len(self.running)

    def kv_tokens_in_use(self, step: Step) -> int:
        """KV slots filled once ``step`` has run: computed tokens of the running requests plus the new ones."""
        return sum(r.num_computed for r in self.running) + sum(step.new_tokens)

    def discard(self, req: Request) -> None:
        self.waiting.remove(req)
        self.kv.free(req.id)
        if self.swap is not None:
            self.swap.drop(req.id)

    def drain(self) -> list:
        lost = list(self.running) + list(self.waiting)
        for req in lost:
            self.kv.free(req.id)
            req.num_computed = 0
        self.running.clear()
        self.waiting.clear()
        if self.swap is not None:
            self.swap.clear()
        self.transfer_s = 0.0
        return lost

    def settle(self) -> None:
        pass

    def preempt(self, req: Request) -> None:
        """Preemption by recompute: drop the request's KV; it rejoins the front of the queue and will
        recompute its prompt and every token generated so far. By swap: copy its computed KV to host
        memory first (if the host has room) and keep its progress."""
        self.kv.free(req.id)
        copy_s = None
        if self.swap is not None and req.num_computed > 0:
            copy_s = self.swap.swap_out(req.id, self.kv.blocks_for(req.num_computed))
        if copy_s is None:
            req.num_computed = 0
        else:
            self.transfer_s += copy_s
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def update(self, step: Step, now: float, itl_out: list[float]) -> list[Request]:
        """Advance the step's requests at time ``now``: a request that has caught up samples one token
        (the first sets TTFT, the others append an inter-token latency to ``itl_out``). Returns the
        requests that finished; their KV is freed and they leave ``running``."""
        finished = []
        for req, n in zip(step.requests, step.new_tokens):
            req.num_computed += n
            if req.num_computed < req.num_tokens:
                continue                      # a prefill chunk that has not reached the end
            req.num_generated += 1
            if req.first_token_s < 0:
                req.first_token_s = now
            else:
                itl_out.add(now - req.last_token_s)
            req.last_token_s = now
            if req.num_generated >= req.output_tokens:
                req.finish_s = now
                finished.append(req)
        if finished:
            for req in finished:
                self.kv.free(req.id)
            self.running = [r for r in self.running if r.finish_s < 0]
        return finished

    def schedule_running(self, budget: int, reqs: list, news: list, acc: BatchAccumulator) -> tuple[int, bool]:
        """Give each running request its next tokens (up to ``budget``) in order, preempting from the
        back of ``running`` when KV blocks run out. Returns the budget left and whether it preempted."""
        preempted = False
        i = 0
        running = self.running
        while i < len(running) and budget > 0:
            req = running[i]
            n = min(req.num_tokens - req.num_computed, budget)
            if self.kv.allocate_slots(req.id, req.num_computed + n) is None:
                victim = running.pop()
                self.preempt(victim)
                preempted = True
                if victim is req:
                    break
                continue
            reqs.append(req)
            news.append(n)
            acc.add(n, req.num_computed)
            budget -= n
            i += 1
        return budget, preempted

    def make_step(self, reqs: list, news: list, acc: BatchAccumulator) -> Step | None:
        if not reqs:
            return None
        logits = sum(1 for r, n in zip(reqs, news) if r.num_computed + n == r.num_tokens)
        step = Step(reqs, news, acc.shape(logits), 0)
        if self.transfer_s:
            step.transfer_s, self.transfer_s = self.transfer_s, 0.0
        return step


class ReferenceContinuous(ReferenceScheduler):
    """Iteration-level batching with optional chunked prefill and preemption by recompute."""

    def schedule(self) -> Step | None:
        reqs: list = []
        news: list = []
        acc = BatchAccumulator()
        budget = self.params.max_num_batched_tokens
        if not self.params.chunked_prefill:
            self._admit(budget, reqs, news, acc, whole=True)
            if reqs:
                return self.make_step(reqs, news, acc)
        budget, preempted = self.schedule_running(budget, reqs, news, acc)
        if self.params.chunked_prefill and not preempted:
            self._admit(budget, reqs, news, acc, whole=False)
        return self.make_step(reqs, news, acc)

    def _admit(self, budget: int, reqs: list, news: list, acc: BatchAccumulator, whole: bool) -> int:
        """Move requests from the head of the queue into ``running`` while budget, sequence slots and
        KV blocks allow. ``whole``: a prompt must fit the remaining budget in one piece."""
        while self.waiting and budget > 0 and len(self.running) < self.params.max_num_seqs:
            req = self.waiting[0]
            n = req.num_tokens - req.num_computed
            if whole and n > budget:
                break
            n = min(n, budget)
            if self.kv.allocate_slots(req.id, req.num_computed + n) is None:
                break
            if self.swap is not None and self.swap.holds(req.id):
                self.transfer_s += self.swap.swap_in(req.id)        # copy its KV back
            self.waiting.popleft()
            self.running.append(req)
            reqs.append(req)
            news.append(n)
            acc.add(n, req.num_computed)
            budget -= n
        return budget
