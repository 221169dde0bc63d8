"""Least-KV-load router: the replica whose KV cache is the least full."""
from __future__ import annotations

from typing import Literal

from ..config.base import Frozen
from .registry import ROUTERS


class LeastKvParams(Frozen):
    policy: Literal["least_kv"]


@ROUTERS.register(LeastKvParams)
class LeastKv:
    """Pick the open replica with the fewest KV blocks in use; ties go to the lowest index."""

    def __init__(self, params: LeastKvParams, num_replicas: int):
        pass

    def route(self, request, replicas) -> int:
        best, best_used = 0, None
        for i, rep in enumerate(replicas):
            used = rep.scheduler.kv.num_used
            if best_used is None or used < best_used:
                best, best_used = i, used
        return best
