"""Prefix-affinity router: requests that start with the same prefix go to the same replica, where
(with prefix caching) its KV is most likely still cached; the others go by least outstanding."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..config.base import Frozen
from .registry import ROUTERS


class PrefixAffinityParams(Frozen):
    policy: Literal["prefix_affinity"]
    key_blocks: int = Field(1, ge=1, description="Leading prefix blocks (workload prefix hashes) that make the affinity key")


@ROUTERS.register(PrefixAffinityParams)
class PrefixAffinity:
    """Send a request where its leading prefix blocks were last sent, else to the least outstanding replica.

    The remembered replica is used only while it is open; requests without prefix hashes always go by
    least outstanding, ties to the lowest index."""

    def __init__(self, params: PrefixAffinityParams, num_replicas: int):
        self.key_blocks = params.key_blocks
        self.last: dict[tuple[int, ...], int] = {}     # affinity key -> Replica.index it was last sent to

    def route(self, request, replicas) -> int:
        hashes = request.prefix_hashes
        key = tuple(hashes[:self.key_blocks]) if hashes else None
        if key is not None:
            target = self.last.get(key)
            if target is not None:
                for i, rep in enumerate(replicas):
                    if rep.index == target:
                        return i
        best = min(range(len(replicas)), key=lambda i: replicas[i].scheduler.num_outstanding)
        if key is not None:
            self.last[key] = replicas[best].index
        return best
