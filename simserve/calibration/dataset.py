"""Measured kernel timings as fit points: FLOPs, bytes and work units from the same formulas the cost model uses.

Every point is one measured kernel: its operator class, where it was measured (``source``), its *shape key*
(points with equal keys are the same problem and always fall in the same cross-validation fold), the
roofline inputs (FLOPs and bytes from :mod:`simserve.cost.ops`, the peak rates from the hardware profile),
the attention work units, the collective's hop latency, and the measured latency in seconds. ``ref`` ties
Vidur points back to a (model, tp, tokens, op) row so whole iterations can be reassembled.

The arguments passed to the :mod:`~simserve.cost.ops` formulas mirror ``simserve.cost.step.RooflineStep``
(per-element FLOPs and bytes of the streaming ops, the attention sums); ``tests/test_calibration.py``
checks that the two agree.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..cost import ops
from ..hardware import HardwareProfile

DATA_DIR = Path(__file__).resolve().parent / "data"
OP_CLASSES = ("gemm", "gemm_fp8", "attention_prefill", "attention_decode", "elementwise", "allreduce", "send_recv",
              "moe")
GEMM_CLASSES = {"gemm": "bf16", "gemm_fp8": "fp8"}     # GEMM operator classes and their compute dtype


def runs_class(hw: "HardwareProfile", op_class: str) -> bool:
    """Whether a device has the compute an operator class needs (FP8 GEMMs need FP8 tensor cores)."""
    return op_class not in GEMM_CLASSES or GEMM_CLASSES[op_class] in hw.peak_tflops
MEASURED_HARDWARE = ("a100-sxm-80gb", "h100-sxm-80gb", "a40-48gb")

ACT_BYTES = 2.0     # every measurement here is bf16/fp16 activations, weights and KV cache

# The fitted domain (see docs/calibration.md). Points outside it are still predicted and reported.
MIN_GEMM_DIM = 256        # n and k of dense transformer layers at TP <= 8; smaller ones are MoE routers
HEAD_DIM = 128            # the head size of nearly every catalog model; FlashAttention tiles differ per size
MIN_PREFILL_LEN = 16      # a 1-token "prompt" is a decode-shaped kernel, not a prefill
# Vidur's one model with a plain (GELU) FFN, phi-2, also has LayerNorm, partial rotary and a parallel
# attention/FFN block: PyTorch kernels, not the vLLM RMSNorm, rotary and SiLU-and-mul kernels simserve prices.
PLAIN_FFN_MODELS = "plain-FFN model (LayerNorm, GELU: PyTorch kernels)"
AIC_ALLREDUCE = ("vllm_graph",)  # vLLM's all-reduce under CUDA graphs (custom kernel, NCCL for large messages)
# simserve routes tokens uniformly over the experts: a device's MoE timings are fitted with the most even routing
# aiconfigurator measured on it ("balanced", else the milder power law); the rest are cross-checks
MOE_ROUTING = ("balanced", "power_law_1.01")

# Vidur per-layer operators: (op class, simserve.cost.step name). The embedding lookup is a gather run once
# per step, not a per-layer streaming kernel, so it is neither fitted nor part of the layer sum.
VIDUR_LAYER_OPS = {
    "input_layernorm": "elementwise", "attn_pre_proj": "gemm", "attn_rope": "elementwise",
    "attn_post_proj": "gemm", "post_attention_layernorm": "elementwise", "mlp_up_proj": "gemm",
    "mlp_act": "elementwise", "mlp_down_proj": "gemm", "add": "elementwise",
}


@dataclass(frozen=True)
class Points:
    """Fit points of one hardware and operator class; all arrays have one entry per measured kernel."""

    hardware: str
    op_class: str
    source: np.ndarray
    key: np.ndarray
    ref: np.ndarray
    flops: np.ndarray
    bytes: np.ndarray
    peak_flops_s: np.ndarray
    bandwidth_bytes_s: np.ndarray
    units: np.ndarray       # attention work units (sequence x head); all-reduce: devices; streaming: tokens; GEMM: k
    hop_s: np.ndarray       # collectives: the link latency (send/recv: of its one hop); 0 elsewhere
    latency_s: np.ndarray
    outside: np.ndarray     # "" inside the fitted domain, else why not (such points are only predicted)
    per_token_blocks: np.ndarray   # streaming: 1 if one thread block per token (ops.StreamingKernel)
    reductions: np.ndarray         # streaming: norm reductions per measured op
    launches: np.ndarray           # streaming: kernels per measured op
    blocks: np.ndarray             # prefill attention: thread blocks (ops.prefill_blocks); 0 elsewhere
    switch: np.ndarray             # all-reduce: 1 if the link's switch reduces (interconnect.switch_reduction)
    walk_bytes: np.ndarray         # decode attention: KV bytes a block walks after its first tile, times its waves
    relayout: np.ndarray           # decode attention: 1 if grouped queries are copied (ops.decode_attention_time)
    relayout_bytes: np.ndarray     # decode attention: bytes those two copies read and write
    splitkv: np.ndarray            # decode attention: 1 if the context is split (a combine kernel follows)
    combine_bytes: np.ndarray      # decode attention: partial-output bytes a combine block walks (all splits)
    sms: np.ndarray                # streaming: the GPU's SMs (per-token rows run at once; fixes concurrent_blocks)
    l2_bytes: np.ndarray           # streaming: the device's L2 cache in bytes (ops.streaming_s); 0 elsewhere
    rows: np.ndarray               # GEMM: m, the activation rows (ops.gemm_rows pads them to whole tiles); 0 elsewhere
    tile_rows: np.ndarray          # GEMM: the stack's row tile (profile gemm_row_tile; fixes row_tile), 0 if not given
    wave_rows: np.ndarray          # GEMM: rows of the tile whose grid runs in whole waves (profile gemm_wave_tile), 0: none
    wave_cols: np.ndarray          # GEMM: weight columns of that tile, 0: none
    stream_bytes: np.ndarray       # MoE: bytes of the streaming kernels around the grouped GEMMs (ops.moe_time)

    def __len__(self) -> int:
        return len(self.latency_s)

    def take(self, mask: np.ndarray) -> "Points":
        return Points(self.hardware, self.op_class, **{f: getattr(self, f)[mask] for f in _ARRAYS})

    def with_latency(self, latency_s: np.ndarray) -> "Points":
        arrays = {f: getattr(self, f) for f in _ARRAYS}
        arrays["latency_s"] = np.asarray(latency_s, dtype=float)
        return Points(self.hardware, self.op_class, **arrays)


_ARRAYS = ("source", "key", "ref", "flops", "bytes", "peak_flops_s", "bandwidth_bytes_s", "units", "hop_s", "latency_s",
           "outside", "per_token_blocks", "reductions", "launches", "blocks", "switch", "walk_bytes", "relayout",
           "relayout_bytes", "splitkv", "combine_bytes", "sms",
           "l2_bytes", "rows", "tile_rows", "wave_rows", "wave_cols", "stream_bytes")
_TEXT = ("source", "key", "ref", "outside")


@dataclass(frozen=True)
class Dataset:
    """The repo copy of the measurements (see ``data/README.md``) and its SHA-256."""

    tables: dict[str, pd.DataFrame]
    sha256: str


def load_dataset(data_dir: Path = DATA_DIR) -> Dataset:
    files = sorted(data_dir.glob("*.csv.gz"))
    if not files:
        raise FileNotFoundError(f"no calibration data in {data_dir}")
    digest = hashlib.sha256()
    tables = {}
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
        tables[path.name.removesuffix(".csv.gz")] = pd.read_csv(path)
    return Dataset(tables, digest.hexdigest())


def _keys(*columns) -> np.ndarray:
    """Shape keys: the integer columns joined with 'x' (``m x n x k``, ``seqs x q x c x heads x kv x hd``)."""
    cols = [np.asarray(c, dtype=float).astype(np.int64).astype(str) for c in columns]
    out = cols[0]
    for c in cols[1:]:
        out = np.char.add(np.char.add(out, "x"), c)
    return out


def _frame(d: dict) -> pd.DataFrame:
    n = len(d["latency_s"])
    base = {"source": "", "ref": "", "units": 0.0, "hop_s": 0.0, "outside": "", "per_token_blocks": 0.0,
            "reductions": 0.0, "launches": 1.0, "blocks": 0.0, "switch": 0.0, "walk_bytes": 0.0, "relayout": 0.0,
            "relayout_bytes": 0.0, "splitkv": 0.0, "combine_bytes": 0.0,
            "sms": 0.0, "l2_bytes": 0.0, "rows": 0.0, "tile_rows": 0.0, "wave_rows": 0.0, "wave_cols": 0.0,
            "stream_bytes": 0.0}
    cols = {f: np.broadcast_to(np.asarray(d.get(f, base.get(f))), (n,)) for f in _ARRAYS}
    return pd.DataFrame(cols)


def _points(hw: str, op_class: str, frames: list[pd.DataFrame]) -> Points:
    frames = [f for f in frames if len(f)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({f: [] for f in _ARRAYS})
    arrays = {f: df[f].to_numpy(dtype=object if f in _TEXT else float) for f in _ARRAYS}
    for f in _TEXT:
        arrays[f] = arrays[f].astype(str)
    return Points(hw, op_class, **arrays)


# --- GEMM -----------------------------------------------------------------------------------------

# GEMM kernels of Vidur's stack (2024) where they differ from those the hardware profile documents (vLLM's):
# H100: 128-token tiles launched in clusters of two along the tokens (cuBLAS's sm90 kernels with
# ``cgasize1x2x1``; a cluster grid is a whole number of clusters), so the tokens run 256 at a time: Vidur's H100
# timings step at every second 128-row tile (benchmarks/calibration_variants.py, variant 1). No device's timings
# on that stack run in whole waves (A100's step at every 64-row tile instead).
VIDUR_GEMM_ROW_TILE = {"h100-sxm-80gb": 256}


def gemm_kernel_tiles(hw: HardwareProfile, source: str) -> tuple[int, int, int]:
    """(row tile, wave tile rows, wave tile weight columns) of ``source``'s stack on ``hw``; 0: none."""
    if source == "vidur":
        return VIDUR_GEMM_ROW_TILE.get(hw.name, hw.gemm_row_tile or 0), 0, 0
    wave = hw.gemm_wave_tile
    return hw.gemm_row_tile or 0, wave.rows if wave else 0, wave.cols if wave else 0


