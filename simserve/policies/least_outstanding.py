"""Least-outstanding-requests router: the replica with the fewest requests waiting or running."""
from __future__ import annotations

from typing import Literal

from ..config.base import Frozen
from .registry import ROUTERS


class LeastOutstandingParams(Frozen):
    policy: Literal["least_outstanding"]


@ROUTERS.register(LeastOutstandingParams)
class LeastOutstanding:
    """Pick the replica with the fewest outstanding requests; ties go to the lowest index."""

    def __init__(self, params: LeastOutstandingParams, num_replicas: int):
        pass

    def route(self, request, replicas) -> int:
        loads = [rep.scheduler.num_outstanding for rep in replicas]
        return loads.index(min(loads))          # the first of the least loaded
