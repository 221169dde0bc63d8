"""Dynamic batching: request-level batches of whatever is waiting, by size or timeout.

A batch forms when ``max_batch_size`` requests wait, or ``max_wait_s`` after the oldest waiting request
arrived, with the requests waiting then (up to ``max_batch_size``). Its prompts are prefilled together
in one iteration without padding, and it decodes until its longest request finishes. A row whose
request finished computes nothing but is not refilled: nobody joins a running batch.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..cost.batch import BatchAccumulator
from ..engine.request import Request
from ..engine.scheduler import Step
from ._request_level import RequestLevelBatching, RequestLevelParams, prompt_len
from .registry import SCHEDULERS


class DynamicParams(RequestLevelParams):
    policy: Literal["dynamic"]
    max_batch_size: int = Field(8, ge=1, description="Most requests in one batch")


@SCHEDULERS.register(DynamicParams)
class DynamicBatching(RequestLevelBatching):
    """Request-level batches formed by size or timeout, unpadded, run until the longest output ends."""

    def __init__(self, params: DynamicParams, kv):
        super().__init__(params, kv)
        self.limit = params.max_batch_size

    def rows(self, num_requests: int) -> int:
        return num_requests

    def kv_slots(self, req: Request, max_prompt: int, max_output: int) -> int:
        return req.max_kv_tokens

    def prefill_step(self, batch: list[Request]) -> Step:
        news = [prompt_len(r) for r in batch]
        acc = BatchAccumulator()
        for n in news:
            acc.add(n, 0)
        return Step(batch, news, acc.shape(len(batch)), 0)

    def decode(self, k: int) -> Step:
        step = self.decode_step()
        step.idle_slots = self.num_rows - self.num_steady
        return step
