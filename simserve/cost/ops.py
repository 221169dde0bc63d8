"""Roofline time of one kernel, per operator class. Pure functions; SI units in the names.

Each operator's time is ``overhead + max(compute, memory)`` where compute is FLOPs over the achievable
FLOP rate and memory is bytes over the achievable bandwidth. The achievable fractions and the overhead
are the per-operator-class parameters of :class:`simserve.hardware.OpEfficiency`, fitted by
``simserve calibrate``. Collectives use the link's bandwidth and latency instead of memory.

Two optional shape terms refine this where measurements demand it; their defaults give the plain roofline:
``overlap_exponent`` replaces ``max`` by a p-norm (a kernel near its ridge point is limited by both
compute and memory), and ``unit_overhead_ns`` charges attention kernels per (sequence, head) work unit.
All-reduce follows vLLM: its custom one-/two-shot kernel for small messages inside a node (each stage costs
``hop_latency_scale`` link latencies), NCCL's ring with a fixed ``overhead_us`` otherwise.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ..hardware import OpEfficiency

COMPUTE, MEMORY, NETWORK, OVERHEAD = "compute", "memory", "network", "overhead"


@dataclass(slots=True)
class OpTime:
    """Time of one kernel split by what set it. ``time_s = overhead_s + max(compute_s, memory_s) + network_s``."""

    time_s: float
    bound: str
    flops: float
    bytes: float


def combine_s(compute_s: float, memory_s: float, overlap_exponent: float | None) -> float:
    """Compute and memory time of one kernel joined: ``max`` when they overlap fully (exponent None),
    their sum when they do not overlap (exponent 1), the p-norm ``(c^p + m^p)^(1/p)`` in between."""
    hi, lo = (compute_s, memory_s) if compute_s >= memory_s else (memory_s, compute_s)
    if overlap_exponent is None or hi <= 0.0:
        return hi
    p = overlap_exponent
    return hi * (1.0 + (lo / hi) ** p) ** (1.0 / p)


def _roofline(flops: float, bytes_: float, peak_flops_s: float, bandwidth_bytes_s: float, eff: OpEfficiency,
              overhead_s: float) -> OpTime:
    compute_s = flops / (peak_flops_s * eff.flops_fraction)
    memory_s = bytes_ / (bandwidth_bytes_s * eff.bandwidth_fraction)
    body_s = combine_s(compute_s, memory_s, eff.overlap_exponent)
    bound = COMPUTE if compute_s >= memory_s else MEMORY
    if overhead_s > body_s:
        bound = OVERHEAD
    return OpTime(overhead_s + body_s, bound, flops, bytes_)


def roofline_s(flops: float, bytes_: float, peak_flops_s: float, bandwidth_bytes_s: float, eff: OpEfficiency) -> OpTime:
    """The roofline: compute- or memory-bound time plus the kernel's fixed overhead."""
    return _roofline(flops, bytes_, peak_flops_s, bandwidth_bytes_s, eff, eff.overhead_us * 1e-6)


PREFILL_QUERY_TILE = 128    # query rows per thread block of FlashAttention's forward kernel at head_dim 128


def prefill_blocks(num_heads: float, num_seqs: float, num_tokens: float) -> float:
    """Thread blocks of a prefill attention kernel: one per (query tile, head). From per-batch sums only,
    the tiles are ``max(seqs, tokens / tile)``: exact when every prompt is a multiple of the tile or
    shorter than one, a slight undercount otherwise."""
    tiles = num_tokens / PREFILL_QUERY_TILE
    return num_heads * (np.maximum(num_seqs, tiles) if isinstance(tiles, np.ndarray) else max(num_seqs, tiles))


def occupancy(blocks, eff: OpEfficiency):
    """Fraction of the GPU a kernel of ``blocks`` thread blocks keeps busy over its run. At most
    ``concurrent_blocks`` blocks run at once, so the blocks run in ``ceil(blocks / concurrent_blocks)`` whole
    waves and the busy fraction is ``blocks / (concurrent_blocks * waves)``: below one wave the idle SMs of
    a small grid (``blocks / concurrent_blocks``), above it the part-empty last wave (wave quantisation,
    as in CUTLASS's and FlashAttention's own launch heuristics). 1 without ``concurrent_blocks`` or without
    a block count (``blocks <= 0``)."""
    if eff.concurrent_blocks is None:
        return np.ones_like(blocks, dtype=float) if isinstance(blocks, np.ndarray) else 1.0
    return wave_occupancy(blocks, eff.concurrent_blocks)


def wave_occupancy(blocks, slots: float):
    """``blocks / (slots x waves)`` for ``ceil(blocks / slots)`` whole waves (at least one) of ``slots`` thread
    blocks at a time; 1 for ``blocks <= 0``. Scalars or numpy arrays."""
    if not isinstance(blocks, np.ndarray):          # the step model: one kernel at a time, no numpy call
        return blocks / (slots * max(1.0, math.ceil(blocks / slots))) if blocks > 0 else 1.0
    waves = np.maximum(1.0, np.ceil(blocks / slots))
    return np.where(blocks > 0, blocks / (slots * waves), 1.0)


