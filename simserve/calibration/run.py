"""``run_calibration``: fit every measured hardware and operator class, with held-out errors.

Which measurements a class is fitted on (its *basis*): the aiconfigurator tables where they exist (vLLM
0.14 on A100, 0.24 on H100: the engine simserve models), otherwise Vidur's. The two projects ran different
software stacks and disagree by more than the error targets at identical shapes, so they are never pooled;
the non-basis measurements (and basis points outside the fitted domain) are predicted as cross-checks.
Classes with no measurement on a device are carried over from the nearest measured device.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..hardware import load_profile
from ..model import catalog_names, load_model
from . import iteration, stack_layers
from .dataset import (DATA_DIR, MEASURED_HARDWARE, OP_CLASSES, Dataset, Points, load_dataset, points_for, runs_class,
                      vidur_layer_rows)
from .fit import K_FOLDS, SEED, abs_pct_err, aggregate, fit_points, heldout_predictions, predict_s

AIC, VIDUR = "aiconfigurator", "vidur"
# a measured device's unmeasured classes are carried over from this device
CARRY_WITHIN = {"a40-48gb": "a100-sxm-80gb"}
TARGETS = {"op_median": 8.0, "op_p90": 20.0, "iteration_median": 5.0, "iteration_p90": 10.0}


@dataclass(frozen=True)
class CalibrationResult:
    """``params[hw][op_class]``: OpEfficiency fields; ``report``: held-out errors and how they were made."""

    params: dict[str, dict[str, dict]]
    report: dict
    data_sha256: str
    vidur_predictions: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict, repr=False)


def _stats(pred: np.ndarray, measured: np.ndarray) -> dict:
    err = abs_pct_err(pred, measured)
    return {"num_points": int(len(err)), "median_abs_pct_err": float(np.median(err)),
            "p90_abs_pct_err": float(np.percentile(err, 90)),
            "median_pred_over_measured": float(np.median(pred / measured))}


def _crossval(p: Points) -> tuple[dict, np.ndarray, dict, list[dict]]:
    """Full-data parameters, out-of-fold predictions per row of ``p``, and the held-out statistics."""
    agg, inverse = aggregate(p)
    oof, fold_params = heldout_predictions(agg, K_FOLDS, SEED)
    params = fit_points(agg)
    stats = _stats(oof, agg.latency_s)     # one point per measured shape (repeats are medianed)
    stats["num_measurements"] = int(len(p))
    return params, oof[inverse], stats, fold_params


def calibrate_class(ds: Dataset, hw_name: str, op_class: str) -> dict | None:
    """Fit one device's operator class; None when nothing was measured."""
    hw = load_profile(hw_name)
    p = points_for(ds, hw, op_class)
    inside = p.outside == ""
    if not inside.any():
        return None
    basis = AIC if (inside & (p.source == AIC)).any() else VIDUR
    fit_mask = inside & (p.source == basis)
    params, oof_rows, stats, fold_params = _crossval(p.take(fit_mask))
    rows_pred = predict_s(p, params)          # points not fitted are predicted with the full fit
    rows_pred[fit_mask] = oof_rows            # fitted points only ever with their held-out fold's fit
    checks = []
    for source in np.unique(p.source):
        for outside in np.unique(p.outside[p.source == source]):
            mask = (p.source == source) & (p.outside == outside)
            if (mask & fit_mask).any():
                continue
            agg, _ = aggregate(p.take(mask))
            label = outside or ("other software stack" if source != basis else "")
            checks.append({"source": source, "subset": label, **_stats(predict_s(agg, params), agg.latency_s)})
    out = {"basis": basis, "params": params, "heldout": stats, "cross_checks": checks,
           "fold_params": fold_params, "refs": p.ref, "rows_pred": rows_pred}
    if basis == AIC:   # every aiconfigurator shape: its measured median and prediction, for stack_layers
        aic = p.source == AIC
        out["aic_kernels"] = pd.DataFrame({"key": p.key[aic], "measured_s": p.latency_s[aic], "predicted_s": rows_pred[aic]}
                                          ).groupby("key").agg(measured_s=("measured_s", "median"), predicted_s=("predicted_s", "first"))
    # Vidur's own stack, held out by shape, when Vidur is not the basis: isolates how well the per-op model
    # composes into a layer from the gap between software stacks.
    vidur = inside & (p.source == VIDUR)
    if basis != VIDUR and vidur.any():
        v_params, v_oof, v_stats, _ = _crossval(p.take(vidur))
        out["in_stack"] = {"params": v_params, "heldout": v_stats, "refs": p.ref[vidur], "rows_pred": v_oof}
    return out