def _gemm_frame(hw: HardwareProfile, source: str, m, n, k, latency_s, ref="", dtype: str = "bf16") -> pd.DataFrame:
    """GEMM points priced as ``ops.gemm_time`` is by the step model: ``dtype`` picks the peak and the weight
    bytes (fp8: W8A8, one byte per weight); activations in and out are 16-bit in every scheme."""
    m, n, k = (np.asarray(x, dtype=float) for x in (m, n, k))
    weight_bytes = 1.0 if dtype == "fp8" else ACT_BYTES
    fp8 = dtype == "fp8"                       # vLLM's CUTLASS FP8 linear: its own tiles (ops.fp8_linear_time)
    outside = np.where((n < MIN_GEMM_DIM) | (k < MIN_GEMM_DIM), f"n or k < {MIN_GEMM_DIM}", "")
    row_tile, wave_rows, wave_cols = (0, 0, 0) if fp8 else gemm_kernel_tiles(hw, source)
    return _frame({
        "source": source, "key": _keys(m, n, k), "ref": ref, "outside": outside,
        "flops": ops.gemm_flops(m, n, k), "bytes": ops.gemm_bytes(m, n, k, weight_bytes, ACT_BYTES),
        "peak_flops_s": hw.peak_flops_s(dtype), "bandwidth_bytes_s": hw.weight_bandwidth_bytes_s,
        "units": k, "rows": m, "tile_rows": float(row_tile), "wave_rows": float(wave_rows),
        "wave_cols": float(wave_cols), "sms": float(hw.sm_count or 0) if (wave_rows or fp8) else 0.0,
        "latency_s": np.asarray(latency_s, dtype=float)})


