"""The roofline step-time model: one iteration of a transformer, assembled from operator kernels.

Per layer (each device of a tensor-parallel group holds 1/tp of the heads and FFN columns):
input norm, QKV GEMM, rotary embedding, attention (prefill and decode kernels), O GEMM, all-reduce,
residual add, post-attention norm, FFN up(+gate) GEMM, activation, down GEMM (or the routed experts of
an MoE layer), all-reduce, residual add. Then the final norm and the LM head on the sequences that
sample a token, plus a fixed per-iteration framework overhead.

Expert parallelism (``ep > 1``, MoE only, ``ep == tp``): each device holds ``num_experts / ep`` whole
experts instead of ``1/tp`` of every expert. The FFN all-reduce becomes an all-to-all dispatch of every
token's hidden state to the devices of its top-k experts and a combine back (the attention all-reduce
stays: it stands for the reduce-scatter before dispatch and the all-gather after combine, which move
the same bytes). The expert kernels are those of the busiest device: ``moe_load_imbalance`` times the
mean token-expert pairs per device, and the weights of the local experts a device with work touches.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from .. import quantization as q
from ..hardware import HardwareProfile
from ..model import ModelSpec
from . import ops
from .batch import BatchShape
from .pipeline import StageSpec


@dataclass(slots=True)
class StepCost:
    """One iteration: its time, what bound it, and the work done (for MFU/MBU)."""

    time_s: float
    bound: str          # compute | memory | network | overhead: the class that took the most time
    flops: float        # per device
    bytes: float        # per device (memory traffic; network bytes excluded)


@dataclass(frozen=True, slots=True)
class Precision:
    """Bytes and compute dtypes of one scenario's ``precision`` (see :mod:`simserve.quantization`)."""

    weight_bytes: float      # per parameter, amortised quantization scales included
    act_bytes: float         # per activation element between kernels (16-bit in every scheme)
    kv_bytes: float          # per cached K or V element, scales excluded
    compute_dtype: str       # GEMMs: the peak_tflops column (the activations' dtype)
    attention_dtype: str     # attention and element-wise kernels: a 16-bit peak_tflops column
    kv_scale_bytes: float = 0.0   # scale + zero point per (token, KV head), for K and for V each

    @staticmethod
    def of(weights: str, activations: str, kv_cache: str) -> "Precision":
        return Precision(q.WEIGHT_BYTES[weights], q.ACTIVATION_BYTES, q.KV_BYTES[kv_cache], activations,
                         q.attention_dtype(activations), q.KV_SCALE_BYTES[kv_cache])

    def kv_bytes_per_value(self, head_dim: int) -> float:
        """Bytes per cached K or V element with its per-(token, head) scales spread over ``head_dim``."""
        return self.kv_bytes + self.kv_scale_bytes / head_dim


BOUNDS = (ops.COMPUTE, ops.MEMORY, ops.NETWORK, ops.OVERHEAD)     # in name order (decode_span relies on it)
COMPUTE, MEMORY, NETWORK, OVERHEAD = BOUNDS
BOUND_INDEX = {bound: i for i, bound in enumerate(BOUNDS)}
assert list(BOUNDS) == sorted(BOUNDS)
CACHE_ENTRIES = 200_000


def top_bound(compute_s: float, memory_s: float, network_s: float, overhead_s: float) -> str:
    """The bound class that took the most time, a tie going to the later one in ``BOUNDS`` (name order):
    ``max(zip(times, BOUNDS))[1]`` without building the tuples."""
    bound, top = COMPUTE, compute_s
    if memory_s >= top:
        bound, top = MEMORY, memory_s
    if network_s >= top:
        bound, top = NETWORK, network_s
    if overhead_s >= top:
        bound = OVERHEAD
    return bound


