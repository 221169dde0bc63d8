"""Model variants that docs/calibration.md reports as tried and not kept (and MoE residuals), rerun from here.

    python benchmarks/calibration_variants.py            # about two minutes on 2 cores

1. *Tile parity*, model-free: in Vidur's per-layer GEMM timings, the median ratio of the time at ``t``
   128-row tiles to the time at ``t - 1`` (a fixed weight), for ``t`` odd (a new pair of tiles begins) and
   ``t`` even. Equal medians mean 128-row steps; a larger odd median means the rows go 256 at a time.
2. *Vidur's H100 stack in the profile's 128-row tiles*: the same-stack fit without the pairing of tiles into
   clusters of two along the tokens (``dataset.VIDUR_GEMM_ROW_TILE``), as before that was modelled.
3. *Whole waves on A100's vLLM stack*, model-free then modelled: in aiconfigurator's tables (n, k >= 1024, from
   256 rows and more than one wave), the median time ratio of neighbouring measured row counts whose grids of
   128 x 256 (rows x weight columns) tiles take as many waves over the SMs, and of those that add waves; then
   the A100 fit without the profile's ``gemm_wave_tile`` and with waves of 64-row tiles instead.

4. *One row past a tile boundary on vLLM's stack*, model-free: in aiconfigurator's tables (n, k >= 1024), the
   median and p90 over weights of the time at ``m + 1`` rows over the time at ``m``.

5. *vLLM-stack prefill layers by token count*: the median signed error of the layers of
   ``simserve/calibration/stack_layers.py`` (profile parameters, held out) per prompt-batch token count.
6. *MoE experts as before the moe class*: vLLM's fused MoE timings on H100 (balanced routing, the fitted
   domain) predicted the way ``RooflineStep`` priced them before: one GEMM roofline over the experts with the
   dense GEMM fractions and no row padding, plus the activation as an elementwise kernel over the device's pairs;
   then where the moe class misses, held out: median predicted/measured by group.

7. *Same-stack decode layers by token band*: Vidur's decode layers (<= 256 tokens) predicted with same-stack
   parameters (held out), median signed and p90 absolute error % per band of token counts.

8. *H100 FP8 linear layers*: vLLM's per-tensor FP8 linear layers (aiconfigurator, fitted domain) priced as before
   the gemm_fp8 class (the bf16 GEMM parameters at the FP8 peak, one byte per weight), then the class held out:
   median predicted/measured by bands of m (tokens) and n (weight columns).

Variants 2 and 3 print the held-out errors ``simserve calibrate`` reports, next to the model as it is.
"""
from __future__ import annotations

import math

import numpy as np

from simserve.calibration import dataset
from simserve.calibration.dataset import load_dataset, vidur_layer_rows
from simserve.calibration.run import run_calibration
from simserve.hardware import load_profile

GEMM_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")


def tile_parity(ds, hw: str, lo: int = 3, hi: int = 40) -> tuple[float, float, int]:
    rows = vidur_layer_rows(ds, hw)
    g = rows[rows.op.isin(GEMM_OPS) & rows.use_gated_mlp.astype(bool)]
    g = g.assign(tile=np.ceil(g.num_tokens / 128).astype(int))
    b = g.groupby(["model", "tp", "op", "tile"]).latency_s.median().reset_index()
    b["ratio"] = b.latency_s / b.groupby(["model", "tp", "op"]).latency_s.shift(1)
    b = b[(b.tile >= lo) & (b.tile <= hi)].dropna()
    return float(b[b.tile % 2 == 1].ratio.median()), float(b[b.tile % 2 == 0].ratio.median()), len(b)


def row_steps(ds, hw: str, boundaries=(128, 256, 512, 768, 1024, 2048)) -> list[tuple[int, float, float]]:
    g = ds.tables["aic_gemm"]
    g = g[(g.hardware == hw) & (g.dtype == "bf16") & (g.n >= 1024) & (g.k >= 1024)]
    t = g.pivot_table(index=["n", "k"], columns="m", values="latency_s")
    out = []
    for m in boundaries:
        if m in t and m + 1 in t:
            r = (t[m + 1] / t[m]).dropna()
            out.append((m, float(r.median()), float(r.quantile(0.9))))
    return out


def prefill_by_tokens(ds, hw: str) -> list[tuple[int, float, int]]:
    from simserve.calibration.run import calibrate_class, vllm_layer_steps
    fitted = {oc: calibrate_class(ds, hw, oc) for oc in ("gemm", "attention_prefill", "attention_decode", "allreduce")}
    st = vllm_layer_steps(ds, hw, fitted)
    st = st[st.kind == "prefill"].assign(err=lambda d: (d.predicted_s / d.measured_s - 1.0) * 100.0)
    return [(int(t), float(g.err.median()), len(g)) for t, g in st.groupby("num_tokens")]


