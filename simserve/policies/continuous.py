"""Continuous (iteration-level) batching, vLLM style: running requests first, then the waiting queue
FCFS, all under one token budget. With ``chunked_prefill`` a long prompt is split across iterations
and shares them with decodes; without it, an iteration is either whole prompts or decodes (vLLM v0),
so a long prompt stalls every running decode. When KV blocks run out the most recently admitted request
is preempted, by recompute or, with ``preemption: swap``, by copying its KV to host memory."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..cost.batch import BatchAccumulator
from ..engine.scheduler import Scheduler, SchedulerParams, Step
from .registry import SCHEDULERS


class ContinuousParams(SchedulerParams):
    policy: Literal["continuous"]
    chunked_prefill: bool = Field(True, description="Split prompts to fit the token budget")
    preemption: Literal["recompute", "swap"] = Field(
        "recompute", description="Preempted requests drop their KV and recompute it, or swap it to host memory and back")


@SCHEDULERS.register(ContinuousParams)
class ContinuousBatching(Scheduler):
    """Iteration-level batching with optional chunked prefill, preemption by recompute or swap."""

    fast_forward = True           # with nothing active or waiting, schedule() is a steady decode step

    def schedule(self) -> Step | None:
        copied = self.kv.num_copied
        step = self._schedule()
        if self.pending_transfer_s:
            self.charge_transfers(step)
        if self.copies is not None and step is not None:
            self.copies.charge(step, self.kv.num_copied - copied)  # forked sequences: blocks copied on write
        return step

    def _schedule(self) -> Step | None:
        if not self.active and not self.waiting:       # the common case: only steady decoders
            self.schedule_steady()
            return self.decode_step()
        reqs: list = []
        news: list = []
        acc = BatchAccumulator()
        budget = self.params.max_num_batched_tokens
        if not self.params.chunked_prefill:
            self._admit(budget, reqs, news, acc, whole=True)
            if reqs:
                return self.make_step(reqs, news, acc, steady=False)   # a prefill-only iteration
        preempted = self.schedule_steady()
        budget -= self.num_steady
        more = False
        if self.active:                                  # (schedule_active of nobody changes nothing)
            budget, more = self.schedule_active(budget, reqs, news, acc)
        if self.params.chunked_prefill and not (preempted or more):
            self._admit(budget, reqs, news, acc, whole=False)
        return self.make_step(reqs, news, acc)

    def _admit(self, budget: int, reqs: list, news: list, acc: BatchAccumulator, whole: bool) -> int:
        """Admit requests from the head of the queue while budget, sequence slots and KV blocks allow.
        ``whole``: a prompt must fit the remaining budget in one piece."""
        while self.waiting and budget > 0 and len(self.running) < self.params.max_num_seqs:
            req = self.waiting[0]
            cached = self.attach_cached_prefix(req) if req.block_hashes is not None else 0
            n = req.prompt_tokens + req.num_generated - req.num_computed     # req.num_tokens - ...
            if (whole and n > budget) or self.kv.allocate_slots(req.id, req.num_computed + min(n, budget)) is None:
                self.detach_cached_prefix(req, cached)
                break
            n = min(n, budget)
            self.admit(req)
            reqs.append(req)
            news.append(n)
            acc.add(n, req.num_computed)
            budget -= n
        return budget