class RooflineStep:
    """Step time of one replica of ``model`` on ``tp`` devices of ``hw``. Pure: no state between calls.

    ``ep`` spreads the experts of MoE layers over that many of the devices (1: every expert split over
    ``tp``); a dense model (e.g. a speculative draft) has no experts and ignores it.
    ``moe_load_imbalance`` (>= 1) is the busiest device's token-expert pairs over the mean, with ``ep > 1``.
    ``stage`` (pipeline parallelism): only that stage's layers, the embedding on the first stage, the final
    norm and LM head on the last, and the per-iteration framework overhead on the first (the driver
    schedules and launches before stage 1 starts); None is the whole model.
    """

    def __init__(self, model: ModelSpec, hw: HardwareProfile, precision: Precision, tp: int, ep: int = 1,
                 moe_load_imbalance: float = 1.0, stage: StageSpec | None = None):
        self.model, self.hw, self.prec, self.tp = model, hw, precision, tp
        self.num_layers = model.num_layers if stage is None else stage.num_layers
        self.first = stage is None or stage.first
        self.last = stage is None or stage.last
        self.ep = ep if model.num_experts > 1 else 1
        self.moe_load_imbalance = moe_load_imbalance if self.ep > 1 else 1.0
        net = hw.interconnect
        ep_link = net.intra_node if self.ep <= net.devices_per_node else net.inter_node
        self.ep_link_bw_bytes_s = ep_link.bandwidth_gb_s * 1e9
        self.ep_link_latency_s = ep_link.latency_us * 1e-6
        self.peak_flops_s = hw.peak_flops_s(precision.compute_dtype)      # GEMMs
        # FP8 activations run vLLM's FP8 linear layers (input quantization, CUTLASS FP8 GEMM: ops.fp8_linear_time)
        # where the profile has their fitted efficiency; otherwise the GEMM model at the FP8 peak
        fp8 = precision.compute_dtype == "fp8" and hw.efficiency.gemm_fp8 is not None
        self._linear = ops.fp8_linear_time if fp8 else ops.gemm_time
        self._linear_eff = hw.efficiency.gemm_fp8 if fp8 else hw.efficiency.gemm
        self.attn_flops_s = hw.peak_flops_s(precision.attention_dtype)    # attention, element-wise
        self.bw_bytes_s = hw.weight_bandwidth_bytes_s
        self.l2_bytes = (hw.l2_cache_mb or 0.0) * 1e6   # streaming kernels' L2 (ops.streaming_s)
        self.intra_node_tp = tp <= hw.interconnect.devices_per_node
        self.switch_reduction = self.intra_node_tp and hw.interconnect.switch_reduction
        link = hw.interconnect.intra_node if self.intra_node_tp else hw.interconnect.inter_node
        self.link_bw_bytes_s = link.bandwidth_gb_s * 1e9
        self.link_latency_s = link.latency_us * 1e-6
        m = model
        self.heads = m.num_heads / tp
        self.kv_heads = max(1.0, m.num_kv_heads / tp)   # KV heads are replicated when tp > num_kv_heads
        self.qkv_n = (m.q_size + 2 * m.kv_size) / tp
        self.o_k = m.q_size / tp
        self.ffn_n = m.ffn_size / tp
        self.kv_value_bytes = precision.kv_bytes_per_value(m.head_size)
        self.window = m.sliding_window
        self.step_overhead_s = hw.efficiency.step_overhead_us * 1e-6 if self.first else 0.0
        self._cache: dict = {}      # (T, logits) -> base
        self._layers: dict = {}     # T -> the layers' sums
        self._emb: dict = {}        # T -> embedding kernel
        self._logits: dict = {}     # logits -> (final norm, LM head) kernels
        self._prefill: dict = {}    # a batch's prefill sums -> prefill attention kernel
        self._span: dict = {}       # (n, logits) -> decode_span's constants
        self._grid: dict = {}       # (n, KV tiles) -> decode_span's launch-grid terms
        self._launches: dict = {}   # (n, KV tiles) -> ops.decode_launch
        self._attn: dict = {}       # n -> decode attention's constants

    def __call__(self, b: BatchShape) -> StepCost:
        return self.step(b)

    def layer_ops(self, b: BatchShape) -> list[tuple[str, ops.OpTime]]:
        """The kernels of one decoder layer for batch ``b``, named, in execution order."""
        linear = self.linear_layer_ops(b.num_tokens)
        return linear[:3] + self.attention_ops(b) + linear[3:]

    def linear_layer_ops(self, T: int) -> list[tuple[str, ops.OpTime]]:
        """A layer's kernels whose cost depends only on the token count (all but attention)."""
        m, p, e = self.model, self.prec, self.hw.efficiency
        pk, pa, bw, d = self.peak_flops_s, self.attn_flops_s, self.bw_bytes_s, m.head_size
        wb, ab, l2 = p.weight_bytes, p.act_bytes, self.l2_bytes
        norm = ops.elementwise_time(T, m.hidden_size, ops.RMS_NORM, ab, pa, bw, e.elementwise, l2)
        out: list[tuple[str, ops.OpTime]] = [
            ("input_norm", norm),
            ("qkv_proj", self._linear(T, self.qkv_n, m.hidden_size, wb, ab, pk, bw, self._linear_eff)),
            ("rope", ops.elementwise_time(T, (self.heads + self.kv_heads) * d, ops.ROTARY, ab, pa, bw, e.elementwise, l2)),
            ("o_proj", self._linear(T, m.hidden_size, self.o_k, wb, ab, pk, bw, self._linear_eff)),
        ]
        allreduce = None if self.tp == 1 else ops.allreduce_time(
            T * m.hidden_size * ab, self.tp, self.link_bw_bytes_s, self.link_latency_s, e.allreduce,
            custom_kernel=self.intra_node_tp, switch_reduction=self.switch_reduction)
        add = ops.elementwise_time(T, m.hidden_size, ops.RESIDUAL_ADD, ab, pa, bw, e.elementwise, l2)
        if self.tp > 1:
            out.append(("attn_allreduce", allreduce))
        out.append(("attn_residual", add))
        out.append(("post_attn_norm", norm))
        out.extend(self._ffn_ops(T))
        if self.tp > 1 and self.ep == 1:     # with EP the combine all-to-all returns the expert outputs
            out.append(("ffn_allreduce", allreduce))
        out.append(("ffn_residual", add))
        return out

    def attention_ops(self, b: BatchShape) -> list[tuple[str, ops.OpTime]]:
        """Prefill and decode attention kernels of one layer (FlashAttention-style, fused), named."""
        names = (["attn_prefill"] if b.prefill_seqs else []) + (["attn_decode"] if b.decode_seqs else [])
        return list(zip(names, self._attention(b)))

    def _attention(self, b: BatchShape) -> list[ops.OpTime]:
        """With a sliding window W a query sees at most W keys and a chunk of q queries touches at most
        q + W - 1 of them. Only per-batch sums reach here, so the caps apply to the sums: exact when every
        sequence is on the same side of the window, an upper bound on the keys read otherwise."""
        out = []
        if b.prefill_seqs:
            key = (b.prefill_seqs, b.prefill_tokens, b.prefill_q_ctx, b.prefill_q_sq, b.prefill_kv)
            op = self._prefill.get(key)
            if op is None:
                if len(self._prefill) >= CACHE_ENTRIES:
                    self._prefill.clear()
                op = self._prefill[key] = self._prefill_attention(b)
            out.append(op)
        if b.decode_seqs:
            if self.window is None:
                out.append(self._decode_attention(b.decode_seqs, b.decode_ctx))
            else:
                out.append(self._windowed_decode_attention(b))
        return out

    def _windowed_decode_attention(self, b: BatchShape) -> ops.OpTime:
        """The decode kernel of :meth:`_attention` with a sliding window: at most W keys per sequence."""
        d, ab, kb, n = self.model.head_size, self.prec.act_bytes, self.kv_value_bytes, b.decode_seqs
        keys = min(b.decode_ctx, n * self.window)
        fl = ops.decode_attention_flops(self.heads, d, keys)
        by = ops.attention_bytes(self.heads, self.kv_heads, d, n, keys - n, ab, kb)
        launch = None
        if self.hw.sm_count and keys > 0:
            launch = self._launch(n, ops.kv_tiles(keys, n, d), keys)
        return ops.decode_attention_time(fl, by, n, self.heads, self.kv_heads, self.attn_flops_s, self.bw_bytes_s,
                                         self.hw.efficiency.attention_decode, self.hw.sm_count, keys, d, ab, kb, launch)

    def _prefill_attention(self, b: BatchShape) -> ops.OpTime:
        """The prefill attention kernel of :meth:`_attention` (cached there by the batch's prefill sums)."""
        m, e = self.model, self.hw.efficiency
        pa, bw, d, ab, kb = self.attn_flops_s, self.bw_bytes_s, m.head_size, self.prec.act_bytes, self.kv_value_bytes
        W = self.window
        fl = ops.prefill_attention_flops(self.heads, d, b.prefill_q_ctx, b.prefill_q_sq, b.prefill_tokens)
        keys = b.prefill_kv
        if W is not None:
            fl = min(fl, ops.decode_attention_flops(self.heads, d, b.prefill_tokens * W))  # W keys per query
            keys = min(keys, b.prefill_tokens + b.prefill_seqs * (W - 1))
        by = ops.attention_bytes(self.heads, self.kv_heads, d, b.prefill_tokens, keys, ab, kb)
        blocks = ops.prefill_blocks(self.heads, b.prefill_seqs, b.prefill_tokens)
        return ops.attention_time(fl, by, b.prefill_seqs * self.heads, pa, bw, e.attention_prefill, blocks)

    def _ffn_ops(self, T: int) -> list[tuple[str, ops.OpTime]]:
        m, p, e = self.model, self.prec, self.hw.efficiency
        pk, pa, bw, wb, ab = self.peak_flops_s, self.attn_flops_s, self.bw_bytes_s, p.weight_bytes, p.act_bytes
        if m.num_experts == 1:
            up_n = (m.ffn_matrices - 1) * self.ffn_n
            act = ops.elementwise_time(T, self.ffn_n, ops.activation_kernel(m.ffn_matrices), ab, pa, bw, e.elementwise,
                                       self.l2_bytes)
            lin, eff = self._linear, self._linear_eff
            return [("ffn_up", lin(T, up_n, m.hidden_size, wb, ab, pk, bw, eff)), ("ffn_act", act),
                    ("ffn_down", lin(T, m.hidden_size, self.ffn_n, wb, ab, pk, bw, eff))]
        # MoE: vLLM's fused experts kernel sequence (ops.moe_work: T*k token-expert pairs, T*k/ep on each of
        # ep devices, times the imbalance on the busiest; the touched experts' weights read once each; every
        # expert's rows padded to whole row blocks), priced with the moe efficiency (the GEMM one when a
        # profile has none). With ep = 1 every expert is on every device at 1/tp of its width. The
        # activation is part of the fused sequence. The router is a small GEMM.
        k, E, ep = m.experts_per_token, m.num_experts, self.ep
        ffn_n = self.ffn_n if ep == 1 else m.ffn_size * ep / self.tp
        work = ops.moe_work(T, k, E, ep, self.moe_load_imbalance, m.hidden_size, ffn_n, m.ffn_matrices, wb, ab)
        experts = ops.moe_time(work, pk, bw, e.moe or e.gemm)
        router = ops.gemm_time(T, E, m.hidden_size, wb, ab, pk, bw, e.gemm)
        if ep == 1:
            return [("moe_router", router), ("moe_experts", experts)]
        a2a = ops.alltoall_time(self.alltoall_bytes(T), ep, self.ep_link_bw_bytes_s, self.ep_link_latency_s,
                                e.send_recv)
        return [("moe_router", router), ("moe_dispatch", a2a), ("moe_experts", experts), ("moe_combine", a2a)]

    def alltoall_bytes(self, T: int) -> float:
        """What one device sends in a dispatch (and again in a combine): its T/ep tokens' hidden states,
        once per routed expert (k copies, not deduplicated per device); mean routing, no imbalance."""
        m = self.model
        return T / self.ep * m.experts_per_token * m.hidden_size * self.prec.act_bytes

    def head_ops(self, b: BatchShape) -> list[tuple[str, ops.OpTime]]:
        """Embedding lookup, final norm and LM head (vocabulary sharded over tp)."""
        m, p, e = self.model, self.prec, self.hw.efficiency
        pk, pa, bw, l2 = self.peak_flops_s, self.attn_flops_s, self.bw_bytes_s, self.l2_bytes
        emb = ops.elementwise_time(b.num_tokens, m.hidden_size, ops.EMBEDDING, p.act_bytes, pa, bw, e.elementwise, l2)
        final = ops.elementwise_time(b.num_logits, m.hidden_size, ops.RMS_NORM, p.act_bytes, pa, bw, e.elementwise, l2)
        head = ops.gemm_time(b.num_logits, m.vocab_size / self.tp, m.hidden_size, p.weight_bytes, p.act_bytes, pk, bw, e.gemm)
        return [("embedding", emb), ("final_norm", final), ("lm_head", head)]

    def _base(self, T: int, logits: int) -> tuple:
        """Time per bound class, FLOPs and bytes of everything but attention, for ``T`` tokens and
        ``logits`` sampled rows: all layers plus the embedding, final norm and LM head. Cached, and built
        from two smaller caches (the layers' sums by ``T``, the head kernels by ``T`` and ``logits``) so
        that a new (T, logits) pair costs three additions, in the order the full sum would make them."""
        key = (T, logits)
        base = self._cache.get(key)
        if base is not None:
            return base
        layers = self._layers.get(T)
        if layers is None:
            if len(self._layers) >= CACHE_ENTRIES:
                self._layers.clear()
            layers = self._layers[T] = self._layer_sums(T)
        times, flops, bytes_ = layers
        totals = list(times)                      # in BOUNDS order
        for op in self._head(T, logits):
            totals[BOUND_INDEX[op.bound]] += 1 * op.time_s
            flops += 1 * op.flops
            if op.bound != NETWORK:
                bytes_ += 1 * op.bytes
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache.clear()
        base = self._cache[key] = (tuple(totals), flops, bytes_)
        return base

    def _layer_sums(self, T: int) -> tuple:
        totals = dict.fromkeys(BOUNDS, 0.0)
        flops = bytes_ = 0.0
        L = self.num_layers
        for _, op in self.linear_layer_ops(T):
            totals[op.bound] += L * op.time_s
            flops += L * op.flops
            if op.bound != ops.NETWORK:
                bytes_ += L * op.bytes
        return tuple(totals[k] for k in BOUNDS), flops, bytes_

    def _head(self, T: int, logits: int) -> tuple:
        """The embedding (by ``T``), final norm and LM head (by ``logits``) kernels, cached."""
        emb = self._emb.get(T)
        if emb is None:
            emb = self._emb[T] = self.head_ops(BatchShape(num_tokens=T, num_logits=0))[0][1]
        rest = self._logits.get(logits)
        if rest is None:
            rest = self._logits[logits] = tuple(op for _, op in self.head_ops(BatchShape(num_tokens=0, num_logits=logits))[1:])
        if self.first and self.last:
            return (emb, *rest)
        return ((emb,) if self.first else ()) + (rest if self.last else ())

    def step(self, b: BatchShape) -> StepCost:
        """Time of one iteration on this replica, and the bound class that took the most of it."""
        if b.num_tokens == 0:
            return StepCost(0.0, ops.OVERHEAD, 0.0, 0.0)
        if not b.prefill_seqs and self.window is None:
            return self.decode_cost(b.num_tokens, b.num_logits, b.decode_ctx)
        return self.general_step(b)

    def general_step(self, b: BatchShape) -> StepCost:
        """:meth:`step` for any batch, through the named kernels of :meth:`_attention`."""
        (compute, memory, network, overhead), flops, bytes_ = self._base(b.num_tokens, b.num_logits)
        L = self.num_layers
        for op in self._attention(b):
            if op.bound == COMPUTE:
                compute += L * op.time_s
            elif op.bound == MEMORY:
                memory += L * op.time_s
            else:
                overhead += L * op.time_s
            flops += L * op.flops
            bytes_ += L * op.bytes
        overhead += self.step_overhead_s
        time_s = compute + memory + network + overhead
        return StepCost(time_s, top_bound(compute, memory, network, overhead), flops, bytes_)

    def decode_cost(self, n: int, logits: int, ctx: int) -> StepCost:
        """:meth:`step` of an iteration of ``n`` decoding sequences only (``ctx``: their keys read, the sum
        of cached tokens plus one), without building the batch or its kernel records."""
        return self.decode_span(n, ctx, 1, logits)[0]

    def decode_span(self, n: int, ctx: int, count: int, logits: int | None = None) -> list[StepCost]:
        """``count`` consecutive iterations of the same ``n`` decoders (``logits`` of them sampling, all by
        default), with ``ctx``, ``ctx + n``, ``ctx + 2n``... keys read: what :meth:`general_step` gives for
        each, with the same operations in the same order (same bits; a test holds them equal), minus the
        kernel records and with what does not change hoisted out of the loop (and cached by ``n`` and
        ``logits``: :meth:`_span_constants`). The hot path of decoding; :meth:`decode_columns` gives the
        same as four lists (what the replica's spans use)."""
        return [StepCost(*c) for c in zip(*self.decode_columns(n, ctx, count, logits))]

    def decode_columns(self, n: int, ctx: int, count: int, logits: int | None = None) -> tuple[list, list, list, list]:
        """:meth:`decode_span` as columns: the iterations' times, bounds, FLOPs and bytes."""
        logits = n if logits is None else logits
        if self.window is not None:
            steps = [self.general_step(BatchShape(n, n, logits, n, ctx + j * n)) for j in range(count)]
            return ([c.time_s for c in steps], [c.bound for c in steps], [c.flops for c in steps],
                    [c.bytes for c in steps])
        key = (n, logits)
        constants = self._span.get(key)
        if constants is None:
            if len(self._span) >= CACHE_ENTRIES:
                self._span.clear()
            constants = self._span[key] = self._span_constants(n, logits)
        (compute0, memory0, network, overhead0, flops0, bytes0, L, fl_per_key, by_fixed, kvh, d, kvb, over, unit_s,
         floor_s, peak_f, peak_b, p, grid, tile, copy_s, combine_fixed, step_over) = constants   # (_span_constants)
        last_tiles, walk_s, splits, merge_s = 0, None, 1, 0.0
        overhead1 = overhead0 + step_over        # the step's overhead time when attention is not overhead-bound
        times, bounds, flops, bytes_ = [], [], [], []
        for _ in range(count):
            fl = fl_per_key * ctx
            by = by_fixed + 2.0 * (ctx - n) * kvh * d * kvb
            compute_s, memory_s = fl / peak_f, by / peak_b
            hi, lo = (compute_s, memory_s) if compute_s >= memory_s else (memory_s, compute_s)
            if p is not None and hi > 0.0:
                if p == 1.0:                     # x ** 1.0 is x (pow is exact where the result is representable)
                    hi = hi * (1.0 + lo / hi)
                else:
                    hi = hi * (1.0 + (lo / hi) ** p) ** (1.0 / p)
            bound = OVERHEAD if floor_s > hi else COMPUTE if compute_s >= memory_s else MEMORY
            op_s = over + (unit_s if unit_s > hi else hi)
            if grid:
                # ops.kv_tiles, inlined: the grid depends only on it. ctx / n / tile only grows (ctx does, and
                # rounded division is monotonic), so its ceiling changes only once it passes the last one.
                x = ctx / n / tile
                if x > last_tiles:
                    last_tiles = ceil(x)
                    walk_s, splits, merge_s = self._decode_grid(n, last_tiles, ctx)
                if walk_s is not None and walk_s > op_s:
                    op_s, bound = walk_s, MEMORY
            if copy_s is not None:
                op_s += copy_s
            if splits > 1:
                op_s += combine_fixed
                if merge_s:                      # without a walk rate, no combine walk
                    op_s += merge_s
            t = L * op_s
            compute, memory, overhead = compute0, memory0, overhead1
            if bound == MEMORY:
                memory += t
            elif bound == COMPUTE:
                compute += t
            else:
                overhead = overhead0 + t + step_over
            time_s = compute + memory + network + overhead
            bound, top = COMPUTE, compute        # top_bound, inlined
            if memory >= top:
                bound, top = MEMORY, memory
            if network >= top:
                bound, top = NETWORK, network
            if overhead >= top:
                bound = OVERHEAD
            times.append(time_s)
            bounds.append(bound)
            flops.append(flops0 + L * fl)
            bytes_.append(bytes0 + L * by)
            ctx += n
        return times, bounds, flops, bytes_

    def _span_constants(self, n: int, logits: int) -> tuple:
        """What :meth:`decode_span` computes once for ``n`` decoders of which ``logits`` sample: the step
        without attention and :meth:`_attention_constants`."""
        (compute0, memory0, network, overhead0), flops0, bytes0 = self._base(n, logits)
        return (compute0, memory0, network, overhead0, flops0, bytes0, self.num_layers,
                *self._attention_constants(n), self.step_overhead_s)

    def _attention_constants(self, n: int) -> tuple:
        """The terms of ops.decode_attention_time that depend on ``n`` decoders only (see it for their
        meaning), for :meth:`decode_columns` and :meth:`_decode_attention`. Cached by ``n``."""
        constants = self._attn.get(n)
        if constants is not None:
            return constants
        d = self.model.head_size
        heads, kvh, kvb = self.heads, self.kv_heads, self.kv_value_bytes
        fl_per_key = 4.0 * heads * d
        by_fixed = 2.0 * n * heads * d * self.prec.act_bytes + 2.0 * n * kvh * d * kvb
        e = self.hw.efficiency.attention_decode
        units = n * kvh
        over = e.overhead_us * 1e-6
        unit_s = units * e.unit_overhead_ns * 1e-9
        peak_f, peak_b = self.attn_flops_s * e.flops_fraction, self.bw_bytes_s * e.bandwidth_fraction
        grid = bool(self.hw.sm_count) and units > 0
        copy_s = None
        if e.relayout_overhead_us > 0 and heads > kvh and n > 1 and kvh > 1:
            copy_s = e.relayout_overhead_us * 1e-6 + 4.0 * n * heads * d * self.prec.act_bytes / peak_b
        combine_fixed = e.relayout_overhead_us * 1e-6    # the split-KV combine kernel
        if len(self._attn) >= CACHE_ENTRIES:
            self._attn.clear()
        constants = self._attn[n] = (fl_per_key, by_fixed, kvh, d, kvb, over, unit_s, max(over, unit_s), peak_f,
                                     peak_b, e.overlap_exponent, grid, ops.kv_tile(d), copy_s, combine_fixed)
        return constants

    def _decode_attention(self, n: int, keys: int) -> ops.OpTime:
        """ops.decode_attention_time for ``n`` decoding sequences reading ``keys`` keys (no sliding window),
        with the same operations in the same order (same bits; a test holds them equal) on the constants
        cached by ``n``: the decode kernel of a mixed iteration. :meth:`decode_columns` runs the same
        arithmetic inlined in its loop."""
        (fl_per_key, by_fixed, kvh, d, kvb, over, unit_s, floor_s, peak_f, peak_b, p, grid, tile, copy_s,
         combine_fixed) = self._attention_constants(n)
        fl = fl_per_key * keys
        by = by_fixed + 2.0 * (keys - n) * kvh * d * kvb
        compute_s, memory_s = fl / peak_f, by / peak_b
        hi, lo = (compute_s, memory_s) if compute_s >= memory_s else (memory_s, compute_s)
        if p is not None and hi > 0.0:
            hi = hi * (1.0 + (lo / hi) ** p) ** (1.0 / p)
        bound = OVERHEAD if floor_s > hi else COMPUTE if compute_s >= memory_s else MEMORY
        op_s = over + (unit_s if unit_s > hi else hi)
        splits = 1
        if grid:
            walk_s, splits, merge_s = self._decode_grid(n, ceil(keys / n / tile) or 1, keys)
            if walk_s is not None and walk_s > op_s:
                op_s, bound = walk_s, MEMORY
        if copy_s is not None:
            op_s += copy_s
        if splits > 1:
            op_s += combine_fixed
            if merge_s:
                op_s += merge_s
        return ops.OpTime(op_s, bound, fl, by)

    def _launch(self, n: int, tiles: int, keys: int) -> tuple:
        """``ops.decode_launch`` for ``n`` decoding sequences reading ``keys`` keys, whose mean context
        spans ``tiles`` KV tiles (the grid depends on ``keys`` only through them). Cached."""
        launch = self._launches.get((n, tiles))
        if launch is None:
            if len(self._launches) >= CACHE_ENTRIES:
                self._launches.clear()
            launch = self._launches[n, tiles] = ops.decode_launch(n, self.heads, self.kv_heads, keys,
                                                                 self.model.head_size, self.hw.sm_count)
        return launch

    def _decode_grid(self, n: int, tiles: int, keys: int) -> tuple:
        """:meth:`decode_span`'s launch-grid terms for ``n`` decoders whose mean context spans ``tiles`` KV
        tiles (``keys`` read in all; the grid depends on them only through ``tiles``): the walk's time or
        None, the KV splits, the combine kernel's walk over them. Cached."""
        key = (n, tiles)
        terms = self._grid.get(key)
        if terms is None:
            e, d, sm = self.hw.efficiency.attention_decode, self.model.head_size, self.hw.sm_count
            blocks, walk_tiles, splits = self._launch(n, tiles, keys)
            walk_s, merge_s = None, 0.0
            if e.row_bandwidth_gb_s is not None:
                row_bw, tile_bytes = e.row_bandwidth_gb_s * 1e9, 2.0 * ops.kv_tile(d) * d * self.kv_value_bytes
                if walk_tiles > 1:
                    walk_s = e.overhead_us * 1e-6 + (walk_tiles - 1) * tile_bytes / row_bw * ceil(blocks / (2 * sm))
                if splits > 1:
                    merge_s = splits * (ops.combine_rows(d) * d * 4.0) / row_bw   # each split's partial rows
            if len(self._grid) >= CACHE_ENTRIES:
                self._grid.clear()
            terms = self._grid[key] = (walk_s, splits, merge_s)
        return terms