def _line(label: str, res, hw: str) -> str:
    rep = res.report
    s, g = rep["iteration_in_stack"][hw], rep["fit"][hw]["gemm"]
    parts = [f"{label:<34}", f"same-stack layers {s['median_abs_pct_err']:.1f}/{s['p90_abs_pct_err']:.1f}",
             f"(prefill p90 {s['prefill']['p90_abs_pct_err']:.1f}, decode p90 {s['decode']['p90_abs_pct_err']:.1f})",
             f"gemm {g['source']} {g['median_abs_pct_err']:.1f}/{g['p90_abs_pct_err']:.1f}"]
    if "in_stack" in g:
        parts.append(f"gemm vidur {g['in_stack']['median_abs_pct_err']:.1f}/{g['in_stack']['p90_abs_pct_err']:.1f}")
    v = rep["iteration_vllm"].get(hw)
    if v:
        parts.append(f"vLLM layers {v['median_abs_pct_err']:.1f}/{v['p90_abs_pct_err']:.1f}")
    return "  ".join(parts)


def vidur_row_tile(hw: str, tile: int | None):
    """``run_calibration`` with Vidur's GEMMs on ``hw`` in ``tile``-row tiles (None: the profile's)."""
    table = dict(dataset.VIDUR_GEMM_ROW_TILE)
    dataset.VIDUR_GEMM_ROW_TILE.pop(hw, None)
    if tile is not None:
        dataset.VIDUR_GEMM_ROW_TILE[hw] = tile
    try:
        return run_calibration([hw])
    finally:
        dataset.VIDUR_GEMM_ROW_TILE.clear()
        dataset.VIDUR_GEMM_ROW_TILE.update(table)


def wave_plateaus(ds, hw: str, tile=(128, 256)) -> dict[str, tuple[float, float, int]]:
    """{"same waves" | "more waves": (median time ratio, median rows ratio, pairs)} of neighbouring measured row
    counts of one aiconfigurator weight, both from 256 rows and above one wave of ``tile`` tiles."""
    sms = float(load_profile(hw).sm_count)
    g = ds.tables["aic_gemm"]
    g = g[(g.hardware == hw) & (g.dtype == "bf16") & (g.n >= 1024) & (g.k >= 1024)]
    t = g.groupby(["n", "k", "m"]).latency_s.median().reset_index()
    out: dict[str, list] = {"same waves": [], "more waves": []}
    for (n, _), s in t.groupby(["n", "k"]):
        m, y = s.m.to_numpy(float), s.latency_s.to_numpy(float)
        waves = np.ceil(np.ceil(m / tile[0]) * math.ceil(n / tile[1]) / sms)
        for i in range(1, len(m)):
            if m[i - 1] >= 256 and waves[i - 1] > 1:
                out["same waves" if waves[i] == waves[i - 1] else "more waves"].append((y[i] / y[i - 1], m[i] / m[i - 1]))
    return {k: (float(np.median([a for a, _ in v])), float(np.median([b for _, b in v])), len(v)) for k, v in out.items()}


def a100_waves(tile):
    """``run_calibration`` on A100 with vLLM-stack GEMM waves of ``tile`` (rows, weight columns), None: no waves."""
    plain = dataset.gemm_kernel_tiles

    def tiles(hw, source):
        row, _, _ = plain(hw, source)
        return (row, *tile) if tile and source != "vidur" else (row, 0, 0)
    dataset.gemm_kernel_tiles = tiles
    try:
        return run_calibration(["a100-sxm-80gb"])
    finally:
        dataset.gemm_kernel_tiles = plain


def moe_as_before(ds, hw: str) -> tuple[float, float, float]:
    """(median predicted/measured, median, p90 |error| %) of the old MoE pricing on ``hw``'s fitted MoE points."""
    from simserve.calibration.dataset import points_for
    from simserve.cost import ops
    profile = load_profile(hw)
    eff, l2 = profile.efficiency, (profile.l2_cache_mb or 0.0) * 1e6
    p = points_for(ds, profile, "moe")
    pred, meas = [], []
    for key, lat, outside in zip(p.key, p.latency_s, p.outside):
        if outside:
            continue
        T, h, inter, k, E, tp, ep = (int(v) for v in key.split("x"))
        ffn = inter / tp
        pairs = T * k / ep
        touched = ops.moe_experts_touched(T, k, E, ep)
        flops = ops.gemm_flops(pairs, 2 * ffn, h) + ops.gemm_flops(pairs, h, ffn)
        bytes_ = touched * 3 * ffn * h * 2.0 + pairs * (2 * h + 3 * ffn) * 2.0
        experts = ops.roofline_s(flops, bytes_, profile.peak_flops_s("bf16"), profile.weight_bandwidth_bytes_s, eff.gemm)
        act = ops.elementwise_time(pairs, ffn, ops.activation_kernel(3), 2.0, profile.peak_flops_s("bf16"),
                                   profile.weight_bandwidth_bytes_s, eff.elementwise, l2)
        pred.append(experts.time_s + act.time_s)
        meas.append(lat)
    ratio = np.array(pred) / np.array(meas)
    err = np.abs(ratio - 1.0) * 100.0
    return float(np.median(ratio)), float(np.median(err)), float(np.percentile(err, 90))


