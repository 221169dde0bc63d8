"""Prefill/decode disaggregation: the time to send a request's prompt KV from a prefill replica to a
decode replica, as a pure function of the hardware profile (docs/policies.md)."""
from __future__ import annotations

from ..hardware import HardwareProfile, Link, OpEfficiency


def kv_transfer_s(num_tokens: int, kv_bytes_per_token: float, link: Link, send_recv: OpEfficiency) -> float:
    """Seconds to send ``num_tokens`` tokens of KV, each device of the prefill replica sending its own
    shard (``kv_bytes_per_token`` is per device) to its peer in parallel: the send/recv kernel overhead
    plus the link's latency plus bytes over the achievable bandwidth (``send_recv.bandwidth_fraction`` of
    the link's)."""
    bytes_per_device = num_tokens * kv_bytes_per_token
    bandwidth = link.bandwidth_gb_s * 1e9 * send_recv.bandwidth_fraction
    return send_recv.overhead_us * 1e-6 + link.latency_us * 1e-6 + bytes_per_device / bandwidth


def transfer_link(hw: HardwareProfile, name: str) -> Link:
    """``intra_node`` or ``inter_node`` of the profile's interconnect."""
    return getattr(hw.interconnect, name)
