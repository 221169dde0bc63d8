"""The contract between a replica and its batch scheduler, and the bookkeeping every policy shares.

A scheduler owns a waiting queue and a running list. Each iteration the replica calls
:meth:`Scheduler.schedule` for a :class:`Step` (which requests run and how many new tokens each), waits
the step's time, then calls :meth:`Scheduler.update`, which advances the requests and releases the
finished ones. Policies subclass :class:`Scheduler` and implement ``schedule`` only.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from pydantic import Field

from ..config.base import Frozen
from ..cost.batch import BatchAccumulator, BatchShape
from .kv import BlockManager
from .request import Request


class SchedulerParams(Frozen):
    """Limits shared by every batch scheduler (vLLM names)."""

    max_num_seqs: int = Field(256, ge=1, description="Most sequences in one iteration")
    max_num_batched_tokens: int = Field(8192, ge=1, description="Token budget of one iteration")
    max_model_len: int | None = Field(None, ge=2, description="Longest prompt+output; default: the model's max_context")


@dataclass(slots=True)
class Step:
    """One iteration: ``requests[i]`` computes ``new_tokens[i]`` tokens. ``shape`` is what the cost model sees."""

    requests: list[Request]
    new_tokens: list[int]
    shape: BatchShape


class Scheduler:
    """Base class. Subclasses implement :meth:`schedule`; they may use the helpers below."""

    def __init__(self, params: SchedulerParams, kv: BlockManager):
        self.params = params
        self.kv = kv
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    # --- hooks -----------------------------------------------------------------------------------
    def schedule(self) -> Step | None:
        """Hook: the next iteration, or None when there is nothing to run. Must make progress whenever
        ``running`` is non-empty (preempting if KV runs out), and must allocate KV for every token it
        schedules through ``self.kv.allocate_slots``."""
        raise NotImplementedError

    # --- shared bookkeeping ----------------------------------------------------------------------
    def add(self, req: Request) -> None:
        """A request routed to this replica joins the waiting queue."""
        self.waiting.append(req)

    @property
    def num_outstanding(self) -> int:
        return len(self.waiting) + len(self.running)

    def preempt(self, req: Request) -> None:
        """Preemption by recompute: drop the request's KV; it rejoins the front of the queue and will
        recompute its prompt and every token generated so far."""
        self.kv.free(req.id)
        req.num_computed = 0
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
                itl_out.append(now - req.last_token_s)
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

    @staticmethod
    def make_step(reqs: list, news: list, acc: BatchAccumulator) -> Step | None:
        if not reqs:
            return None
        logits = sum(1 for r, n in zip(reqs, news) if r.num_computed + n == r.num_tokens)
        return Step(reqs, news, acc.shape(logits))