def moe_residuals(ds, hw: str) -> list[tuple[str, float, float, int]]:
    """(group, median, min of held-out predicted/measured, points) for the moe class's weak spots."""
    from simserve.calibration.dataset import points_for
    from simserve.calibration.run import calibrate_class
    res = calibrate_class(ds, hw, "moe")      # rows_pred: fitted points predicted by the fold that left them out
    p = points_for(ds, load_profile(hw), "moe")
    m = p.outside == ""
    T, h, inter, k, E, tp, ep = np.array([[int(v) for v in key.split("x")] for key in p.key[m]]).T
    ratio = res["rows_pred"][m] / p.latency_s[m]
    groups = {
        "1-4 tokens": T <= 4,
        "EP 128-256 or TP 32, 16-1024 tokens": ((ep >= 128) | (tp == 32)) & (T >= 16) & (T <= 1024),
        "Mixtral-8x7B shape, TP 1, 320-1024 tokens": (h == 4096) & (inter == 14336) & (E == 8) & (tp == 1) & (ep == 1)
                                                     & (T >= 320) & (T <= 1024),
        "everything else": None,
    }
    rest = np.ones(len(T), dtype=bool)
    out = []
    for name, mask in groups.items():
        mask = rest.copy() if mask is None else mask
        rest &= ~mask
        out.append((name, float(np.median(ratio[mask])), float(ratio[mask].min()), int(mask.sum())))
    return out


def decode_bands(ds, res, hw: str, bands=((1, 32), (33, 64), (65, 128), (129, 256))):
    """[(band, median signed %, p90 |%|, steps)] of same-stack decode layers on ``hw``."""
    from simserve.calibration.iteration import layer_steps
    st = layer_steps(ds, hw, res.vidur_predictions[hw]["in_stack"])
    err = (st.predicted_s / st.measured_s - 1.0).to_numpy() * 100.0
    out = []
    for lo, hi in bands:
        m = ((st.num_tokens >= lo) & (st.num_tokens <= hi)).to_numpy()
        out.append((f"{lo}-{hi}", float(np.median(err[m])), float(np.percentile(np.abs(err[m]), 90)), int(m.sum())))
    return out


def fp8_as_before(ds) -> tuple[float, float, float]:
    """(median predicted/measured, median, p90 |error| %) of H100's FP8 linear layers priced as bf16 GEMMs at the FP8 peak."""
    from simserve.calibration.dataset import points_for
    from simserve.cost import ops
    profile = load_profile("h100-sxm-80gb")
    p = points_for(ds, profile, "gemm_fp8")
    keep = p.outside == ""
    pred = np.array([ops.gemm_time(m, n, k, 1.0, 2.0, profile.peak_flops_s("fp8"), profile.weight_bandwidth_bytes_s,
                                   profile.efficiency.gemm).time_s
                     for m, n, k in (map(float, key.split("x")) for key in p.key[keep])])
    ratio = pred / p.latency_s[keep]
    err = np.abs(ratio - 1.0) * 100.0
    return float(np.median(ratio)), float(np.median(err)), float(np.percentile(err, 90))


def fp8_residuals(ds) -> tuple[list[str], list[tuple[str, list[float]]]]:
    """(n bands, [(m band, median held-out predicted/measured per n band)]) of the gemm_fp8 class on H100."""
    from simserve.calibration.run import calibrate_class
    k = calibrate_class(ds, "h100-sxm-80gb", "gemm_fp8")["aic_kernels"].reset_index()
    mnk = np.array([[float(v) for v in key.split("x")] for key in k.key])
    ratio = (k.predicted_s / k.measured_s).to_numpy()
    m_bands, n_bands = [(1, 64), (65, 128), (129, 512), (513, 2048), (2049, 8192), (8193, 65536)], \
        [(256, 2048), (2049, 8192), (8193, 1 << 20)]
    rows = []
    for lo, hi in m_bands:
        cells = []
        for nlo, nhi in n_bands:
            sel = (mnk[:, 0] >= lo) & (mnk[:, 0] <= hi) & (mnk[:, 1] >= nlo) & (mnk[:, 1] <= nhi) & (mnk[:, 2] >= 256)
            cells.append(float(np.median(ratio[sel])) if sel.any() else float("nan"))
        rows.append((f"m {lo}-{hi}", cells))
    return [f"n {lo}-{hi}" for lo, hi in n_bands], rows