def attention_time(flops: float, bytes_: float, work_units: float, peak_flops_s: float, bandwidth_bytes_s: float,
                   eff: OpEfficiency, blocks: float = 0.0) -> OpTime:
    """A fused attention kernel: the roofline plus a fixed cost per work unit, one sequence times one head
    (query heads for prefill kernels, KV heads for decode kernels: the units their launch grids split by).
    ``blocks`` (prefill: :func:`prefill_blocks`) fewer than ``concurrent_blocks`` leave SMs idle, which
    slows the compute part by :func:`occupancy` (computed here on scalars), as does a part-empty last wave. With ``eff.unit_overhead_ns
    == 0`` and no ``concurrent_blocks`` this is :func:`roofline_s`."""
    overhead_s = eff.overhead_us * 1e-6 + work_units * eff.unit_overhead_ns * 1e-9
    busy = 1.0
    if eff.concurrent_blocks is not None and blocks > 0:
        busy = blocks / (eff.concurrent_blocks * max(1.0, math.ceil(blocks / eff.concurrent_blocks)))
    return _roofline(flops, bytes_, peak_flops_s * busy, bandwidth_bytes_s, eff, overhead_s)


def kv_tile(head_dim: float) -> int:
    """Keys per KV tile of FlashAttention-2's split-KV decode kernel (``kBlockN`` of its kernel traits:
    256 up to head_dim 64, 128 up to 128, 64 above)."""
    return 256 if head_dim <= 64 else 128 if head_dim <= 128 else 64


