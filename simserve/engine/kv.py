"""Paged KV cache: fixed-size blocks, allocated as a request's context grows, freed when it leaves."""
from __future__ import annotations


class BlockManager:
    """Counts blocks per request. ``allocate_slots`` is the only way in; ``free`` the only way out."""

    __slots__ = ("num_blocks", "block_size", "num_free", "_held")

    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_free = num_blocks
        self._held: dict[int, int] = {}

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def allocate_slots(self, request_id: int, num_tokens: int) -> int | None:
        """Make room for ``num_tokens`` KV slots in total for the request. Returns the number of newly
        allocated blocks, or None (and changes nothing) when there are not enough free blocks."""
        held = self._held.get(request_id, 0)
        need = self.blocks_for(num_tokens) - held
        if need <= 0:
            return 0
        if need > self.num_free:
            return None
        self.num_free -= need
        self._held[request_id] = held + need
        return need

    def free(self, request_id: int) -> int:
        """Release every block of the request; returns how many."""
        held = self._held.pop(request_id, 0)
        self.num_free += held
        return held

    def num_held(self, request_id: int) -> int:
        return self._held.get(request_id, 0)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free
