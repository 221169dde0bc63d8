"""Plain-text rendering of a summary for the terminal."""
from __future__ import annotations


def _num(x, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, int):
        return f"{x:,}"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def render(summary: dict) -> str:
    s = summary
    lines = [
        f"simserve: {s['scenario']} | {s['model']} on {s['devices']} x {s['hardware']} | seed {s['seed']}",
        "",
        f"requests   {_num(s['num_requests'])} total: {_num(s['completed'])} completed, "
        f"{_num(s['rejected'])} rejected, {_num(s['unfinished'])} unfinished",
    ]
    if s["rejected_reasons"]:
        lines.append("           rejected: " + ", ".join(f"{k} {v}" for k, v in s["rejected_reasons"].items()))
    lines += [
        f"duration   {_num(s['duration_s'])} s simulated, {_num(s['iterations'])} iterations, "
        f"mean batch {_num(s['mean_batch_size'])}",
        "",
        f"{'latency (ms)':<14}{'mean':>10}{'median':>10}{'p90':>10}{'p99':>10}",
    ]
    for key, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2E")):
        row = [s[f"mean_{key}_ms"], s[f"median_{key}_ms"], s[f"p90_{key}_ms"], s[f"p99_{key}_ms"]]
        lines.append(f"{label:<14}" + "".join(f"{_num(v):>10}" for v in row))
    bound = ", ".join(f"{k} {v:.0%}" for k, v in s["step_bound_fraction"].items())
    lines += [
        "",
        f"throughput {_num(s['request_throughput'])} req/s, goodput {_num(s['request_goodput'])} req/s "
        f"(SLO attainment {_num(s['slo_attainment'])}), {_num(s['output_throughput'])} output tok/s, "
        f"{_num(s['total_token_throughput'])} total tok/s",
        f"per user   {_num(s['mean_user_output_tps'])} output tok/s (incl. TTFT), "
        f"{_num(s['mean_user_decode_tps'])} decode tok/s",
        f"devices    utilization {_num(s['device_utilization'])}, MFU {_num(s['mfu'])}, MBU {_num(s['mbu'])}, "
        f"peak KV {_num(s['peak_kv_utilization'])}, preemptions {_num(s['preemptions'])}; steps bound by {bound}",
        f"cost       ${_num(s['cost_usd'], 4)} for {_num(s['device_hours'], 4)} device-hours at "
        f"${s['usd_per_device_hour']}/h ({s['pricing_model']}, {s['price_date']}): "
        f"${_num(s['cost_per_million_output_tokens_usd'])} per 1M output tokens, "
        f"${_num(s['cost_per_million_total_tokens_usd'])} per 1M total tokens",
        f"energy     {_num(s['energy_wh'])} Wh, {_num(s['output_tokens_per_joule'])} output tokens/J",
    ]
    if s.get("padding_tokens") or s.get("wasted_slot_steps"):        # request-level batching only
        at = next(i for i, line in enumerate(lines) if line.startswith("devices")) + 1
        lines.insert(at, f"batching   {_num(s['padding_tokens'])} prompt padding tokens computed, "
                         f"{_num(s['wasted_slot_steps'])} idle batch slot-iterations")
    swap = s.get("swap") or {}
    contiguous = s.get("memory_per_device", {}).get("kv_layout") == "contiguous"
    if contiguous or swap.get("host_kv_capacity_bytes") is not None:  # non-default KV policies only
        at = next(i for i, line in enumerate(lines) if line.startswith("devices")) + 1
        frac = s["mean_kv_tokens_used_fraction"]
        pct = _num(frac * 100 if frac is not None else None, 1)
        text = (f"kv cache   {'contiguous' if contiguous else 'paged'}: {pct}% of reserved KV slots hold KV "
                f"(mean {_num(s['mean_kv_tokens_reserved'], 0)} tokens reserved, "
                f"{_num(s['mean_kv_tokens_wasted'], 0)} unused), mean {_num(s['mean_running_requests'])} running")
        if swap.get("host_kv_capacity_bytes") is not None:
            text += (f"; swapped {_num(swap['swapped_out'])} out, {_num(swap['swapped_in'])} in "
                     f"({_num(swap['swap_out_bytes'] / 1e9)} GB out, {_num(swap['transfer_s'], 3)} s of copies), "
                     f"{_num(swap['recompute_fallbacks'])} recomputed for want of host space")
        lines.insert(at, text)
    pipe = s.get("pipeline")
    if pipe:
        at = next(i for i, line in enumerate(lines) if line.startswith("devices")) + 1
        derived = f" ({', '.join(pipe['derived'])} derived from memory)" if pipe["derived"] else ""
        busy = " ".join(_num(b) for b in pipe["stage_busy_fraction"])
        stages = f"{pipe['stages']} stage{'s' * (pipe['stages'] != 1)}"
        lines.insert(at, f"pipeline   {stages} x {pipe['tensor_parallel']} devices = "
                         f"{pipe['devices_per_replica']} per replica{derived}; bubble "
                         f"{_num(pipe['pipeline_bubble_fraction'])}, stage busy {busy}; "
                         f"{_num(pipe['activation_transfers'])} activation sends "
                         f"(mean {_num(pipe['mean_activation_transfer_ms'], 3)} ms); "
                         f"per-user decode bound {_num(pipe['per_user_decode_tps_bound'])} tok/s")
    fid = s.get("fidelity")
    if fid:
        lo, hi = fid["low"], fid["high"]
        band = lambda k, d=0: f"{_num(lo.get(k), d)}-{_num(hi.get(k), d)}"  # noqa: E731
        lines += [
            "",
            f"bands      step times {fid['step_time_scales'][0]:.2f}x-{fid['step_time_scales'][1]:.2f}x "
            f"({'calibrated' if fid['calibrated'] else 'not calibrated'} hardware): p99 TTFT {band('p99_ttft_ms')} ms, "
            f"mean TPOT {band('mean_tpot_ms', 2)} ms, output {band('output_throughput')} tok/s, "
            f"${band('cost_per_million_output_tokens_usd', 2)} per 1M output tokens",
        ]
    return "\n".join(lines) + "\n"