def vidur_layer_rows(ds: Dataset, hw: str) -> pd.DataFrame:
    """Vidur per-layer operator timings joined with each model's shape, with the op's (m, n, k) or elements."""
    ops_t = ds.tables["vidur_layer_ops"]
    rows = ops_t[(ops_t.hardware == hw) & ops_t.op.isin(list(VIDUR_LAYER_OPS))]
    rows = rows.merge(ds.tables["vidur_models"], on="model", how="left")
    tp = rows.tp.to_numpy(float)
    hd = rows.n_embd.to_numpy(float) / rows.n_head.to_numpy(float)
    heads, kv_heads = rows.n_head / tp, np.maximum(1.0, rows.n_kv_head / tp)
    ffn = rows.n_expanded_embd / tp
    T, H = rows.num_tokens.to_numpy(float), rows.n_embd.to_numpy(float)
    gated = rows.use_gated_mlp.to_numpy(bool)
    op = rows.op.to_numpy()
    n, k, width, fpe, bpe, blocks, reductions = (np.full(len(rows), np.nan) for _ in range(7))
    # GEMM (n, k) of sarathi's column/row-parallel linears (vidur/profiling/mlp/mlp_impl.py)
    gemms = {"attn_pre_proj": ((rows.n_head + 2 * rows.n_kv_head) * hd / tp, H),
             "attn_post_proj": (H, rows.n_head * hd / tp),
             "mlp_up_proj": (np.where(gated, 2.0, 1.0) * ffn, H),
             "mlp_down_proj": (H, ffn)}
    # streaming ops: elements per token and the ops.StreamingKernel RooflineStep uses. Sarathi (which Vidur
    # profiles) runs vLLM-style per-token kernels for RMSNorm, rotary and SiLU-and-mul; a plain FFN's GELU
    # is PyTorch's flat-grid kernel.
    gelu = ops.activation_kernel(2, per_token_blocks=False)
    act = {f: np.where(gated, getattr(ops.activation_kernel(3), f), getattr(gelu, f))
           for f in ("flops_per_element", "reads", "writes", "per_token_blocks")}
    act = ops.StreamingKernel(act["flops_per_element"], act["reads"], act["writes"], act["per_token_blocks"])
    streaming = {"input_layernorm": (H, ops.RMS_NORM), "post_attention_layernorm": (H, ops.RMS_NORM),
                 "attn_rope": ((heads + kv_heads) * hd, ops.ROTARY), "mlp_act": (ffn, act),
                 "add": (H, ops.RESIDUAL_ADD)}
    for name, cols in gemms.items():
        mask = op == name
        for target, value in zip((n, k), cols):
            target[mask] = np.broadcast_to(np.asarray(value, dtype=float), mask.shape)[mask]
    for name, (w, kern) in streaming.items():
        mask = op == name
        cols = (w, kern.flops_per_element, kern.bytes_per_element(ACT_BYTES), kern.per_token_blocks, kern.reduction)
        for target, value in zip((width, fpe, bpe, blocks, reductions), cols):
            target[mask] = np.broadcast_to(np.asarray(value, dtype=float), mask.shape)[mask]
    # A model without a post-attention norm (phi-2's parallel block) adds attention output, FFN output and
    # residual in one `add` op: two residual-add kernels.
    parallel = ~rows.model.isin(set(rows.model[op == "post_attention_layernorm"])).to_numpy()
    launches = np.where(parallel & (op == "add"), 2.0, 1.0)
    elems = T * width * launches
    out = rows.assign(m=T, n=n, k=k, elements=elems, flops_per_element=fpe, bytes_per_element=bpe, width=width,
                      per_token_blocks=blocks, reductions=reductions, launches=launches)
    out["ref"] = out.model + "|" + out.tp.astype(str) + "|" + out.num_tokens.astype(str) + "|" + out.op
    return out.reset_index(drop=True)


