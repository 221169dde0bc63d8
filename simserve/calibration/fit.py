"""Fitting :class:`~simserve.hardware.OpEfficiency` parameters to measured kernel timings.

The loss is the mean absolute log ratio ``|log(predicted / measured)|`` (a relative error that treats a 2x
over- and under-prediction alike), with every data source of a fit weighted equally so a large table does
not drown a small one. The optimizer is a deterministic Nelder-Mead written with numpy: started from the
best point of a coarse grid, run twice on an evenly strided subset of at most ``SUBSET_POINTS`` points,
then polished on all of them. Parameters are optimised in unconstrained coordinates (logistic for
fractions, log for positive values), so every result is inside its valid range.

Held-out error is by shape: the distinct shape keys of a point set are shuffled with a fixed seed and dealt
into ``K`` folds; each fold is predicted by parameters fitted on the other ``K - 1`` folds only.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from types import SimpleNamespace
from typing import Callable

import numpy as np

from ..cost import ops
from .dataset import Points

K_FOLDS = 5
SEED = 0
SUBSET_POINTS = 3000   # points of the first, coarse fitting stage

# name -> (to internal coordinate, from internal coordinate, starting value)
_TRANSFORMS: dict[str, tuple[Callable, Callable, float]] = {
    "flops_fraction": (lambda v: math.log(v / (1 - v)), lambda x: 1.0 / (1.0 + math.exp(-x)), 0.7),
    "bandwidth_fraction": (lambda v: math.log(v / (1 - v)), lambda x: 1.0 / (1.0 + math.exp(-x)), 0.8),
    "overhead_us": (math.log, math.exp, 5.0),
    "overlap_exponent": (lambda v: math.log(v - 1.0), lambda x: 1.0 + math.exp(x), 2.0),
    "unit_overhead_ns": (math.log, math.exp, 10.0),
    "hop_latency_scale": (math.log, math.exp, 1.0),
    "row_bandwidth_gb_s": (math.log, math.exp, 10.0),
    "concurrent_blocks": (math.log, math.exp, 100.0),
    "reduction_overhead_us": (math.log, math.exp, 1.0),
    "switch_bandwidth_fraction": (lambda v: math.log(v / (1 - v)), lambda x: 1.0 / (1.0 + math.exp(-x)), 0.6),
    "relayout_overhead_us": (math.log, math.exp, 3.0),
    "l2_speedup": (lambda v: math.log(v - 1.0), lambda x: 1.0 + math.exp(x), 1.5),
    "splitk_latency_ns": (math.log, math.exp, 20.0),
}
# Defaults that reduce every shape term to the plain roofline (as in OpEfficiency).
PLAIN = {"flops_fraction": 1.0, "bandwidth_fraction": 1.0, "overhead_us": 0.0, "overlap_exponent": None,
         "unit_overhead_ns": 0.0, "hop_latency_scale": 1.0, "row_bandwidth_gb_s": None, "concurrent_blocks": None,
         "reduction_overhead_us": 0.0, "switch_bandwidth_fraction": None, "relayout_overhead_us": 0.0,
         "l2_speedup": 1.0, "splitk_latency_ns": 0.0, "row_tile": None, "wave_tile": None}

# Free parameters per operator class; the rest stay at PLAIN unless fixed here.
FREE = {
    "gemm": ("flops_fraction", "bandwidth_fraction", "overhead_us", "overlap_exponent", "splitk_latency_ns"),
    "gemm_fp8": ("flops_fraction", "bandwidth_fraction", "overhead_us", "overlap_exponent", "row_bandwidth_gb_s"),
    "attention_prefill": ("flops_fraction", "bandwidth_fraction", "overhead_us", "unit_overhead_ns", "concurrent_blocks"),
    "attention_decode": ("bandwidth_fraction", "overhead_us", "unit_overhead_ns", "row_bandwidth_gb_s", "relayout_overhead_us"),
    "elementwise": ("bandwidth_fraction", "overhead_us", "row_bandwidth_gb_s", "reduction_overhead_us", "l2_speedup"),
    "allreduce": ("bandwidth_fraction", "overhead_us", "hop_latency_scale", "switch_bandwidth_fraction"),
    "send_recv": ("bandwidth_fraction", "overhead_us"),
    "moe": ("flops_fraction", "bandwidth_fraction", "overhead_us", "overlap_exponent", "unit_overhead_ns"),
}
# Streaming kernels are memory-bound, so their FLOP rate cannot be identified from timings; 1/16 of the
# dense tensor peak is about the CUDA-core FP32 rate of A100/H100, and never binds for these kernels.
# Per-token streaming rows run one per SM at a time (``concurrent_blocks`` is the device's SM count, fixed in
# fit_points; free fits gave 115 on A100's 108 SMs and 142 on H100's 132), and no L2 (``l2_cache_mb``) means no
# L2 speedup to fit. Collectives move bytes only. Prefill attention's compute and memory time add up (free fits gave an
# overlap exponent of 1.00 on A100 and 1.05 on H100), so the sum is fixed and the fifth parameter is occupancy.
# Decode attention likewise adds compute (at the tensor peak: free fits gave overlap 1.01 and an unidentified
# FLOP fraction) to memory time; its last two parameters are the launch-grid terms of ops.decode_attention_time
# (the KV-tile walk's per-block rate, and the cost of the regrouping copies and of the split-KV combine kernel).
# GEMMs compute whole tiles of 64 activation rows (ops.gemm_rows; smaller power-of-two tiles below 64 rows): a
# kernel fact, not fitted. A device whose profile documents another tile (``gemm_row_tile``: H100's Hopper kernels
# run 128-row tiles, see its profile's sources) uses that one instead (fit_points). Where a stack runs large GEMM grids in whole
# waves (A100 on vLLM's: profile ``gemm_wave_tile``) the points carry the tile and the fit fixes it with the SM
# count as ``concurrent_blocks``; Vidur's stack has its own row tiles (dataset.VIDUR_GEMM_ROW_TILE). MoE's expert rows are padded
# to vLLM's default blocks inside ops.moe_work (the points' FLOPs), and its streaming bytes ride on the
# bandwidth fraction (predict_s), so it fixes nothing.
# FP8 linear layers (ops.fp8_linear_time) run vLLM's CUTLASS tiles, one per SM at a time (``concurrent_blocks``, the
# SM count, fixed in fit_points); their fifth parameter is the per-block rate of the input's quantization rows.
FIXED = {
    "gemm": {"row_tile": 64},
    "attention_prefill": {"overlap_exponent": 1.0},
    "attention_decode": {"flops_fraction": 1.0, "overlap_exponent": 1.0},
    "elementwise": {"flops_fraction": 0.0625},
    "allreduce": {"flops_fraction": 1.0},
    "send_recv": {"flops_fraction": 1.0},
}


def free_params(p: Points) -> tuple[str, ...]:
    """The fitted parameters of a point set: its class's ``FREE`` names, less the switch's all-reduce
    bandwidth when no measured link reduces in the switch, decode's per-block rate when no measured kernel
    walks more than one KV tile per block or splits its context, and its relayout cost when none regroups
    its queries or splits its context (they would change nothing)."""
    names = FREE[p.op_class]
    if not p.switch.any():
        names = tuple(n for n in names if n != "switch_bandwidth_fraction")
    if p.op_class == "elementwise" and not p.l2_bytes.any():
        names = tuple(n for n in names if n != "l2_speedup")
    if p.op_class == "attention_decode":
        if not (p.walk_bytes.any() or p.combine_bytes.any()):
            names = tuple(n for n in names if n != "row_bandwidth_gb_s")
        if not (p.relayout.any() or p.splitkv.any()):
            names = tuple(n for n in names if n != "relayout_overhead_us")
    return names


def predict_s(p: Points, params: dict) -> np.ndarray:
    """Vectorised twin of the :mod:`simserve.cost.ops` functions for these points (seconds).

    Computed in log space (``max(c, m) * (1 + (min/max)^p)^(1/p)`` as ``exp(log max + log1p(...)/p)``),
    which is faster and equal to the scalar formulas to rounding. All-reduce and streaming points
    call :func:`~simserve.cost.ops.allreduce_s` and :func:`~simserve.cost.ops.streaming_s` themselves."""
    if p.op_class == "allreduce":
        return ops.allreduce_s(p.bytes, p.units, p.bandwidth_bytes_s, p.hop_s, SimpleNamespace(**params),
                               switch_reduction=p.switch > 0)
    if p.op_class == "elementwise":
        return ops.streaming_s(p.units, p.flops, p.bytes, p.per_token_blocks > 0, p.reductions, p.launches,
                               p.peak_flops_s, p.bandwidth_bytes_s, SimpleNamespace(**params), p.l2_bytes)
    quant_s = 0.0
    if p.op_class == "gemm_fp8":             # ops.fp8_linear_time: whole waves of CUTLASS tiles after the quantization
        n = p.flops / (2.0 * p.rows * p.units)                          # GEMM points: rows = m, units = k
        eff = SimpleNamespace(**params)
        quant_s = ops.fp8_quant_s(p.rows, p.units, p.bandwidth_bytes_s, eff)
        p = dataclasses.replace(p, flops=ops.fp8_wave_flops(p.rows, n, p.units, params["concurrent_blocks"]))
    with np.errstate(divide="ignore"):
        log_c = np.log(p.flops / p.peak_flops_s) - math.log(params["flops_fraction"])
        if p.op_class == "gemm" and params.get("row_tile") is not None:   # ops.gemm_time: whole row tiles
            log_c = log_c + np.log(ops.gemm_rows(p.rows, params["row_tile"]) / p.rows)
        if p.op_class == "gemm" and params.get("wave_tile") is not None:   # ops.gemm_time: whole waves
            tile = params["wave_tile"]
            n = p.flops / (2.0 * p.rows * p.units)                         # GEMM points: rows = m, units = k
            log_c = log_c - np.log(ops.gemm_wave_fill(p.rows, n, tile["rows"], tile["cols"], params["concurrent_blocks"]))
        elif p.op_class == "attention_prefill" and params.get("concurrent_blocks") is not None:
            log_c = log_c - np.log(ops.occupancy(p.blocks, SimpleNamespace(**params)))
        log_m = np.log(p.bytes / p.bandwidth_bytes_s) - math.log(params["bandwidth_fraction"])
    log_hi = np.maximum(log_c, log_m)
    q = params.get("overlap_exponent")
    if q is not None:
        with np.errstate(invalid="ignore"):
            gap = np.where(np.isfinite(log_hi), -np.abs(log_c - log_m), -np.inf)
        log_hi = log_hi + np.log1p(np.exp(q * gap)) / q
    fixed_s = params["overhead_us"] * 1e-6 + params.get("hop_latency_scale", 1.0) * p.hop_s + quant_s
    if p.op_class == "moe":                  # ops.moe_time: the streaming kernels after the grouped GEMMs
        fixed_s = fixed_s + p.stream_bytes / (p.bandwidth_bytes_s * params["bandwidth_fraction"])
    if params.get("splitk_latency_ns", 0.0):   # ops.gemm_time; GEMM points carry k in ``units``
        fixed_s = fixed_s + np.sqrt(p.units) * params["splitk_latency_ns"] * 1e-9
    if p.op_class == "attention_decode":     # ops.decode_attention_time
        over_s = params["overhead_us"] * 1e-6
        out = over_s + np.maximum(np.exp(log_hi), p.units * (params.get("unit_overhead_ns", 0.0) * 1e-9))
        if params.get("row_bandwidth_gb_s") is not None:
            out = np.maximum(out, over_s + p.walk_bytes / (params["row_bandwidth_gb_s"] * 1e9))
            out = out + p.combine_bytes / (params["row_bandwidth_gb_s"] * 1e9)
        extra_s = params.get("relayout_overhead_us", 0.0) * 1e-6
        copies_s = p.relayout_bytes / (p.bandwidth_bytes_s * params["bandwidth_fraction"])
        copies_s = copies_s if extra_s > 0 else 0.0     # no copies without their fixed cost
        return out + p.relayout * (extra_s + copies_s) + p.splitkv * extra_s
    if params.get("unit_overhead_ns", 0.0):
        fixed_s = fixed_s + p.units * params["unit_overhead_ns"] * 1e-9
    return fixed_s + np.exp(log_hi)


def source_weights(p: Points) -> np.ndarray:
    """Each source carries the same total weight; the weights sum to one."""
    w = np.zeros(len(p))
    sources = np.unique(p.source)
    for s in sources:
        mask = p.source == s
        w[mask] = 1.0 / (mask.sum() * len(sources))
    return w


def _nelder_mead(f: Callable[[np.ndarray], float], x0: np.ndarray, step: float, max_evals: int,
                 xtol: float = 1e-5, ftol: float = 1e-9) -> tuple[np.ndarray, float]:
    """Adaptive Nelder-Mead (Gao & Han 2012 coefficients). Deterministic: no randomness anywhere."""
    n = len(x0)
    alpha, gamma, rho, sigma = 1.0, 1.0 + 2.0 / n, 0.75 - 1.0 / (2 * n), 1.0 - 1.0 / n
    pts = np.vstack([x0] + [x0 + step * e for e in np.eye(n)])
    vals = np.array([f(x) for x in pts])
    evals = n + 1
    while evals < max_evals:
        order = np.argsort(vals, kind="stable")
        pts, vals = pts[order], vals[order]
        if np.max(np.abs(pts[1:] - pts[0])) <= xtol and vals[-1] - vals[0] <= ftol:
            break
        centroid = pts[:-1].mean(axis=0)
        xr = centroid + alpha * (centroid - pts[-1])
        fr = f(xr)
        evals += 1
        if fr < vals[0]:
            xe = centroid + gamma * (xr - centroid)
            fe = f(xe)
            evals += 1
            pts[-1], vals[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < vals[-2]:
            pts[-1], vals[-1] = xr, fr
        else:
            outside = fr < vals[-1]
            xc = centroid + rho * ((xr if outside else pts[-1]) - centroid)
            fc = f(xc)
            evals += 1
            if fc < (fr if outside else vals[-1]):
                pts[-1], vals[-1] = xc, fc
            else:
                pts[1:] = pts[0] + sigma * (pts[1:] - pts[0])
                vals[1:] = [f(x) for x in pts[1:]]
                evals += n
    best = int(np.argmin(vals))
    return pts[best], float(vals[best])


def _decode(names: tuple[str, ...], x: np.ndarray, fixed: dict) -> dict:
    params = dict(PLAIN)
    params.update(fixed)
    for name, v in zip(names, x):
        params[name] = _TRANSFORMS[name][1](float(v))
    return params


def _loss(p: Points, names: tuple[str, ...], fixed: dict) -> Callable[[np.ndarray], float]:
    log_y, w = np.log(p.latency_s), source_weights(p)

    def loss(x: np.ndarray) -> float:
        r = np.log(predict_s(p, _decode(names, x, fixed)))
        r -= log_y
        np.abs(r, out=r)
        r *= w
        return float(np.add.reduce(r))     # not np.dot: a BLAS call costs more than it saves here
    return loss


def fit_points(p: Points) -> dict:
    """Fitted OpEfficiency fields for one point set. Uses only ``p``: nothing else influences the result.

    Large sets are first fitted on an evenly strided subset (fast), then polished on all points."""
    names, fixed = free_params(p), FIXED.get(p.op_class, {})
    if p.op_class == "gemm" and p.tile_rows.any():
        fixed = {**fixed, "row_tile": int(p.tile_rows.max())}
    if p.op_class == "gemm" and p.wave_rows.any():
        fixed = {**fixed, "wave_tile": {"rows": int(p.wave_rows.max()), "cols": int(p.wave_cols.max())},
                 "concurrent_blocks": float(p.sms.max())}
    if p.op_class in ("elementwise", "gemm_fp8") and p.sms.any():
        fixed = {**fixed, "concurrent_blocks": float(p.sms.max())}
    stride = -(-len(p) // SUBSET_POINTS)
    coarse = _loss(p.take(np.arange(0, len(p), stride)), names, fixed)
    # coarse grid over the roofline's own three numbers, shape terms at their starting values
    grid = {"flops_fraction": (0.3, 0.6, 0.9), "bandwidth_fraction": (0.3, 0.6, 0.9), "overhead_us": (1.0, 4.0, 16.0)}
    axes = [grid.get(n, (_TRANSFORMS[n][2],)) for n in names]
    starts = [np.array([_TRANSFORMS[n][0](v) for n, v in zip(names, combo)]) for combo in itertools.product(*axes)]
    x = min(starts, key=coarse)
    for step in (1.0, 0.2):
        x, _ = _nelder_mead(coarse, x, step, max_evals=120 * len(names))
    if stride > 1:
        x, _ = _nelder_mead(_loss(p, names, fixed), x, 0.05, max_evals=40 * len(names))
    return _decode(names, x, fixed)


def aggregate(p: Points) -> tuple[Points, np.ndarray]:
    """One point per (source, shape key) with the median of its repeated measurements, and the index of
    each original row's point. A shape measured for several models is one piece of evidence, not several."""
    tag = np.char.add(np.char.add(p.source, "|"), p.key)
    distinct, first, inverse = np.unique(tag, return_index=True, return_inverse=True)
    agg = p.take(first)
    if len(distinct) == len(p):
        return agg, inverse
    values = p.latency_s[np.lexsort((p.latency_s, inverse))]   # grouped, ascending within a group
    counts = np.bincount(inverse)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    medians = 0.5 * (values[starts + (counts - 1) // 2] + values[starts + counts // 2])
    return agg.with_latency(medians), inverse


def fold_ids(keys: np.ndarray, k: int = K_FOLDS, seed: int = SEED) -> np.ndarray:
    """Fold of every point: its shape key's position in a seeded shuffle of the sorted distinct keys, mod k."""
    distinct, inverse = np.unique(keys, return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(distinct))
    fold_of_key = np.empty(len(distinct), dtype=int)
    fold_of_key[order] = np.arange(len(distinct)) % k
    return fold_of_key[inverse]


def heldout_predictions(p: Points, k: int = K_FOLDS, seed: int = SEED) -> tuple[np.ndarray, list[dict]]:
    """Out-of-fold predictions for every point and the parameters fitted for each fold."""
    folds = fold_ids(p.key, k, seed)
    pred = np.empty(len(p))
    fold_params = []
    for f in range(k):
        test = folds == f
        params = fit_points(p.take(~test))
        fold_params.append(params)
        pred[test] = predict_s(p.take(test), params)
    return pred, fold_params


def abs_pct_err(pred: np.ndarray, measured: np.ndarray) -> np.ndarray:
    return np.abs(pred / measured - 1.0) * 100.0
