"""Whole iterations reassembled from Vidur's per-layer operator timings.

A step of a dense model runs the same layer ``L`` times, so the layer is the unit of comparison: the sum of
the measured per-layer operators (norms, QKV GEMM, rotary, O GEMM, FFN GEMMs, activation, residual add)
against the sum of their predictions. Decode steps are ``num_tokens <= 256`` (a batch of sequences),
prefill steps are larger token counts. Vidur measured attention only for Llama-2-70B at TP 2 on A100;
those steps are reported separately with the attention kernel added (decode: ``batch`` sequences at a
cached context; prefill: one chunk on a cached context). All-reduces are not part of the sum: Vidur timed
them separately (they are fitted as their own operator class).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .dataset import Dataset, vidur_attention_rows, vidur_layer_rows

DECODE_MAX_TOKENS = 256


def _summary(measured: np.ndarray, predicted: np.ndarray) -> dict:
    if len(measured) == 0:
        return {"num_steps": 0}
    err = np.abs(predicted / measured - 1.0) * 100.0
    return {"num_steps": int(len(measured)), "median_abs_pct_err": float(np.median(err)),
            "p90_abs_pct_err": float(np.percentile(err, 90)),
            "median_pred_over_measured": float(np.median(predicted / measured))}


def layer_steps(ds: Dataset, hw: str, predicted: dict[str, float]) -> pd.DataFrame:
    """One row per (model, tp, num_tokens): measured and predicted per-layer sums.
    ``predicted`` maps a Vidur row reference (``model|tp|tokens|op``) to its predicted seconds."""
    rows = vidur_layer_rows(ds, hw)
    rows = rows.assign(pred=rows.ref.map(predicted))
    if rows.pred.isna().any():
        missing = rows.ref[rows.pred.isna()].iloc[0]
        raise KeyError(f"no prediction for {missing}")
    return rows.groupby(["model", "tp", "num_tokens"], as_index=False).agg(
        measured_s=("latency_s", "sum"), predicted_s=("pred", "sum"), num_ops=("op", "size"))


def summarize(ds: Dataset, hw: str, predicted: dict[str, float]) -> dict:
    """Iteration errors for one hardware: all layer steps, split into decode and prefill, and the
    attention-including steps where Vidur measured attention."""
    steps = layer_steps(ds, hw, predicted)
    decode = steps.num_tokens <= DECODE_MAX_TOKENS
    out = _summary(steps.measured_s.to_numpy(), steps.predicted_s.to_numpy())
    out["decode"] = _summary(steps.measured_s[decode].to_numpy(), steps.predicted_s[decode].to_numpy())
    out["prefill"] = _summary(steps.measured_s[~decode].to_numpy(), steps.predicted_s[~decode].to_numpy())
    out["by_model"] = {m: _summary(g.measured_s.to_numpy(), g.predicted_s.to_numpy())["median_abs_pct_err"]
                       for m, g in steps.groupby("model")}
    attn = vidur_attention_rows(ds, hw)
    if len(attn):
        joined = attn.merge(steps, left_on=["model", "tp", "tokens"], right_on=["model", "tp", "num_tokens"])
        joined["attn_pred"] = joined.ref.map(predicted)
        if joined.attn_pred.isna().any():
            raise KeyError(f"no prediction for {joined.ref[joined.attn_pred.isna()].iloc[0]}")
        measured = (joined.measured_s + joined.latency_s).to_numpy()
        pred = (joined.predicted_s + joined.attn_pred).to_numpy()
        kinds = joined.kind.to_numpy()
        out["with_attention"] = {
            "model": "/".join(sorted(set(joined.model))), "tp": sorted(int(t) for t in set(joined.tp)),
            "decode": _summary(measured[kinds == "decode"], pred[kinds == "decode"]),
            "prefill": _summary(measured[kinds == "prefill"], pred[kinds == "prefill"]),
        }
    return out