def main() -> None:
    ds = load_dataset()
    as_is = {hw: run_calibration([hw]) for hw in ("a100-sxm-80gb", "h100-sxm-80gb", "a40-48gb")}
    print("1. tile parity (Vidur GEMMs, 3-40 tiles): median time ratio entering an odd / an even 128-row tile")
    for hw in ("a100-sxm-80gb", "h100-sxm-80gb", "a40-48gb"):
        odd, even, count = tile_parity(ds, hw)
        print(f"   {hw:<16} odd {odd:.3f}  even {even:.3f}  ({count} steps)")
    print("2. H100, Vidur's stack in the profile's 128-row tiles instead of pairs of them (256 rows)")
    print("   " + _line("as is (256-row steps)", as_is["h100-sxm-80gb"], "h100-sxm-80gb"))
    print("   " + _line("Vidur's GEMMs in 128-row tiles", vidur_row_tile("h100-sxm-80gb", None), "h100-sxm-80gb"))
    print("3. vLLM's stack in whole waves of 128 x 256 tiles: neighbouring row counts (median time ratio, rows ratio, pairs)")
    for hw in ("a100-sxm-80gb", "h100-sxm-80gb"):
        print(f"   {hw:<16} " + "  ".join(f"{k}: {t:.3f} (rows x{r:.2f}, {n})" for k, (t, r, n) in wave_plateaus(ds, hw).items()))
    print("   " + _line("A100 as is (waves of 128 x 256)", as_is["a100-sxm-80gb"], "a100-sxm-80gb"))
    print("   " + _line("A100 without waves", a100_waves(None), "a100-sxm-80gb"))
    print("   " + _line("A100 waves of 64 x 256", a100_waves((64, 256)), "a100-sxm-80gb"))
    print("4. vLLM's stack: time at m + 1 rows over time at m (median, p90 over weights with n, k >= 1024)")
    for hw in ("a100-sxm-80gb", "h100-sxm-80gb"):
        steps = row_steps(ds, hw)
        print(f"   {hw:<16} " + ("  ".join(f"{m}: {med:.3f}/{p90:.3f}" for m, med, p90 in steps) or "no m + 1 rows measured"))
    print("5. vLLM-stack prefill layers: median signed error % by tokens (steps)")
    for hw in ("a100-sxm-80gb", "h100-sxm-80gb"):
        print(f"   {hw:<16} " + "  ".join(f"{t}: {e:+.1f} ({n})" for t, e, n in prefill_by_tokens(ds, hw)))
    print("6. H100 fused MoE (balanced routing, fitted domain) priced as before the moe class")
    ratio, med, p90 = moe_as_before(ds, "h100-sxm-80gb")
    fit = as_is["h100-sxm-80gb"].report["fit"]["h100-sxm-80gb"]["moe"]
    print(f"   as before: predicted/measured {ratio:.2f}, error {med:.1f}/{p90:.1f}; the moe class held out: "
          f"predicted/measured {fit['median_pred_over_measured']:.2f}, error {fit['median_abs_pct_err']:.1f}/{fit['p90_abs_pct_err']:.1f}")
    for name, med, low, n in moe_residuals(ds, "h100-sxm-80gb"):
        print(f"   moe held out, {name}: predicted/measured median {med:.2f}, lowest {low:.2f} ({n} points)")
    print("7. same-stack decode layers by tokens: median signed %, p90 |%| (steps)")
    for hw, res in as_is.items():
        print(f"   {hw:<16} " + "  ".join(f"{b}: {med:+.1f}/{p90:.1f} ({n})" for b, med, p90, n in decode_bands(ds, res, hw)))
    print("8. H100 FP8 linear layers (vLLM per-tensor FP8, fitted domain)")
    ratio, med, p90 = fp8_as_before(ds)
    fp8 = as_is["h100-sxm-80gb"].report["fit"]["h100-sxm-80gb"]["gemm_fp8"]
    print(f"   as before (bf16 GEMM parameters at the FP8 peak): predicted/measured {ratio:.2f}, error {med:.1f}/{p90:.1f}; "
          f"the gemm_fp8 class held out: {fp8['median_abs_pct_err']:.1f}/{fp8['p90_abs_pct_err']:.1f}")
    cols, rows = fp8_residuals(ds)
    print("   held out, median predicted/measured: " + ", ".join(cols))
    for name, cells in rows:
        print(f"   {name:<14} " + "  ".join(f"{c:.2f}" for c in cells))


if __name__ == "__main__":
    main()