@functools.lru_cache(maxsize=65536)
def splitkv_splits(blocks: int, slots: int, tiles: int, max_splits: int = 128) -> int:
    """How many parts FlashAttention-2 splits each block's KV walk into (``num_splits_heuristic`` of its
    ``flash_api.cpp``, re-derived): none when the ``blocks`` (batch x KV heads x query tiles) nearly fill
    the ``slots`` (two 128-thread blocks per SM) already; otherwise the fewest splits whose last wave is at
    least 85% as full as the fullest, counting only split counts that change the tiles per split."""
    if blocks >= 0.8 * slots:
        return 1
    top = min(max_splits, slots, tiles)
    eff = []
    for s in range(1, top + 1):
        if s > 1 and -(-tiles // s) == -(-tiles // (s - 1)):
            eff.append(0.0)
            continue
        waves = blocks * s / slots
        eff.append(waves / math.ceil(waves))
    best = max(eff, default=0.0)
    for s, e in enumerate(eff, start=1):
        if e > 0.0 and e >= 0.85 * best:
            return s
    return 1


def kv_tiles(keys: float, num_seqs: float, head_dim: float) -> int:
    """KV tiles (:func:`kv_tile` keys each) in the batch's mean context, at least one: all the decode
    launch grid knows of the context."""
    return max(1, math.ceil(keys / num_seqs / kv_tile(head_dim)))


def combine_rows(head_dim: float) -> int:
    """Output rows one block of FlashAttention-2's split-KV combine kernel merges (``kBlockM`` there: 4 when
    head_dim is a multiple of 128, 8 of 64, else 16); it reads each split's partial rows in turn."""
    return 4 if head_dim % 128 == 0 else 8 if head_dim % 64 == 0 else 16


def decode_launch(num_seqs: float, num_heads: float, num_kv_heads: float, keys: float, head_dim: float,
                  sm_count: float) -> tuple[float, float, int]:
    """Launch grid of FlashAttention-2's decode kernel from per-batch sums: (thread blocks, KV tiles each
    block walks, KV splits). ``keys`` is the batch's keys read (cached tokens plus the new one, summed), so
    the context is the batch's mean. With grouped queries (``seqlenq_ngroups_swapped``) a block is one
    (sequence, KV head, tile of 64 grouped queries), and the context is split by :func:`splitkv_splits`
    over two blocks per SM; with as many query as KV heads one block per (sequence, head) walks it all."""
    tiles = kv_tiles(keys, num_seqs, head_dim)
    if num_heads > num_kv_heads:
        blocks = num_seqs * num_kv_heads * math.ceil(num_heads / num_kv_heads / 64)
        splits = splitkv_splits(int(blocks), int(2 * sm_count), int(tiles))
        return blocks * splits, math.ceil(tiles / splits), splits
    return num_seqs * num_kv_heads, tiles, 1


def decode_attention_time(flops: float, bytes_: float, num_seqs: float, num_heads: float, num_kv_heads: float,
                          peak_flops_s: float, bandwidth_bytes_s: float, eff: OpEfficiency,
                          sm_count: float | None = None, keys: float = 0.0, head_dim: float = 128.0,
                          act_bytes: float = 2.0, kv_bytes: float = 2.0, launch: tuple | None = None) -> OpTime:
    """A decode attention kernel (FlashAttention-2 as vLLM runs it), from its launch grid
    (:func:`decode_launch`; ``keys``: the batch's keys read, summed).

    - Each (sequence, KV head) work unit has a fixed cost (``unit_overhead_ns``: loading its queries and
      block table, writing its output) that runs on the SMs alongside other blocks' KV streaming, so the
      body is the larger of the roofline and the units' cost, not their sum.
    - A block walks its KV tiles (:func:`kv_tile` keys each) one after another; the first is covered by the
      kernel's fixed ``overhead_us``, every further one costs a tile's K and V at ``row_bandwidth_gb_s``,
      in waves of two blocks per SM (``sm_count``), so few long sequences take longer than the roofline.
    - Grouped-query heads are regrouped so a KV head's queries form one tile (``seqlenq_ngroups_swapped``);
      with more than one sequence and more than one KV head that copies the queries in and the outputs
      back, two extra kernels: ``relayout_overhead_us`` plus their bytes (each reads and writes the
      queries or outputs) at the fitted DRAM rate. A profile without ``relayout_overhead_us`` (0) has no
      such copies (a kernel that packs grouped queries itself).
    - When the context is split (:func:`splitkv_splits`), a combine kernel merges the partial outputs: it
      is charged ``relayout_overhead_us`` too (one more small kernel of the same kind), plus its blocks' walk
      over the splits one after another, each split's fp32 partial rows (:func:`combine_rows` x head_dim x 4
      bytes) at ``row_bandwidth_gb_s`` (one wave: a context is split only when the grid is small).
    Without ``sm_count`` or ``keys`` there is no grid: the roofline-or-units body and the copies only.
    ``launch``: :func:`decode_launch`'s result for these arguments, when the caller has it at hand.
    ``act_bytes`` and ``kv_bytes``: bytes per query/output and per cached K or V value."""
    units = num_seqs * num_kv_heads
    over_s = eff.overhead_us * 1e-6
    unit_s = units * eff.unit_overhead_ns * 1e-9
    compute_s = flops / (peak_flops_s * eff.flops_fraction)
    memory_s = bytes_ / (bandwidth_bytes_s * eff.bandwidth_fraction)
    roof_s = combine_s(compute_s, memory_s, eff.overlap_exponent)
    bound = OVERHEAD if max(over_s, unit_s) > roof_s else COMPUTE if compute_s >= memory_s else MEMORY
    time_s = over_s + max(roof_s, unit_s)
    splits = 1
    if sm_count and keys > 0 and units > 0:
        blocks, walk_tiles, splits = launch or decode_launch(num_seqs, num_heads, num_kv_heads, keys, head_dim,
                                                            sm_count)
        if eff.row_bandwidth_gb_s is not None and walk_tiles > 1:
            tile_bytes = 2.0 * kv_tile(head_dim) * head_dim * kv_bytes
            walk_s = over_s + (walk_tiles - 1) * tile_bytes / (eff.row_bandwidth_gb_s * 1e9) * math.ceil(blocks / (2 * sm_count))
            if walk_s > time_s:
                time_s, bound = walk_s, MEMORY
    if eff.relayout_overhead_us > 0 and num_heads > num_kv_heads and num_seqs > 1 and num_kv_heads > 1:
        copies = 4.0 * num_seqs * num_heads * head_dim * act_bytes
        time_s += eff.relayout_overhead_us * 1e-6 + copies / (bandwidth_bytes_s * eff.bandwidth_fraction)
    if splits > 1:
        time_s += eff.relayout_overhead_us * 1e-6
        if eff.row_bandwidth_gb_s is not None:
            time_s += splits * combine_rows(head_dim) * head_dim * 4.0 / (eff.row_bandwidth_gb_s * 1e9)
    return OpTime(time_s, bound, flops, bytes_)


def gemm_flops(m: float, n: float, k: float) -> float:
    """An (m x k) @ (k x n) matrix product: one multiply and one add per term."""
    return 2.0 * m * n * k


def gemm_bytes(m: float, n: float, k: float, weight_bytes: float, act_bytes: float) -> float:
    """Weights (k x n) read once, activations (m x k) read and (m x n) written."""
    return k * n * weight_bytes + (m * k + m * n) * act_bytes


def gemm_rows(m, row_tile: int | None):
    """Rows of the (m x k) activation matrix the tensor cores multiply: ``m`` rounded up to whole row tiles.

    A GEMM kernel's thread block computes a fixed tile of output rows, so a partial tile costs a whole one.
    Skinny products pick the smallest tile that covers ``m`` (a power of two up to ``row_tile``), wider ones
    run whole ``row_tile``-row tiles. Vidur's per-layer timings show this staircase on A100, H100 and A40: at
    a fixed weight the time is flat in ``m`` inside a tile and steps up when ``m`` passes a tile boundary
    (A100, weights above 100 MB, relative to one row: x1.06 at 64 rows, x1.25 at 72-128, x1.7-1.9 at
    136-256). ``row_tile`` is the device's kernel fact (``OpEfficiency.row_tile``, from the hardware profile's
    ``gemm_row_tile``: 128 on Hopper, whose cuBLAS kernels in vLLM's own H100 trace tile the tokens 128 at a
    time; 64 otherwise). ``row_tile`` None: ``m`` itself. Scalars or numpy
    arrays; ``m <= 0`` gives 0."""
    if row_tile is None:
        return m
    if isinstance(m, np.ndarray):
        small = 2.0 ** np.ceil(np.log2(np.maximum(m, 1.0)))
        rows = np.where(m <= row_tile, small, np.ceil(m / row_tile) * row_tile)
        return np.where(m > 0, rows, 0.0)
    if m <= 0:
        return 0.0
    if m <= row_tile:
        return 2.0 ** math.ceil(math.log2(max(m, 1.0)))
    return math.ceil(m / row_tile) * float(row_tile)


def gemm_wave_fill(m, n, tile_rows: int, tile_cols: int, slots: float):
    """Busy fraction of a GEMM grid that runs in whole waves: ``ceil(m / tile_rows) ceil(n / tile_cols)`` tiles,
    at most ``slots`` at once (one tile per SM), so a grid of more than one wave takes
    ``ceil(tiles / slots)`` whole waves and its compute is slowed by ``tiles / (slots x waves)``. A grid of one
    wave or less is not slowed: cuBLAS fills the device there with smaller tiles or a split of k (the row tiles
    and the sqrt(k) latency of :func:`gemm_time`). Scalars or numpy arrays."""
    tiles = _ceil(m / tile_rows) * _ceil(n / tile_cols)
    return _where(tiles > slots, wave_occupancy(tiles, slots), 1.0)


FP8_QUANT_BYTES_PER_ELEMENT = 3.0   # vLLM's static FP8 input quantization: a 16-bit element read, one byte written


def fp8_gemm_tiles(m, n):
    """(tiles, tile rows, tile columns) of vLLM's CUTLASS FP8 GEMM on Hopper (``cutlass_gemm_sm90_fp8_dispatch``,
    by m rounded up to a power of two): up to 64 rows, 64 x 64 tiles in clusters of 8 along n; up to 128 rows,
    64 x 128 tiles; above, 128 x 128 tiles; both in clusters of 2 along the tokens. A cluster launch covers
    whole clusters. Scalars or numpy arrays."""
    small = m <= 64
    tm, tn = _where(m > 128, 128.0, 64.0), _where(small, 64.0, 128.0)
    cm, cn = _where(small, 1.0, 2.0), _where(small, 8.0, 1.0)
    return _ceil(_ceil(m / tm) / cm) * cm * _ceil(_ceil(n / tn) / cn) * cn, tm, tn


def fp8_wave_flops(m, n, k, slots: float):
    """FLOPs vLLM's FP8 GEMM grid costs in tensor-core time: its persistent scheduler runs whole tiles in whole
    waves of ``slots`` (one per SM), with no split of k, so a grid below one wave leaves SMs idle and the time is
    ``waves x`` one tile's: ``waves x slots x 2 x tile rows x tile columns x k``."""
    tiles, tm, tn = fp8_gemm_tiles(m, n)
    return _maximum(1.0, _ceil(tiles / slots)) * slots * 2.0 * tm * tn * k


def fp8_quant_s(m, k, bandwidth_bytes_s: float, eff: OpEfficiency):
    """vLLM's static FP8 quantization of the (m x k) activation before the GEMM (``static_scaled_fp8_quant``): a
    streaming kernel with one thread block per token (:func:`streaming_s`: its bytes at the achievable bandwidth
    or, when longer, its rows in waves of ``concurrent_blocks`` at ``row_bandwidth_gb_s``). No FLOPs to speak of,
    and no launch cost of its own: the linear layer's ``overhead_us`` covers both kernels."""
    return streaming_s(m, 0.0, FP8_QUANT_BYTES_PER_ELEMENT * m * k, True, 0.0, 0.0, 1.0, bandwidth_bytes_s, eff)


def fp8_linear_time(m: float, n: float, k: float, weight_bytes: float, act_bytes: float, peak_flops_s: float,
                    bandwidth_bytes_s: float, eff: OpEfficiency) -> OpTime:
    """A linear layer with FP8 activations as vLLM runs it on Hopper (W8A8-FP8, per-tensor scales): the input
    quantized to FP8 (:func:`fp8_quant_s`), then CUTLASS's FP8 GEMM, its roofline over whole waves of its tiles
    (:func:`fp8_wave_flops`, ``concurrent_blocks`` tiles at once) plus a fixed ``overhead_us``. ``OpTime.flops``
    is the product's own FLOPs."""
    overhead_s = eff.overhead_us * 1e-6 + float(fp8_quant_s(m, k, bandwidth_bytes_s, eff))
    t = _roofline(float(fp8_wave_flops(m, n, k, eff.concurrent_blocks)), gemm_bytes(m, n, k, weight_bytes, act_bytes),
                  peak_flops_s, bandwidth_bytes_s, eff, overhead_s)
    return OpTime(t.time_s, t.bound, gemm_flops(m, n, k), t.bytes)


def _ceil(x):
    """``np.ceil`` for arrays, ``math.ceil`` (as a float) for a scalar."""
    return np.ceil(x) if isinstance(x, np.ndarray) else float(math.ceil(x))


def gemm_time(m: float, n: float, k: float, weight_bytes: float, act_bytes: float,
              peak_flops_s: float, bandwidth_bytes_s: float, eff: OpEfficiency) -> OpTime:
    """The roofline over the rows the tensor cores multiply (:func:`gemm_rows`: whole ``row_tile`` tiles), plus a
    latency growing as ``sqrt(k)`` (``splitk_latency_ns`` per sqrt(k)): a thread block walks its k-slice
    serially and cuBLAS splits k across blocks, whose partial sums are then reduced; a split into s parts
    costs ``a k / s + b s``, least at ``2 sqrt(a b k)``. Where the device's kernels run a large grid in whole
    waves (``wave_tile``, ``concurrent_blocks`` tiles at once), the compute is slowed by the part-empty last
    wave (:func:`gemm_wave_fill`). ``OpTime.flops`` is the product's own FLOPs."""
    overhead_s = eff.overhead_us * 1e-6 + getattr(eff, "splitk_latency_ns", 0.0) * 1e-9 * math.sqrt(k)
    flops = gemm_flops(m, n, k)
    tile_flops = gemm_flops(gemm_rows(m, getattr(eff, "row_tile", None)), n, k)
    wave = getattr(eff, "wave_tile", None)
    if wave is not None and m > 0:
        tile_flops /= gemm_wave_fill(m, n, wave.rows, wave.cols, eff.concurrent_blocks)
    t = _roofline(tile_flops, gemm_bytes(m, n, k, weight_bytes, act_bytes), peak_flops_s, bandwidth_bytes_s, eff,
                  overhead_s)
    return OpTime(t.time_s, t.bound, flops, t.bytes)


MOE_BLOCK_ROWS_FEW, MOE_BLOCK_ROWS = 16, 64   # vLLM fused_moe get_default_config: BLOCK_SIZE_M by tokens vs experts


def moe_experts_touched(num_tokens: float, top_k: int, num_experts: int, ep: int) -> float:
    """Expected local experts with work on a device holding ``num_experts / ep`` of them, given that it has
    work at all, under uniform top-k routing of ``num_tokens`` tokens: ``n * P(expert touched) / P(any local
    expert touched)``; a token's top-k misses the ``n`` local experts with probability C(E-n, k) / C(E, k)."""
    if num_tokens <= 0:
        return 0.0
    n = num_experts // ep
    miss = math.comb(num_experts - n, top_k) / math.comb(num_experts, top_k)
    return n * (1.0 - (1.0 - top_k / num_experts) ** num_tokens) / (1.0 - miss ** num_tokens)


@dataclass(frozen=True, slots=True)
class MoeWork:
    """One device's share of vLLM's fused MoE (``fused_experts``: align, gate/up GEMM, activation, down GEMM,
    top-k sum), in the units :func:`moe_time` prices."""

    flops: float          # the experts' own multiply-adds (token-expert pairs x weights)
    tile_flops: float     # what the tensor cores compute: every expert's rows padded to whole row blocks
    gemm_bytes: float     # read by the two grouped GEMMs: touched experts' weights, their pairs' activations
    weight_bytes: float   # the touched experts' weights alone (part of gemm_bytes)
    stream_bytes: float   # moved by the kernels around them, over all ``tokens x top_k`` pairs
    pairs: float          # all ``tokens x top_k`` token-expert pairs (sorted by expert, then gathered back)


def moe_work(num_tokens: float, top_k: int, num_experts: int, ep: int, imbalance: float, hidden: float,
             ffn_n: float, ffn_matrices: int, weight_bytes: float, act_bytes: float) -> MoeWork:
    """The fused MoE of ``num_tokens`` tokens on one of ``ep`` devices, each expert ``ffn_n`` wide here.

    vLLM sorts the token-expert pairs by expert and pads each expert's rows to a whole block of
    ``BLOCK_SIZE_M`` rows (16 when the tokens are no more than the experts, else 64: its default config),
    so the GEMMs compute ``touched x ceil(rows per expert / block) x block`` rows, where a device sees
    ``tokens x top_k / ep`` pairs (times ``imbalance`` on the busiest one) spread over the experts it touches.
    The activation and the top-k sum run over every pair of every token, local or not, and with ``ep > 1``
    the GEMMs write zeros for the pairs of other devices' experts (their output rows are allocated for
    all pairs): that traffic scales with all pairs, not with the device's share."""
    up_n = (ffn_matrices - 1) * ffn_n
    all_pairs = num_tokens * top_k
    pairs = all_pairs / ep * imbalance
    touched = moe_experts_touched(num_tokens, top_k, num_experts, ep)
    block = MOE_BLOCK_ROWS_FEW if num_tokens <= num_experts else MOE_BLOCK_ROWS
    rows = touched * math.ceil(pairs / touched / block) * block if touched else 0.0
    per_row_flops = 2.0 * (up_n + ffn_n) * hidden
    weights = touched * (up_n + ffn_n) * hidden * weight_bytes
    gemm_bytes = weights + pairs * (2 * hidden + up_n + ffn_n) * act_bytes
    stream = all_pairs * (up_n + ffn_n + hidden) + num_tokens * hidden + all_pairs * (1.0 - 1.0 / ep) * (up_n + hidden)
    return MoeWork(pairs * per_row_flops, rows * per_row_flops, gemm_bytes, weights, stream * act_bytes, all_pairs)


def moe_time(work: MoeWork, peak_flops_s: float, bandwidth_bytes_s: float, eff: OpEfficiency) -> OpTime:
    """Fused MoE: the grouped GEMMs' roofline over their padded rows, then the streaming traffic around them
    at the same bandwidth fraction, plus one fixed cost for the whole sequence of kernels (``overhead_us``)
    and one per token-expert pair (``unit_overhead_ns``: sorting the pairs by expert and gathering them back)."""
    compute_s = work.tile_flops / (peak_flops_s * eff.flops_fraction)
    memory_s = work.gemm_bytes / (bandwidth_bytes_s * eff.bandwidth_fraction)
    stream_s = work.stream_bytes / (bandwidth_bytes_s * eff.bandwidth_fraction)
    body_s = combine_s(compute_s, memory_s, eff.overlap_exponent) + stream_s
    overhead_s = eff.overhead_us * 1e-6 + work.pairs * eff.unit_overhead_ns * 1e-9
    bound = OVERHEAD if overhead_s > body_s else COMPUTE if compute_s >= memory_s + stream_s else MEMORY
    return OpTime(overhead_s + body_s, bound, work.flops, work.gemm_bytes + work.stream_bytes)


def prefill_attention_flops(num_heads: float, head_dim: float, sum_q_ctx: float, sum_q_sq: float, num_tokens: float) -> float:
    """Causal attention over new tokens. Query j (0-based) of a chunk with ``c`` cached tokens sees
    ``c + j + 1`` keys, so a chunk of ``q`` queries scores ``q*c + q*(q+1)/2`` pairs; QK^T and PV each cost
    ``2 * head_dim`` FLOPs per pair and head."""
    pairs = sum_q_ctx + 0.5 * (sum_q_sq + num_tokens)
    return 4.0 * num_heads * head_dim * pairs


def attention_bytes(num_heads: float, num_kv_heads: float, head_dim: float, num_tokens: float,
                    kv_tokens_read: float, act_bytes: float, kv_bytes: float) -> float:
    """Fused (FlashAttention-style) kernel: Q read and O written once, new K/V written to the cache,
    and every cached plus new K/V token read once per sequence."""
    q_and_o = 2.0 * num_tokens * num_heads * head_dim * act_bytes
    kv_write = 2.0 * num_tokens * num_kv_heads * head_dim * kv_bytes
    kv_read = 2.0 * kv_tokens_read * num_kv_heads * head_dim * kv_bytes
    return q_and_o + kv_write + kv_read


def decode_attention_flops(num_heads: float, head_dim: float, sum_ctx_plus_one: float) -> float:
    """One query per sequence against its whole context (cached tokens plus itself)."""
    return 4.0 * num_heads * head_dim * sum_ctx_plus_one


@dataclass(frozen=True, slots=True)
class StreamingKernel:
    """A memory-streaming kernel, per element of its output: FLOPs, activation-sized values read from and
    written to memory, and how its launch grid is cut. ``per_token_blocks``: one thread block walks each
    token's row (vLLM's norm, activation and rotary kernels), so a few tokens cannot fill the GPU;
    otherwise a flat grid (PyTorch's element-wise ops). ``reduction``: a block-wide reduction and a
    second pass over the row (norms); the second read hits the cache, so it adds no memory bytes."""

    flops_per_element: float
    reads: float
    writes: float
    per_token_blocks: bool
    reduction: bool = False

    def bytes_per_element(self, act_bytes: float) -> float:
        return (self.reads + self.writes) * act_bytes


RMS_NORM = StreamingKernel(5.0, reads=1, writes=1, per_token_blocks=True, reduction=True)
ROTARY = StreamingKernel(6.0, reads=1, writes=1, per_token_blocks=True)      # in place on Q and K
RESIDUAL_ADD = StreamingKernel(1.0, reads=2, writes=1, per_token_blocks=False)
EMBEDDING = StreamingKernel(0.0, reads=1, writes=1, per_token_blocks=False)  # a gather of rows


def activation_kernel(ffn_matrices: int, per_token_blocks: bool = True) -> StreamingKernel:
    """The FFN activation: a gated FFN (3 matrices) reads the gate and up halves and writes one value
    (SiLU-and-mul), a plain one (2 matrices) reads one and writes one."""
    return StreamingKernel(8.0, reads=ffn_matrices - 1, writes=1, per_token_blocks=per_token_blocks)


def streaming_s(num_tokens, flops, bytes_, per_token_blocks, reductions, launches, peak_flops_s,
                bandwidth_bytes_s, eff: OpEfficiency, l2_bytes=0.0):
    """Seconds of streaming kernels (scalars or numpy arrays): ``launches`` kernels' fixed overhead plus the
    larger of compute and memory time.

    Memory time is the bytes at the achievable DRAM bandwidth, or ``l2_speedup`` times faster when the
    kernel's footprint (its bytes per launch) fits in an L2 cache of ``l2_bytes`` (a tensor just written
    by the previous kernel, or re-read, is still there); a larger footprint streams from DRAM (a pass over
    more than the cache evicts its lines before they are used again).

    Per-token-block kernels take no less than their rows: a block moves its row at ``row_bandwidth_gb_s``
    and at most ``concurrent_blocks`` blocks run at once (about the SM count), so rows run in
    ``max(1, tokens / concurrent_blocks)`` waves; a norm's block-wide reduction adds
    ``reduction_overhead_us`` to every row, so to every wave, and a norm's rows (latency-bound behind that
    barrier) move ``l2_speedup`` times faster when the footprint fits in L2."""
    compute_s = flops / (peak_flops_s * eff.flops_fraction)
    memory_s = bytes_ / (bandwidth_bytes_s * eff.bandwidth_fraction)
    speedup = getattr(eff, "l2_speedup", 1.0)
    in_l2 = 1.0
    if speedup != 1.0:
        in_l2 = _where(bytes_ / launches <= l2_bytes, 1.0 / speedup, 1.0)
        memory_s = memory_s * in_l2
    reduction_s = reductions * eff.reduction_overhead_us * 1e-6
    if eff.row_bandwidth_gb_s is not None and eff.concurrent_blocks is not None:
        tokens = _maximum(num_tokens, 1.0)
        waves = _maximum(1.0, tokens / eff.concurrent_blocks)
        row_s = bytes_ / tokens / (eff.row_bandwidth_gb_s * 1e9)
        # a norm's row walk (read, block-wide reduction, read again) is latency-bound: the barrier keeps
        # a block from overlapping its loads, so its rows too move l2_speedup times faster from L2
        row_s = _where(reductions > 0, row_s * in_l2, row_s)
        row_s = (row_s + reduction_s) * waves
        memory_s = _where(per_token_blocks, _maximum(memory_s, row_s), memory_s)
    else:
        memory_s = memory_s + reduction_s
    return launches * eff.overhead_us * 1e-6 + _maximum(compute_s, memory_s)


def _where(condition, a, b):
    """``np.where`` for arrays; for a scalar condition the same choice without numpy's per-call cost (the
    step model prices one kernel at a time)."""
    if isinstance(condition, np.ndarray):
        return np.where(condition, a, b)
    return a if condition else b


def _maximum(a, b):
    """``np.maximum`` for arrays, ``max`` for two scalars (the same value: IEEE doubles either way)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.maximum(a, b)
    return a if a >= b else b


def elementwise_time(num_tokens: float, elements_per_token: float, kernel: StreamingKernel, act_bytes: float,
                     peak_flops_s: float, bandwidth_bytes_s: float, eff: OpEfficiency, l2_bytes: float = 0.0) -> OpTime:
    """Norms, activations, rotary embedding, residual adds: one streaming kernel over ``num_tokens`` rows
    of ``elements_per_token`` on a device with ``l2_bytes`` of L2 cache (see :func:`streaming_s`)."""
    n = num_tokens * elements_per_token
    flops, bytes_ = n * kernel.flops_per_element, n * kernel.bytes_per_element(act_bytes)
    time_s = float(streaming_s(num_tokens, flops, bytes_, kernel.per_token_blocks, float(kernel.reduction), 1.0,
                               peak_flops_s, bandwidth_bytes_s, eff, l2_bytes))
    fixed_s = eff.overhead_us * 1e-6
    body_s = time_s - fixed_s
    bound = COMPUTE if flops / (peak_flops_s * eff.flops_fraction) >= body_s else MEMORY
    if fixed_s > body_s:
        bound = OVERHEAD
    return OpTime(time_s, bound, flops, bytes_)


# vLLM's custom all-reduce kernel handles messages below its buffer size (8 MiB by default) inside one
# NVLink/NVSwitch domain; larger messages, and groups that span nodes, go to NCCL's ring.
CUSTOM_ALLREDUCE_MAX_BYTES = 8 * 2**20


def allreduce_s(message_bytes, num_devices, link_bandwidth_bytes_s, link_latency_s, eff: OpEfficiency,
                custom_kernel=True, switch_reduction=False):
    """All-reduce seconds (scalars or numpy arrays). A ring moves ``2 (p-1)/p`` of the message per device.

    Below ``CUSTOM_ALLREDUCE_MAX_BYTES`` inside a node, vLLM's custom kernel runs whichever is faster of
    one-shot (one stage: every device reads the ``p-1`` peer buffers) and two-shot (two stages:
    reduce-scatter then all-gather, the ring's bytes); each stage pays one cross-device handshake of
    ``hop_latency_scale`` link latencies. Otherwise NCCL's ring pays ``overhead_us`` (launch and
    protocol set-up) and, across nodes, the link latency of each of its ``2 (p-1)`` steps.

    ``switch_reduction`` (inside a node whose switch reduces, e.g. NVLink SHARP): NCCL runs whichever is
    faster of the ring and NVLS, where the switch sums what every device sends and multicasts the result,
    so each device sends and receives the message once, at ``switch_bandwidth_fraction`` of the link."""
    p = np.asarray(num_devices, dtype=float)
    m = np.asarray(message_bytes, dtype=float)
    bw = link_bandwidth_bytes_s * eff.bandwidth_fraction
    ring_s = 2.0 * (p - 1) / p * m / bw
    stage_s = eff.hop_latency_scale * link_latency_s
    custom_s = np.minimum(stage_s + (p - 1) * m / bw, 2.0 * stage_s + ring_s)
    wire_s = ring_s
    if eff.switch_bandwidth_fraction is not None:
        nvls_s = m / (link_bandwidth_bytes_s * eff.switch_bandwidth_fraction)
        wire_s = np.where(switch_reduction, np.minimum(ring_s, nvls_s), ring_s)
    nccl_s = eff.overhead_us * 1e-6 + wire_s + np.where(custom_kernel, 0.0, 2.0 * (p - 1) * link_latency_s)
    out = np.where(custom_kernel & (m < CUSTOM_ALLREDUCE_MAX_BYTES), custom_s, nccl_s)
    return np.where(p > 1, out, 0.0)


def allreduce_time(message_bytes: float, num_devices: int, link_bandwidth_bytes_s: float,
                   link_latency_s: float, eff: OpEfficiency, custom_kernel: bool = True,
                   switch_reduction: bool = False) -> OpTime:
    """All-reduce of ``message_bytes`` over ``num_devices`` (see :func:`allreduce_s`); ``custom_kernel``
    is False when the group spans nodes, ``switch_reduction`` True when it stays on a reducing switch."""
    if num_devices <= 1:
        return OpTime(0.0, NETWORK, 0.0, 0.0)
    p = num_devices
    time_s = float(allreduce_s(message_bytes, p, link_bandwidth_bytes_s, link_latency_s, eff, custom_kernel,
                               switch_reduction))
    return OpTime(time_s, NETWORK, 0.0, 2.0 * (p - 1) / p * message_bytes)


def send_recv_time(message_bytes: float, link_bandwidth_bytes_s: float, link_latency_s: float,
                   eff: OpEfficiency) -> OpTime:
    """Point-to-point transfer (pipeline stages, KV transfer)."""
    wire_s = message_bytes / (link_bandwidth_bytes_s * eff.bandwidth_fraction)
    latency_s = eff.hop_latency_scale * link_latency_s + eff.overhead_us * 1e-6
    return OpTime(wire_s + latency_s, NETWORK, 0.0, message_bytes)


def alltoall_time(message_bytes: float, num_devices: int, link_bandwidth_bytes_s: float,
                  link_latency_s: float, eff: OpEfficiency) -> OpTime:
    """All-to-all (MoE dispatch or combine): each of ``p`` devices sends ``message_bytes`` spread evenly
    over all ``p`` devices; the ``1/p`` addressed to itself stays local, so ``(p-1)/p`` crosses the link.
    The ``p-1`` peers are reached concurrently (a switched fabric), so one hop of latency. Priced with
    the point-to-point (``send_recv``) efficiency: an all-to-all is a group of concurrent send/recv pairs."""
    if num_devices <= 1:
        return OpTime(0.0, NETWORK, 0.0, 0.0)
    p = num_devices
    wire_bytes = (p - 1) / p * message_bytes
    wire_s = wire_bytes / (link_bandwidth_bytes_s * eff.bandwidth_fraction)
    latency_s = eff.hop_latency_scale * link_latency_s + eff.overhead_us * 1e-6
    return OpTime(wire_s + latency_s, NETWORK, 0.0, wire_bytes)
