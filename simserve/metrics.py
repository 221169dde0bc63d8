"""The metric contract (docs/metrics.md): one definition of every reported number.

Latencies follow vLLM ``bench serve``: TTFT is arrival -> first token; TPOT per request is
``(e2el - ttft) / (output_tokens - 1)``; ITL is pooled over every streamed chunk of every request;
E2EL is arrival -> last token. Throughputs divide by ``duration_s``, from t=0 (the first arrival) to
the end of the run. Only simulated quantities appear: a seed gives identical bytes.
"""
from __future__ import annotations

import math
from operator import attrgetter

import numpy as np
import pandas as pd

from .engine.request import COMPLETED, REJECTED, UNFINISHED
from .engine.sim import RunRecord
from .scenario import Resolved

PERCENTILES = (50, 90, 99)
REQUEST_COLUMNS = ["id", "replica", "outcome", "reason", "arrival_s", "first_token_s", "finish_s",
                   "prompt_tokens", "output_tokens", "generated_tokens", "num_preemptions", "num_requeues",
                   "ttft_ms", "tpot_ms", "e2el_ms"]


def requests_frame(rec: RunRecord) -> pd.DataFrame:
    """One row per request, in id order. Latencies are NaN where they do not apply."""
    rows = sorted(rec.requests, key=attrgetter("id"))
    n = len(rows)

    def column(name: str, dtype) -> np.ndarray:
        return np.fromiter(map(attrgetter(name), rows), dtype, n)
    arrival, first, finish = column("arrival_s", float), column("first_token_s", float), column("finish_s", float)
    # Request.total_generated and num_outputs, a column at a time
    n_seqs, out_tokens, own = column("n", np.int64), column("output_tokens", np.int64), column("num_generated", np.int64)
    gen = np.where(out_tokens == 1, n_seqs * own, own)
    for i in np.flatnonzero((n_seqs > 1) & (out_tokens != 1)):   # only a request of n > 1 sequences forks
        gen[i] += sum(c.num_generated for c in rows[i].children)
    outputs = np.where(column("beam", bool), 1, n_seqs)
    out = out_tokens * outputs   # returned sequences (vLLM bench)
    first = np.where(first >= 0, first, np.nan)
    finish = np.where(finish >= 0, finish, np.nan)
    ttft = (first - arrival) * 1e3
    e2el = (finish - arrival) * 1e3
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(out > 1, (e2el - ttft) / (out - 1), np.nan)
    return pd.DataFrame({
        "id": column("id", np.int64),
        "replica": column("replica", np.int64),
        "outcome": list(map(attrgetter("outcome"), rows)),
        "reason": list(map(attrgetter("reason"), rows)),
        "arrival_s": arrival, "first_token_s": first, "finish_s": finish,
        "prompt_tokens": column("prompt_tokens", np.int64),
        "output_tokens": out, "generated_tokens": gen,
        "num_preemptions": column("num_preemptions", np.int64),
        "num_requeues": column("num_requeues", np.int64),
        "ttft_ms": ttft, "tpot_ms": tpot, "e2el_ms": e2el,
    }, columns=REQUEST_COLUMNS)


def _f(x) -> float | None:
    """JSON-safe float: NaN/inf become null."""
    x = float(x)
    return x if math.isfinite(x) else None


def _stats(name: str, values: np.ndarray) -> dict:
    values = values[~np.isnan(values)] if len(values) else values
    out = {}
    if len(values) == 0:
        out[f"mean_{name}_ms"] = out[f"median_{name}_ms"] = out[f"std_{name}_ms"] = None
        for p in PERCENTILES[1:]:
            out[f"p{p}_{name}_ms"] = None
        return out
    out[f"mean_{name}_ms"] = _f(np.mean(values))
    out[f"median_{name}_ms"] = _f(np.median(values))
    out[f"std_{name}_ms"] = _f(np.std(values))
    for p in PERCENTILES[1:]:
        out[f"p{p}_{name}_ms"] = _f(np.percentile(values, p))
    return out


