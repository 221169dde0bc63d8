"""The contract of a cluster router (implementations live in ``simserve/policies``)."""
from __future__ import annotations

from typing import Protocol, Sequence

from .replica import Replica
from .request import Request


class Router(Protocol):
    """Constructed as ``Router(params, num_replicas)``; no I/O, no randomness but what is passed in."""

    def route(self, request: Request, replicas: Sequence[Replica]) -> int:
        """Hook: the index, into ``replicas``, of the replica that takes ``request``. ``replicas`` holds
        only the replicas open right now (failed and draining ones are left out), in index order; it is
        never empty. Replica state such as ``replica.scheduler.num_outstanding`` may be read, not changed."""
        ...
