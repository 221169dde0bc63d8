"""Round-robin router: replicas in turn, blind to their load."""
from __future__ import annotations

from typing import Literal

from ..config.base import Frozen
from .registry import ROUTERS


class RoundRobinParams(Frozen):
    policy: Literal["round_robin"]


@ROUTERS.register(RoundRobinParams)
class RoundRobin:
    """Send the i-th routed request to replica i mod n (of the replicas open at that moment)."""

    def __init__(self, params: RoundRobinParams, num_replicas: int):
        self.count = 0

    def route(self, request, replicas) -> int:
        i = self.count % len(replicas)
        self.count += 1
        return i