def gemm_points(ds: Dataset, hw: HardwareProfile, op_class: str = "gemm") -> Points:
    """bf16 GEMMs (aiconfigurator's vLLM tables and Vidur's layers) or, for ``gemm_fp8``, vLLM's per-tensor
    FP8 linear layers (aiconfigurator, H100)."""
    dtype, frames = GEMM_CLASSES[op_class], []
    a = ds.tables["aic_gemm"]
    a = a[(a.hardware == hw.name) & (a.dtype == dtype)]
    if len(a):
        frames.append(_gemm_frame(hw, "aiconfigurator", a.m, a.n, a.k, a.latency_s, dtype=dtype))
    if dtype == "bf16":
        v = vidur_layer_rows(ds, hw.name)
        v = v[v.op.map(VIDUR_LAYER_OPS) == "gemm"]
        frames.append(_gemm_frame(hw, "vidur", v.m, v.n, v.k, v.latency_s, v.ref.to_numpy()))
    return _points(hw.name, op_class, frames)


# --- streaming (elementwise) ops -------------------------------------------------------------------

def elementwise_points(ds: Dataset, hw: HardwareProfile) -> Points:
    v = vidur_layer_rows(ds, hw.name)
    v = v[v.op.map(VIDUR_LAYER_OPS) == "elementwise"]
    key = v.op + ":" + v.num_tokens.astype(str) + "x" + v.width.round(3).astype(str)
    frame = _frame({
        "source": "vidur", "key": key.to_numpy(), "ref": v.ref.to_numpy(),
        "outside": np.where(v.use_gated_mlp.to_numpy(bool), "", PLAIN_FFN_MODELS),
        "sms": float(hw.sm_count or 0), "l2_bytes": (hw.l2_cache_mb or 0.0) * 1e6,
        "flops": v.elements.to_numpy() * v.flops_per_element.to_numpy(),
        "bytes": v.elements.to_numpy() * v.bytes_per_element.to_numpy(),
        "units": v.num_tokens.to_numpy(float), "per_token_blocks": v.per_token_blocks.to_numpy(),
        "reductions": v.reductions.to_numpy(), "launches": v.launches.to_numpy(),
        "peak_flops_s": hw.peak_flops_s("bf16"), "bandwidth_bytes_s": hw.weight_bandwidth_bytes_s,
        "latency_s": v.latency_s.to_numpy()})
    return _points(hw.name, "elementwise", [frame])