def weighted_percentile(values: np.ndarray, counts: np.ndarray, p: float) -> float:
    """``np.percentile`` (linear) of the array in which ``values[i]`` appears ``counts[i]`` times,
    without building that array."""
    order = np.argsort(values, kind="stable")
    return _sorted_percentile(values[order], np.cumsum(counts[order]), p)


def _sorted_percentile(v: np.ndarray, cum: np.ndarray, p: float) -> float:
    """:func:`weighted_percentile` of records sorted by value, ``cum`` the running sum of their counts."""
    rank = p / 100.0 * (cum[-1] - 1)
    lo = int(np.floor(rank))
    hi = min(lo + 1, int(cum[-1]) - 1)
    v_lo = v[np.searchsorted(cum, lo, side="right")]
    v_hi = v[np.searchsorted(cum, hi, side="right")]
    return float(v_lo + (v_hi - v_lo) * (rank - lo))


def sorted_records(values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (value, count) records in increasing order of value, then count (what ``np.lexsort((counts,
    values))`` orders them by), as two arrays. Sorted as complex numbers, which numpy orders by real part
    and then imaginary part: one sort instead of lexsort's two passes (less than half the time on a
    million-request run's records); values and counts (below 2**53) are held exactly."""
    z = np.empty(len(values), dtype=np.complex128)
    z.real, z.imag = values, counts
    z.sort()
    return z.real.copy(), z.imag.astype(np.int64)


def _weighted_stats(name: str, values: np.ndarray, counts: np.ndarray) -> dict:
    if counts.sum() == 0:
        return _stats(name, np.array([]))
    # records sorted by (value, count) first: the sums then depend only on the multiset of records, not
    # on the order in which replicas happened to report them
    values, counts = sorted_records(values, counts)
    total = counts.sum()
    mean = float(np.dot(values, counts) / total)
    cum = np.cumsum(counts)                   # sorted already: weighted_percentile without its sort
    out = {f"mean_{name}_ms": _f(mean), f"median_{name}_ms": _f(_sorted_percentile(values, cum, 50)),
           f"std_{name}_ms": _f(np.sqrt(np.dot(counts, (values - mean) ** 2) / total))}
    for p in PERCENTILES[1:]:
        out[f"p{p}_{name}_ms"] = _f(_sorted_percentile(values, cum, p))
    return out


def meets_slo(df: pd.DataFrame, slo) -> np.ndarray:
    """Boolean per row: completed and within every SLO bound that is set."""
    ok = (df["outcome"] == COMPLETED).to_numpy().copy()
    for key, col in (("ttft_ms", "ttft_ms"), ("tpot_ms", "tpot_ms"), ("e2el_ms", "e2el_ms")):
        bound = getattr(slo, key)
        if bound is not None:
            vals = df[col].to_numpy()
            # a single-token request has no TPOT: it cannot violate a TPOT bound
            ok &= np.where(np.isnan(vals), key == "tpot_ms", vals <= bound)
    return ok


def summarize(resolved: Resolved, rec: RunRecord, df: pd.DataFrame | None = None) -> dict:
    """The summary dict written to summary.json."""
    cfg, hw = resolved.config, resolved.hardware
    df = requests_frame(rec) if df is None else df
    done = df[df["outcome"] == COMPLETED]
    dur = rec.duration_s
    per_s = (lambda x: x / dur) if dur > 0 else (lambda x: 0.0)
    in_tok = int(done["prompt_tokens"].sum())
    out_tok = int(done["output_tokens"].sum())
    reasons = df.loc[df["outcome"] == REJECTED, "reason"].value_counts().sort_index()
    unfinished = df.loc[df["outcome"] == UNFINISHED, "reason"].value_counts().sort_index()
    s: dict = {
        "scenario": cfg.name, "seed": cfg.seed, "model": resolved.model.name, "hardware": hw.name,
        "num_requests": rec.num_requests,
        "completed": int(len(done)),
        "rejected": int((df["outcome"] == REJECTED).sum()),
        "unfinished": int((df["outcome"] == UNFINISHED).sum()),
        "rejected_reasons": {str(k): int(v) for k, v in reasons.items()},
        "unfinished_reasons": {str(k): int(v) for k, v in unfinished.items()},
        "duration_s": _f(dur),
        "total_input_tokens": in_tok, "total_output_tokens": out_tok,
        "request_throughput": _f(per_s(len(done))),
        "request_goodput": _f(per_s(int(meets_slo(df, cfg.slo).sum()))),
        "output_throughput": _f(per_s(out_tok)),
        "total_token_throughput": _f(per_s(in_tok + out_tok)),
    }
    s["slo"] = cfg.slo.model_dump()
    s["slo_attainment"] = _f(meets_slo(df, cfg.slo).sum() / len(df)) if len(df) else None
    for name, col in (("ttft", "ttft_ms"), ("tpot", "tpot_ms"), ("e2el", "e2el_ms")):
        s.update(_stats(name, done[col].to_numpy(dtype=float)))
    s.update(_weighted_stats("itl", rec.itl_s * 1e3, rec.itl_counts))
    e2el_s = done["e2el_ms"].to_numpy() / 1e3
    ttft_s = done["ttft_ms"].to_numpy() / 1e3
    outs = done["output_tokens"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        user_tps = outs / e2el_s
        decode_tps = np.where(outs > 1, (outs - 1) / (e2el_s - ttft_s), np.nan)
    s["mean_user_output_tps"] = _f(np.mean(user_tps)) if len(outs) else None
    s["mean_user_decode_tps"] = _f(np.nanmean(decode_tps)) if np.any(~np.isnan(decode_tps)) else None
    s.update(_utilisation(resolved, rec))
    s["stability"] = stability(rec)
    s["failures"] = _failures(rec, done)
    if rec.disaggregation is not None:
        s["disaggregation"] = _disaggregation(rec.disaggregation)
    if any(getattr(r.scheduler, "beams", None) is not None for r in rec.replicas):
        s["beam_search"] = _beam_search(rec)
    elif resolved.config.sampling.n > 1:
        s["parallel_sampling"] = _block_copies(rec)
    if resolved.config.deployment.pipeline_parallel > 1 or resolved.derived:
        s["pipeline"] = _pipeline(resolved, rec)
    s.update(_cost(resolved, rec, in_tok, out_tok))
    s["memory_per_device"] = {k: (_f(v) if isinstance(v, float) else v) for k, v in resolved.memory.as_dict().items()}
    return s


def _utilisation(resolved: Resolved, rec: RunRecord) -> dict:
    hw, tp = resolved.hardware, resolved.config.deployment.tensor_parallel
    dur = rec.duration_s
    stats = [r.stats for r in rec.replicas]
    busy = sum(st.busy_s for st in stats)
    iters = sum(st.iterations for st in stats)
    peak_flops = hw.peak_flops_s(resolved.precision.compute_dtype)
    peak_bw = hw.weight_bandwidth_bytes_s
    replica_time = dur * len(stats)
    bound_s: dict[str, float] = {}
    for st in stats:
        for k, v in st.bound_s.items():
            bound_s[k] = bound_s.get(k, 0.0) + v
    blocks = resolved.memory.num_blocks
    reserved = sum(st.sum_kv_blocks for st in stats) * resolved.memory.block_size
    used = sum(st.sum_kv_tokens_used for st in stats)
    return {
        "iterations": iters,
        "mean_batch_size": _f(sum(st.sum_batch_seqs for st in stats) / iters) if iters else None,
        "device_utilization": _f(busy / replica_time) if replica_time > 0 else None,
        # FLOPs and bytes are per device; every device of a replica does the same work
        "mfu": _f(sum(st.flops for st in stats) / (replica_time * peak_flops)) if replica_time > 0 else None,
        "mbu": _f(sum(st.bytes for st in stats) / (replica_time * peak_bw)) if replica_time > 0 else None,
        "step_bound_fraction": {k: _f(v / busy) for k, v in sorted(bound_s.items())} if busy > 0 else {},
        "mean_kv_utilization": _f(sum(st.sum_kv_blocks for st in stats) / iters / blocks) if iters else None,
        "peak_kv_utilization": _f(max(st.peak_kv_blocks for st in stats) / blocks),
        "mean_kv_tokens_used_fraction": _f(used / reserved) if reserved else None,
        "mean_kv_tokens_reserved": _f(reserved / iters) if iters else None,
        "mean_kv_tokens_wasted": _f((reserved - used) / iters) if iters else None,
        "peak_waiting_requests": max(st.peak_waiting for st in stats),
        "peak_running_requests": max(st.peak_running for st in stats),
        "mean_running_requests": _f(sum(st.sum_running for st in stats) / iters) if iters else None,
        "preemptions": sum(r.scheduler.num_preemptions for r in rec.replicas),
        "swap": _swap(rec),
        "prefix_cache": _prefix_cache(rec),
        "padding_tokens": sum(st.padding_tokens for st in stats),
        "wasted_slot_steps": sum(st.wasted_slot_steps for st in stats),
    }


def _swap(rec: RunRecord) -> dict:
    """Preemption by swap: KV copied to host memory and back, per device (all 0 with recompute)."""
    swaps = [r.scheduler.swap for r in rec.replicas if getattr(r.scheduler, "swap", None) is not None]
    block_bytes = swaps[0].block_bytes if swaps else 0.0
    return {
        "swapped_out": sum(s.swapped_out for s in swaps),
        "swapped_in": sum(s.swapped_in for s in swaps),
        "swap_out_bytes": _f(sum(s.out_blocks for s in swaps) * block_bytes),
        "swap_in_bytes": _f(sum(s.in_blocks for s in swaps) * block_bytes),
        "transfer_s": _f(sum(r.stats.transfer_s for r in rec.replicas)),
        "recompute_fallbacks": sum(s.fallbacks for s in swaps),
        "peak_host_kv_bytes": _f(max((s.peak_used for s in swaps), default=0) * block_bytes),
        "host_kv_capacity_bytes": _f(swaps[0].num_blocks * block_bytes) if swaps else None,
    }


def _prefix_cache(rec: RunRecord) -> dict:
    """Prompt tokens found in the prefix cache when requests were admitted (0 when caching is off). With
    disaggregation only the prefill pool's admissions count (the decode pool receives computed KV)."""
    reps = rec.replicas if rec.disaggregation is None else rec.replicas[:rec.disaggregation["prefill_replicas"]]
    hits = sum(getattr(r.scheduler, "prefix_hit_tokens", 0) for r in reps)
    admitted = sum(getattr(r.scheduler, "admitted_prompt_tokens", 0) for r in reps)
    tiers = [r.scheduler.kv.offload for r in rec.replicas if r.scheduler.kv.offload is not None]
    return {"hit_tokens": hits, "admitted_tokens": admitted,
            "hit_rate": _f(hits / admitted) if admitted else None,
            "offload_stored_blocks": sum(t.stored_blocks for t in tiers),
            "offload_loaded_blocks": sum(t.loaded_blocks for t in tiers)}


def _beam_search(rec: RunRecord) -> dict:
    """Beams that took over other beams' blocks, and the blocks copied on write, summed over replicas."""
    beams = [r.scheduler.beams for r in rec.replicas if getattr(r.scheduler, "beams", None) is not None]
    return {"beam_moves": sum(b.num_moves for b in beams), **_block_copies(rec)}


def _block_copies(rec: RunRecord) -> dict:
    """Blocks copied on write by forked sequences (samples or beams), summed over replicas (and a
    pipeline's engines)."""
    copies = [sched.copies for r in rec.replicas for sched in getattr(r.scheduler, "engines", [r.scheduler])
              if getattr(sched, "copies", None) is not None]
    return {"blocks_copied": sum(c.num_copied for c in copies),
            "copy_bytes_per_device": _f(sum(c.copy_bytes for c in copies)),
            "copy_s": _f(sum(c.copy_s for c in copies))}


def _disaggregation(stats: dict) -> dict:
    """Prefill/decode pools and the prompt KV sent between them."""
    n = stats["kv_transfers"]
    return {"prefill_replicas": stats["prefill_replicas"], "decode_replicas": stats["decode_replicas"],
            "link": stats["link"], "kv_transfers": n, "kv_transfer_tokens": stats["kv_transfer_tokens"],
            "kv_transfer_bytes_per_device": _f(stats["kv_transfer_bytes_per_device"]),
            "kv_transfer_s": _f(stats["kv_transfer_s"]),
            "mean_kv_transfer_ms": _f(stats["kv_transfer_s"] / n * 1e3) if n else None}


def _pipeline(resolved: Resolved, rec: RunRecord) -> dict:
    """Pipeline stages: how the devices were split (and what was derived), each stage's busy share of the
    run, the bubble while micro-batches were in flight, activation transfers, and one user's speed bound."""
    from .cost import memory, pipeline as pl

    dep, model, hw = resolved.config.deployment, resolved.model, resolved.hardware
    tp, pp = dep.tensor_parallel, dep.pipeline_parallel
    specs = pl.stages(model.num_layers, pp)
    total = rec.duration_s * len(rec.replicas)
    if pp > 1:
        busy = [sum(r.pipeline.stage_busy_s[s] for r in rec.replicas) for s in range(pp)]
        active = sum(r.pipeline.active_s for r in rec.replicas)
        transfers = sum(r.pipeline.transfers for r in rec.replicas)
        transfer_s = sum(r.pipeline.transfer_s for r in rec.replicas)
        bubble = _f(1.0 - sum(busy) / (pp * active)) if active > 0 else None
    else:
        busy = [sum(r.stats.busy_s for r in rec.replicas)]
        active, transfers, transfer_s, bubble = sum(busy), 0, 0.0, 0.0
    weights = [memory.stage_weight_bytes_per_device(model, resolved.precision, tp, st) for st in specs]
    # what one token reads: a lookup touches one row of the embedding table, so only a table that is
    # also the LM head (tied, on a single stage) counts; 2 FLOPs per weight read
    table = model.vocab_size * model.hidden_size * resolved.precision.weight_bytes / tp
    lookup_only = not (model.tied_embeddings and pp == 1)
    read = [w - table * (st.first and lookup_only) for w, st in zip(weights, specs)]
    flops = [2.0 * b / resolved.precision.weight_bytes for b in read]
    hops = [pl.link_of(hw, name).latency_us * 1e-6 for name in pl.boundary_links(hw, tp, pp)]
    bound = pl.per_user_decode_tps_bound(read, flops, hw.weight_bandwidth_bytes_s,
                                         hw.peak_flops_s(resolved.precision.compute_dtype), hops)
    return {
        "stages": pp, "tensor_parallel": tp, "devices_per_replica": tp * pp, "derived": list(resolved.derived),
        "layers_per_stage": [st.num_layers for st in specs],
        "stage_links": pl.boundary_links(hw, tp, pp),
        "stage_weight_bytes_per_device": [_f(w) for w in weights],
        "microbatches": sum(r.pipeline.microbatches for r in rec.replicas) if pp > 1 else sum(
            r.stats.iterations for r in rec.replicas),
        "stage_busy_fraction": [_f(b / total) if total > 0 else None for b in busy],
        "active_s": _f(active),
        "pipeline_bubble_fraction": bubble,
        "activation_transfers": transfers,
        "activation_transfer_s": _f(transfer_s),
        "mean_activation_transfer_ms": _f(transfer_s / transfers * 1e3) if transfers else None,
        "per_user_decode_tps_bound": _f(bound),
    }


UNSTABLE_GROWTH = 0.05


def stability(rec: RunRecord) -> dict:
    """Is the offered load sustainable? Requests in the system are sampled at every arrival; over the
    second half of the arrival time span their least-squares growth rate is ``queue_growth_per_s``. The run is
    ``unstable`` when that growth exceeds 5% of the offered request rate, i.e. the backlog grows
    without bound rather than fluctuating around a level."""
    samples = rec.outstanding
    out = {"offered_request_rate": None, "queue_growth_per_s": None, "final_outstanding": None, "unstable": False}
    if len(samples) < 4:
        return out
    t, n = samples[:, 0], samples[:, 1]
    span = t[-1] - t[0]
    out["final_outstanding"] = int(n[-1])
    if span <= 0:
        return out
    rate = (len(t) - 1) / span
    half = t >= t[0] + span / 2
    th, nh = t[half], n[half]
    growth = float(np.polyfit(th - th[0], nh, 1)[0]) if len(th) >= 2 and th[-1] > th[0] else 0.0
    out.update(offered_request_rate=_f(rate), queue_growth_per_s=_f(growth), unstable=bool(growth > UNSTABLE_GROWTH * rate))
    return out


def _failures(rec: RunRecord, done: pd.DataFrame) -> dict:
    stats = rec.failure_stats
    requeued = done[done["num_requeues"] > 0]["e2el_ms"]
    others = done[done["num_requeues"] == 0]["e2el_ms"]
    down = sum(r.stats.down_s for r in rec.replicas)
    total = rec.duration_s * len(rec.replicas)
    return {
        "failure_events": stats["failure_events"], "spot_reclaims": stats["spot_reclaims"],
        "requeued_requests": stats["requeued_requests"], "failure_rejected_requests": stats["failure_rejected"],
        "replica_downtime_s": _f(down), "availability": _f(1 - down / total) if total > 0 else None,
        "mean_e2el_ms_requeued": _f(requeued.mean()) if len(requeued) else None,
        "mean_e2el_ms_unaffected": _f(others.mean()) if len(others) else None,
    }


def _cost(resolved: Resolved, rec: RunRecord, in_tok: int, out_tok: int) -> dict:
    """Provisioned cost: every device of the deployment for the whole run, idle time included."""
    hw, cfg = resolved.hardware, resolved.config
    price = hw.pricing[cfg.pricing]
    devices = resolved.num_devices
    hours = devices * rec.duration_s / 3600.0
    cost = hours * price.usd_per_device_hour
    busy_device_s = sum(r.stats.busy_s for r in rec.replicas) * resolved.devices_per_replica
    idle_device_s = devices * rec.duration_s - busy_device_s
    energy_j = busy_device_s * hw.power.busy_w + idle_device_s * hw.power.idle_w
    per_m = lambda tokens: _f(cost / tokens * 1e6) if tokens else None  # noqa: E731
    return {
        "devices": devices, "device_hours": _f(hours), "pricing_model": cfg.pricing,
        "usd_per_device_hour": price.usd_per_device_hour, "price_date": price.date,
        "cost_usd": _f(cost),
        "cost_per_million_output_tokens_usd": per_m(out_tok),
        "cost_per_million_input_tokens_usd": per_m(in_tok),
        "cost_per_million_total_tokens_usd": per_m(in_tok + out_tok),
        "energy_wh": _f(energy_j / 3600.0),
        "output_tokens_per_joule": _f(out_tok / energy_j) if energy_j > 0 else None,
        "total_tokens_per_joule": _f((in_tok + out_tok) / energy_j) if energy_j > 0 else None,
    }
