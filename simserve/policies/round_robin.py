"""Round-robin router: replicas in turn, blind to their load."""
from __future__ import annotations

from typing import Literal

from ..config.base import Frozen
from .registry import ROUTERS


class RoundRobinParams(Frozen):
    policy: Literal["round_robin"] = "round_robin"


@ROUTERS.register(RoundRobinParams)
class RoundRobin:
    """Send request i to replica i mod n."""

    def __init__(self, params: RoundRobinParams, num_replicas: int):
        self.n = num_replicas
        self.next = 0

    def route(self, request, replicas) -> int:
        i = self.next
        self.next = (i + 1) % self.n
        return i