# --- attention ------------------------------------------------------------------------------------

def _attention_frame(hw: HardwareProfile, op_class: str, source: str, seqs, q, c, heads, kv_heads, head_dim,
                     latency_s, ref="") -> pd.DataFrame:
    """``seqs`` sequences, each with ``q`` new tokens on ``c`` cached ones (uniform batch)."""
    seqs, q, c, heads, kv_heads, head_dim = (np.asarray(x, dtype=float) for x in (seqs, q, c, heads, kv_heads, head_dim))
    tokens = seqs * q
    if op_class == "attention_prefill":
        flops = ops.prefill_attention_flops(heads, head_dim, seqs * q * c, seqs * q * q, tokens)
        bytes_ = ops.attention_bytes(heads, kv_heads, head_dim, tokens, seqs * (c + q), ACT_BYTES, ACT_BYTES)
        units = seqs * heads        # prefill kernels split by sequence and query head
        blocks = ops.prefill_blocks(heads, seqs, tokens)
    else:  # decode: q == 1; step.py passes the cached tokens as the KV read
        flops = ops.decode_attention_flops(heads, head_dim, seqs * (c + 1))
        bytes_ = ops.attention_bytes(heads, kv_heads, head_dim, seqs, seqs * c, ACT_BYTES, ACT_BYTES)
        units = seqs * kv_heads     # decode kernels pack a KV head's query heads into one unit
        blocks = 0.0                # no prefill-style occupancy term (see ops.decode_attention_time)
        relayout = ((heads > kv_heads) & (seqs > 1) & (kv_heads > 1)).astype(float)
        relayout_bytes = relayout * 4.0 * seqs * heads * head_dim * ACT_BYTES
        walk_bytes, splitkv, combine_bytes = np.zeros(len(seqs)), np.zeros(len(seqs)), np.zeros(len(seqs))
        if hw.sm_count:
            for i, (s, h, kv, d, k) in enumerate(zip(seqs, heads, kv_heads, head_dim, seqs * (c + 1))):
                blocks, tiles, splits = ops.decode_launch(s, h, kv, k, d, hw.sm_count)
                walk_bytes[i] = (tiles - 1) * 2.0 * ops.kv_tile(d) * d * ACT_BYTES * math.ceil(blocks / (2 * hw.sm_count))
                splitkv[i] = float(splits > 1)
                combine_bytes[i] = splitkv[i] * splits * ops.combine_rows(d) * d * 4.0
    outside = np.where(head_dim != HEAD_DIM, f"head_dim != {HEAD_DIM}", "")
    return _frame({
        "source": source, "key": _keys(seqs, q, c, heads, kv_heads, head_dim), "ref": ref, "outside": outside,
        "flops": flops, "bytes": bytes_, "units": units, "blocks": blocks,
        **({"walk_bytes": walk_bytes, "relayout": relayout, "relayout_bytes": relayout_bytes, "splitkv": splitkv,
            "combine_bytes": combine_bytes}
           if op_class == "attention_decode" else {}),
        "peak_flops_s": hw.peak_flops_s("bf16"), "bandwidth_bytes_s": hw.weight_bandwidth_bytes_s,
        "latency_s": np.asarray(latency_s, dtype=float)})


