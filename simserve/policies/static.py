"""Static batching: fixed-shape batches, as a server without iteration-level scheduling runs them.

A batch of ``batch_size`` rows forms when that many requests wait, or ``max_wait_s`` after the oldest
waiting request arrived (then the missing rows are empty). Every prompt is padded to the batch's longest
prompt, so the prefill computes ``batch_size`` x that length; then every decode iteration computes all
``batch_size`` rows until the longest request finishes, finished and empty rows included. Nobody joins
a running batch.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..cost.batch import BatchShape
from ..engine.request import Request
from ..engine.scheduler import Step
from ._request_level import RequestLevelBatching, RequestLevelParams, padded_prefill, prompt_len
from .registry import SCHEDULERS


class StaticParams(RequestLevelParams):
    policy: Literal["static"]
    batch_size: int = Field(8, ge=1, description="Rows of every batch, computed whether filled or not")


@SCHEDULERS.register(StaticParams)
class StaticBatching(RequestLevelBatching):
    """Fixed batches of batch_size rows, padded to the longest prompt, run until the longest output ends."""

    def __init__(self, params: StaticParams, kv):
        super().__init__(params, kv)
        self.limit = params.batch_size

    def rows(self, num_requests: int) -> int:
        return self.params.batch_size

    def kv_slots(self, req: Request, max_prompt: int, max_output: int) -> int:
        return max_prompt + max_output - 1          # its row of the padded batch

    def prefill_step(self, batch: list[Request]) -> Step:
        rows, p = self.num_rows, self.prompt_len
        news = [prompt_len(r) for r in batch]
        return Step(batch, news, padded_prefill(rows, p), 0, padding_tokens=rows * p - sum(news))

    def decode(self, k: int) -> Step:
        # every row feeds one token over a cache of the padded prompt and k - 1 generated tokens
        rows = self.num_rows
        shape = BatchShape(rows, rows, rows, rows, rows * (self.prompt_len + k))
        return Step([], [], shape, self.num_steady, idle_slots=rows - self.num_steady)