def _by_op(ds: Dataset, hw: str, res: dict) -> dict[str, float]:
    """Median held-out predicted/measured per Vidur operator (e.g. RMSNorm vs residual add)."""
    rows = vidur_layer_rows(ds, hw)
    pred = pd.Series(res["rows_pred"], index=res["refs"])
    pred = pred[pred.index != ""]
    rows = rows[rows.ref.isin(pred.index)]
    ratio = pred.loc[rows.ref].to_numpy() / rows.latency_s.to_numpy()
    return {op: float(np.median(ratio[(rows.op == op).to_numpy()])) for op in sorted(set(rows.op))}


def vllm_layer_steps(ds: Dataset, hw: str, fitted: dict, configs: list[dict] | None = None) -> pd.DataFrame | None:
    """Whole layers on vLLM's stack (:mod:`.stack_layers`) from one device's ``calibrate_class`` results
    (``fitted[op_class]``), over the catalog's layers unless ``configs`` are given; None without
    aiconfigurator measurements."""
    kernels = {oc: res["aic_kernels"] for oc, res in fitted.items() if res is not None and "aic_kernels" in res}
    if not kernels:
        return None
    if configs is None:
        configs = stack_layers.layer_configs([load_model(n) for n in catalog_names()])
    return stack_layers.layer_steps(ds, hw, configs, kernels)


def run_calibration(hardware_names=None, data_dir: Path = DATA_DIR) -> CalibrationResult:
    """Fit all measured hardware (or the named subset) and report held-out errors. Deterministic."""
    names = tuple(hardware_names) if hardware_names is not None else MEASURED_HARDWARE
    unknown = [n for n in names if n not in MEASURED_HARDWARE]
    if unknown:
        raise ValueError(f"no measurements for {', '.join(unknown)}; measured: {', '.join(MEASURED_HARDWARE)}")
    ds = load_dataset(data_dir)
    fitted = {hw: {oc: calibrate_class(ds, hw, oc) for oc in OP_CLASSES} for hw in names}

    params: dict = {}
    report: dict = {"data_sha256": ds.sha256, "k_folds": K_FOLDS, "seed": SEED, "targets": dict(TARGETS),
                    "heldout_median_abs_pct_err": {}, "heldout_p90_abs_pct_err": {}, "fit": {},
                    "cross_checks": {}, "carried_over": {}, "iteration": {}, "iteration_in_stack": {},
                    "iteration_vllm": {}}
    vidur_pred: dict = {}
    configs = stack_layers.layer_configs([load_model(n) for n in catalog_names()])
    for hw in names:
        params[hw], med, p90 = {}, {}, {}
        report["fit"][hw], report["cross_checks"][hw], report["carried_over"][hw] = {}, {}, {}
        profile_rows, stack_rows = {}, {}
        for oc in OP_CLASSES:
            res = fitted[hw][oc]
            if res is None and not runs_class(load_profile(hw), oc):
                continue                                  # e.g. FP8 GEMMs on a GPU without FP8 tensor cores
            if res is None:
                source_hw = CARRY_WITHIN.get(hw)
                report["carried_over"][hw][oc] = source_hw
                if source_hw in fitted and fitted[source_hw][oc] is not None:
                    params[hw][oc] = dict(fitted[source_hw][oc]["params"])
                continue
            params[hw][oc] = res["params"]
            med[oc], p90[oc] = res["heldout"]["median_abs_pct_err"], res["heldout"]["p90_abs_pct_err"]
            report["fit"][hw][oc] = {"source": res["basis"], **res["heldout"], "fold_params": res["fold_params"]}
            if res["basis"] == VIDUR:
                report["fit"][hw][oc]["by_op"] = _by_op(ds, hw, res)
            if "in_stack" in res:
                report["fit"][hw][oc]["in_stack"] = {"source": VIDUR, **res["in_stack"]["heldout"]}
            report["cross_checks"][hw][oc] = res["cross_checks"]
            for ref, pred in zip(res["refs"], res["rows_pred"]):
                if ref:
                    profile_rows[ref] = float(pred)
            stack = res.get("in_stack", res)
            for ref, pred in zip(stack["refs"], stack["rows_pred"]):
                if ref:
                    stack_rows[ref] = float(pred)
        report["heldout_median_abs_pct_err"][hw], report["heldout_p90_abs_pct_err"][hw] = med, p90
        report["iteration"][hw] = iteration.summarize(ds, hw, profile_rows)
        report["iteration_in_stack"][hw] = iteration.summarize(ds, hw, stack_rows)
        vidur_pred[hw] = {"profile": profile_rows, "in_stack": stack_rows}
        steps = vllm_layer_steps(ds, hw, fitted[hw], configs)
        if steps is not None:
            report["iteration_vllm"][hw] = stack_layers.summarize(steps)
    return CalibrationResult(params, report, ds.sha256, vidur_pred)
