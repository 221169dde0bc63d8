"""Request-level batching, the part shared by the ``static`` and ``dynamic`` schedulers (not a policy).

A batch is formed from the head of the waiting queue once ``limit`` requests wait, or once the oldest
waiting request has waited ``max_wait_s``; it is prefilled in one iteration and then decodes until its
longest request finishes. Nobody joins a running batch: rows whose request finished stay idle (counted
in ``Step.idle_slots``). Each request reserves the KV of its whole output when the batch forms, so a
batch never needs a block mid-flight and is never preempted.
"""
from __future__ import annotations

from pydantic import Field

from ..cost.batch import BatchShape
from ..engine.request import Request
from ..engine.scheduler import Scheduler, SchedulerParams, Step


class RequestLevelParams(SchedulerParams):
    """Limits shared by the request-level schedulers."""

    max_wait_s: float = Field(0.1, ge=0, description="A partial batch starts this long after its oldest waiting request arrived, seconds")


class RequestLevelBatching(Scheduler):
    """Base of request-level schedulers. Subclasses set ``limit`` and implement the hooks ``rows``,
    ``kv_slots``, ``prefill_step`` and ``decode``; ``max_wait_s`` comes from the params."""

    limit: int            # most requests in one batch
    max_wait_s: float     # a partial batch starts this long after its oldest request arrived

    def __init__(self, params: RequestLevelParams, kv):
        super().__init__(params, kv)
        self.max_wait_s = params.max_wait_s
        self.num_rows = 0             # rows of the batch in flight (0 between batches)
        self.prompt_len = 0           # longest prompt of the batch in flight
        self._tick0 = 0               # the tick of the batch's first decode iteration
        self._wake_s: float | None = None

    # --- hooks -----------------------------------------------------------------------------------
    def rows(self, num_requests: int) -> int:
        """Hook: rows a batch of ``num_requests`` requests has (idle rows included)."""
        raise NotImplementedError

    def kv_slots(self, req: Request, max_prompt: int, max_output: int) -> int:
        """Hook: KV slots ``req`` reserves in a batch with these longest prompt and output (as
        :func:`prompt_len` and :func:`output_len` count them)."""
        raise NotImplementedError

    def prefill_step(self, batch: list[Request]) -> Step:
        """Hook: the iteration that computes every prompt of a new batch (``self.num_rows`` rows)."""
        raise NotImplementedError

    def decode(self, k: int) -> Step:
        """Hook: the ``k``-th decode iteration (from 1) of the batch in flight; every unfinished request
        is a steady decoder."""
        raise NotImplementedError

    # --- the scheduler contract ------------------------------------------------------------------
    def schedule(self) -> Step | None:
        self._wake_s = None
        if self.running:                              # the batch in flight decodes
            return self.decode(self.tick - self._tick0 + 1)
        self.num_rows = 0
        if not self.waiting:
            return None
        if len(self.waiting) < self.limit:
            # requeued requests (after a failure) may sit behind younger ones: take the oldest arrival
            deadline = min(r.arrival_s for r in self.waiting) + self.max_wait_s
            if self.now < deadline:
                self._wake_s = deadline
                return None
        batch = self._form()
        self.num_rows = self.rows(len(batch))
        self.prompt_len = max(prompt_len(r) for r in batch)
        self._tick0 = self.tick
        return self.prefill_step(batch)

    def next_wake_s(self) -> float | None:
        return self._wake_s

    def _form(self) -> list[Request]:
        """Take requests from the head of the queue while the batch has room and its KV fits, then
        admit them with their reservations. The first request always fits: the cluster rejects any
        request larger than the KV cache, and between batches the cache is empty."""
        batch: list[Request] = []
        max_p = max_o = 0
        for req in self.waiting:
            if len(batch) == self.limit:
                break
            p, o = max(max_p, prompt_len(req)), max(max_o, output_len(req))
            blocks = sum(self.kv.blocks_for(self.kv_slots(r, p, o)) for r in batch)
            if batch and blocks + self.kv.blocks_for(self.kv_slots(req, p, o)) > self.kv.num_free:
                break
            batch.append(req)
            max_p, max_o = p, o
        for req in batch:
            self.admit(req)
            if self.kv.allocate_slots(req.id, self.kv_slots(req, max_p, max_o)) is None:
                raise RuntimeError(f"request {req.id}: KV reservation failed after the fit check")
        return batch

    def drain(self) -> list[Request]:
        self.num_rows = 0
        return super().drain()


def prompt_len(req: Request) -> int:
    """Tokens a new batch prefills for ``req``: its prompt, and after a failure moved it here (it lost
    its KV), the tokens it had generated too."""
    return req.num_tokens


def output_len(req: Request) -> int:
    """Tokens ``req`` still has to generate."""
    return req.output_tokens - req.num_generated


def padded_prefill(num_rows: int, prompt_len: int) -> BatchShape:
    """``num_rows`` prompts of ``prompt_len`` tokens each, no cache, every row sampling."""
    q = prompt_len
    return BatchShape(num_rows, num_rows * q, num_rows, 0, 0, num_rows, num_rows * q, 0.0,
                      float(num_rows * q * q), num_rows * q)