def vidur_attention_rows(ds: Dataset, hw: str) -> pd.DataFrame:
    a = ds.tables["vidur_attention"]
    a = a[a.hardware == hw].merge(ds.tables["vidur_models"], on="model", how="left").reset_index(drop=True)
    prefill = a.is_prefill.astype(bool)
    a["q"] = np.where(prefill, a.prefill_chunk_size, 1)
    a["seqs"] = a.batch_size
    a["tokens"] = a.seqs * a.q
    a["kind"] = np.where(prefill, "prefill", "decode")
    a["ref"] = "attn|" + a.model + "|" + a.tp.astype(str) + "|" + a.kind + "|" + a.seqs.astype(str) + "|" + a.q.astype(str) + "|" + a.kv_cache_size.astype(str)
    return a


def attention_points(ds: Dataset, hw: HardwareProfile, op_class: str) -> Points:
    kind = "prefill" if op_class == "attention_prefill" else "decode"
    frames = []
    t = ds.tables[f"aic_attention_{kind}"]
    t = t[t.hardware == hw.name]
    if kind == "prefill":
        t = t[t.seq_len >= MIN_PREFILL_LEN]
        frames.append(_attention_frame(hw, op_class, "aiconfigurator", t.batch_size, t.seq_len, 0 * t.seq_len,
                                       t.num_heads, t.num_kv_heads, t.head_dim, t.latency_s))
    else:  # `seq_len` counts the cached tokens plus the new one
        frames.append(_attention_frame(hw, op_class, "aiconfigurator", t.batch_size, 1 + 0 * t.seq_len, t.seq_len - 1,
                                       t.num_heads, t.num_kv_heads, t.head_dim, t.latency_s))
    v = vidur_attention_rows(ds, hw.name)
    v = v[v.kind == kind]
    if len(v):
        frames.append(_attention_frame(hw, op_class, "vidur", v.seqs, v.q, v.kv_cache_size, v.n_head / v.tp,
                                       np.maximum(1.0, v.n_kv_head / v.tp), v.n_embd / v.n_head, v.latency_s, v.ref.to_numpy()))
    return _points(hw.name, op_class, frames)


# --- collectives ----------------------------------------------------------------------------------

def allreduce_points(ds: Dataset, hw: HardwareProfile) -> Points:
    link = hw.interconnect.intra_node
    frames = []
    a = ds.tables["aic_allreduce"]
    a = a[(a.hardware == hw.name) & a.implementation.isin(AIC_ALLREDUCE)]
    v = ds.tables["vidur_network"]
    v = v[(v.hardware == hw.name) & (v.collective == "all_reduce") & (v.devices_per_node == v.num_workers)]
    for source, p, msg, lat in (("aiconfigurator", a.num_gpus, a.message_bytes, a.latency_s),
                                ("vidur", v.num_workers, v.message_bytes, v.latency_s)):
        p, msg = p.to_numpy(float), msg.to_numpy(float)
        frames.append(_frame({
            "source": source, "key": np.char.add(np.char.add(msg.astype(np.int64).astype(str), "B/"), p.astype(np.int64).astype(str)),
            "flops": 0.0, "bytes": msg, "units": p,    # ops.allreduce_s: message bytes, devices, link latency
            "peak_flops_s": 1.0, "bandwidth_bytes_s": link.bandwidth_gb_s * 1e9,
            "hop_s": link.latency_us * 1e-6, "latency_s": lat.to_numpy(float),
            "switch": float(hw.interconnect.switch_reduction)}))
    return _points(hw.name, "allreduce", frames)


