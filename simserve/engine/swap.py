"""Host memory for preemption by swap: a preempted request's KV blocks are copied to host memory over
the device's host link, and copied back when the request is readmitted, instead of being dropped and
recomputed.

Sizes are per device: with tensor parallelism every device copies its own share of the KV heads over
its own link, in parallel, so one device's bytes and link set the time. Each request's copy is one
transfer of ``latency_s + bytes / bandwidth``. Host space is counted in KV blocks, like device space;
a swap-out that does not fit is refused (the scheduler then preempts by recompute).
"""
from __future__ import annotations


class HostSwap:
    __slots__ = ("num_blocks", "block_bytes", "bandwidth_bytes_s", "latency_s", "_held", "num_used",
                 "peak_used", "swapped_out", "swapped_in", "out_blocks", "in_blocks", "fallbacks")

    def __init__(self, num_blocks: int, block_bytes: float, bandwidth_bytes_s: float, latency_s: float):
        self.num_blocks = num_blocks              # host blocks (swap space / bytes per block)
        self.block_bytes = block_bytes            # one KV block on one device
        self.bandwidth_bytes_s = bandwidth_bytes_s
        self.latency_s = latency_s
        self._held: dict[int, int] = {}           # request id -> host blocks it holds
        self.num_used = 0
        self.peak_used = 0
        self.swapped_out = self.swapped_in = 0    # requests copied out / back in
        self.out_blocks = self.in_blocks = 0
        self.fallbacks = 0                        # swap-outs refused for want of host space

    def copy_s(self, num_blocks: int) -> float:
        """Time of one transfer of ``num_blocks`` blocks over the host link, seconds."""
        return self.latency_s + num_blocks * self.block_bytes / self.bandwidth_bytes_s

    def holds(self, request_id: int) -> bool:
        return request_id in self._held

    def swap_out(self, request_id: int, num_blocks: int) -> float | None:
        """Copy ``num_blocks`` KV blocks of the request to host memory. Returns the copy time, or None
        (nothing changed; counted in ``fallbacks``) when the host has too few free blocks."""
        if self.num_used + num_blocks > self.num_blocks:
            self.fallbacks += 1
            return None
        self._held[request_id] = num_blocks
        self.num_used += num_blocks
        if self.num_used > self.peak_used:
            self.peak_used = self.num_used
        self.swapped_out += 1
        self.out_blocks += num_blocks
        return self.copy_s(num_blocks)

    def swap_in(self, request_id: int) -> float:
        """Copy the request's blocks back to the device (the caller allocated them there) and free
        them on the host. Returns the copy time."""
        num_blocks = self._held.pop(request_id)
        self.num_used -= num_blocks
        self.swapped_in += 1
        self.in_blocks += num_blocks
        return self.copy_s(num_blocks)

    def drop(self, request_id: int) -> None:
        """Forget the request's host copy without copying it back (it left the replica)."""
        self.num_used -= self._held.pop(request_id, 0)

    def clear(self) -> None:
        """Forget every host copy (the replica failed)."""
        self._held.clear()
        self.num_used = 0
