"""Admission control: what a replica refuses under overload. Off unless the scenario sets a limit."""
from __future__ import annotations

from pydantic import Field

from ..config.base import Frozen


class AdmissionConfig(Frozen):
    max_queue: int | None = Field(None, ge=0, description="Most requests waiting at a replica; an arrival beyond it is rejected ('queue_full')")
    request_timeout_s: float | None = Field(None, gt=0, description="A waiting request with no first token this long after arrival is dropped ('timeout'), checked at iteration boundaries")


def expired(waiting, now: float, timeout_s: float) -> list:
    """Requests in ``waiting`` that have waited past the timeout without a first token."""
    return [r for r in waiting if r.first_token_s < 0 and now - r.arrival_s > timeout_s]