def send_recv_points(ds: Dataset, hw: HardwareProfile) -> Points:
    v = ds.tables["vidur_network"]
    v = v[(v.hardware == hw.name) & (v.collective == "send_recv") & (v.num_workers == 2)]
    intra = (v.devices_per_node == 2).to_numpy()
    # The profiles' inter-node links are assumptions (one NIC per GPU); the measured pairs crossed
    # whatever network Vidur's nodes had, so only the intra-node pairs are fitted.
    outside = np.where(intra, "", "inter-node pair")
    ic = hw.interconnect
    bw = np.where(intra, ic.intra_node.bandwidth_gb_s, ic.inter_node.bandwidth_gb_s) * 1e9
    lat = np.where(intra, ic.intra_node.latency_us, ic.inter_node.latency_us) * 1e-6
    msg = v.message_bytes.to_numpy(float)
    key = np.char.add(msg.astype(np.int64).astype(str), np.where(intra, "B/intra", "B/inter"))
    frame = _frame({"source": "vidur", "key": key, "flops": 0.0, "bytes": msg, "outside": outside,
                                          "peak_flops_s": 1.0, "bandwidth_bytes_s": bw, "hop_s": lat,
                                          "latency_s": v.latency_s.to_numpy(float)})
    return _points(hw.name, "send_recv", [frame])


# --- MoE ------------------------------------------------------------------------------------------

def moe_points(ds: Dataset, hw: HardwareProfile) -> Points:
    """aiconfigurator's fused MoE timings: one device of ``moe_tp`` (every expert at 1/moe_tp of its width)
    or of ``moe_ep`` (``num_experts / moe_ep`` whole experts) running ``num_tokens`` tokens, priced by the
    same :func:`~simserve.cost.ops.moe_work` as ``RooflineStep`` (gated FFN, bf16, no imbalance)."""
    t = ds.tables["aic_moe"]
    t = t[t.hardware == hw.name]
    cols = [t[c].to_numpy(float) for c in ("num_tokens", "hidden_size", "inter_size", "topk", "num_experts", "moe_tp", "moe_ep")]
    work = [ops.moe_work(T, int(k), int(E), int(ep), 1.0, h, inter / tp, 3, ACT_BYTES, ACT_BYTES)
            for T, h, inter, k, E, tp, ep in zip(*cols)]
    # A model whose balanced-routing timings beat reading its touched experts' weights at the HBM peak cannot be
    # running the kernel the model describes (balanced routing touches every expert once tokens x top_k >=
    # experts): every timing of that model (hidden, width, top-k, experts) is left out of the fit. A skewed
    # router touches fewer experts than uniform routing would, so the test applies to balanced routing only.
    hbm_s = np.array([w.weight_bytes for w in work]) / hw.weight_bandwidth_bytes_s
    dist = t.distribution.to_numpy().astype(str)
    basis = next((r for r in MOE_ROUTING if (dist == r).any()), "")
    fitted = dist == basis
    model = _keys(*cols[1:5])
    impossible = np.isin(model, model[fitted & (t.latency_s.to_numpy() < hbm_s)]) & (basis == "balanced")
    outside = np.where(~fitted, np.char.add("routing ", dist),
                       np.where(impossible, "faster than its experts' weights at the HBM peak", ""))
    frame = _frame({
        "source": "aiconfigurator", "key": _keys(*cols), "outside": outside,
        "flops": np.array([w.tile_flops for w in work]), "bytes": np.array([w.gemm_bytes for w in work]),
        "stream_bytes": np.array([w.stream_bytes for w in work]), "units": np.array([w.pairs for w in work]),
        "peak_flops_s": hw.peak_flops_s("bf16"), "bandwidth_bytes_s": hw.weight_bandwidth_bytes_s,
        "latency_s": t.latency_s.to_numpy(float)})
    return _points(hw.name, "moe", [frame])


def points_for(ds: Dataset, hw: HardwareProfile, op_class: str) -> Points:
    """All measured points of one hardware and operator class (possibly none)."""
    if op_class in GEMM_CLASSES:
        return gemm_points(ds, hw, op_class)
    if op_class == "elementwise":
        return elementwise_points(ds, hw)
    if op_class in ("attention_prefill", "attention_decode"):
        return attention_points(ds, hw, op_class)
    if op_class == "allreduce":
        return allreduce_points(ds, hw)
    if op_class == "send_recv":
        return send_recv_points(ds, hw)
    if op_class == "moe":
        return moe_points(ds, hw)
    raise ValueError(f"unknown operator class {op_class}")
