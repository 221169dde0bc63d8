"""Whole layers on vLLM's own stack, predicted with the profile parameters.

Vidur's per-layer timings (:mod:`.iteration`) come from an older software stack than the one the profile
parameters are fitted on, and leave attention out. aiconfigurator measured vLLM's GEMMs, attention kernels and
all-reduce on a grid of shapes; where that grid holds every kernel of a catalog model's layer at some tensor
parallel degree, the layer is reassembled from them: the QKV, output, gate/up and down GEMMs, the attention
kernel, and at TP > 1 the two all-reduces of the hidden state. The measured sum is compared with the sum of
the held-out predictions of the parameters written to the profiles (every kernel predicted by the fold that
did not see its shape). aiconfigurator did not time norms, rotary, activation or residual add on vLLM, so
these layers leave them out on both sides.

Decode steps: ``batch`` sequences at a context of ``seq_len`` tokens (GEMMs of ``batch`` rows). Prefill
steps: ``batch`` prompts of ``seq_len`` tokens each (GEMMs of ``batch * seq_len`` rows).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..model import ModelSpec
from .dataset import ACT_BYTES, HEAD_DIM, MIN_PREFILL_LEN, Dataset, _keys
from .iteration import _summary

TP_DEGREES = (1, 2, 4, 8)


def layer_gemms(spec: ModelSpec, tp: int) -> list[tuple[int, int]]:
    """(n, k) of the layer's four GEMMs at tensor parallel ``tp``: QKV, output, gate/up, down (vLLM's
    column- and row-parallel linears; KV heads replicated when fewer than ``tp``)."""
    heads, kv_heads = spec.num_heads // tp, max(1, spec.num_kv_heads // tp)
    hd, hidden = spec.head_size, spec.hidden_size
    ffn = spec.ffn_size // tp
    return [((heads + 2 * kv_heads) * hd, hidden), (hidden, heads * hd),
            ((2 if spec.ffn_gated else 1) * ffn, hidden), (hidden, ffn)]


def layer_configs(specs: list[ModelSpec]) -> list[dict]:
    """Distinct layers (models with identical shapes share one) of dense catalog models whose attention is in
    the fitted domain (head_dim 128, no sliding window), at every TP degree that divides the heads."""
    out: dict[tuple, dict] = {}
    for spec in specs:
        if spec.num_experts > 1 or spec.head_size != HEAD_DIM or spec.sliding_window is not None:
            continue
        for tp in TP_DEGREES:
            if spec.num_heads % tp or spec.ffn_size % tp:
                continue
            gemms = layer_gemms(spec, tp)
            sig = (tuple(gemms), spec.num_heads // tp, max(1, spec.num_kv_heads // tp), tp, spec.hidden_size)
            out.setdefault(sig, {"models": [], "tp": tp, "gemms": gemms, "heads": sig[1], "kv_heads": sig[2],
                                 "hidden": spec.hidden_size})["models"].append(spec.name)
    return list(out.values())


def _table(ds: Dataset, hw: str, kind: str) -> pd.DataFrame:
    return ds.tables[f"aic_attention_{kind}"].query("hardware == @hw and head_dim == @HEAD_DIM")


def layer_steps(ds: Dataset, hw: str, configs: list[dict], kernels: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per (layer, kind, batch, seq_len) whose every kernel aiconfigurator measured on ``hw``.
    ``kernels[op_class]`` is indexed by the shape key of :mod:`.dataset` with columns ``measured_s`` and
    ``predicted_s``."""
    rows = []
    for cfg in configs:
        label = "/".join(sorted(cfg["models"]))
        for kind in ("decode", "prefill"):
            att = _table(ds, hw, kind)
            att = att[(att.num_heads == cfg["heads"]) & (att.num_kv_heads == cfg["kv_heads"])]
            if kind == "prefill":
                att = att[att.seq_len >= MIN_PREFILL_LEN]
            for batch, seq_len in sorted(set(zip(att.batch_size.astype(int), att.seq_len.astype(int)))):
                m = batch if kind == "decode" else batch * seq_len
                keys = [("gemm", _keys([m], [n], [k])[0]) for n, k in cfg["gemms"]]
                if kind == "decode":   # aiconfigurator's seq_len counts the new token (dataset.attention_points)
                    keys.append(("attention_decode", _keys([batch], [1], [seq_len - 1], [cfg["heads"]], [cfg["kv_heads"]], [HEAD_DIM])[0]))
                else:
                    keys.append(("attention_prefill", _keys([batch], [seq_len], [0], [cfg["heads"]], [cfg["kv_heads"]], [HEAD_DIM])[0]))
                if cfg["tp"] > 1:      # after the attention output and the down projection
                    keys += [("allreduce", f"{int(m * cfg['hidden'] * ACT_BYTES)}B/{cfg['tp']}")] * 2
                if not all(oc in kernels and key in kernels[oc].index for oc, key in keys):
                    continue
                got = [kernels[oc].loc[key] for oc, key in keys]
                attn = got[4]
                rows.append({"models": label, "tp": cfg["tp"], "kind": kind, "batch": batch, "seq_len": seq_len,
                             "num_tokens": m, "measured_s": float(sum(g.measured_s for g in got)),
                             "predicted_s": float(sum(g.predicted_s for g in got)),
                             "attention_s": float(attn.measured_s)})
    return pd.DataFrame(rows, columns=["models", "tp", "kind", "batch", "seq_len", "num_tokens", "measured_s",
                                       "predicted_s", "attention_s"])


def summarize(steps: pd.DataFrame) -> dict:
    """Errors over all steps, decode and prefill, and the layers they came from."""
    if not len(steps):
        return {"num_steps": 0}
    out = _summary(steps.measured_s.to_numpy(), steps.predicted_s.to_numpy())
    for kind in ("decode", "prefill"):
        part = steps[steps.kind == kind]
        out[kind] = _summary(part.measured_s.to_numpy(), part.predicted_s.to_numpy())
    out["layers"] = [{"models": m, "tp": int(tp), "num_steps": int(len(g)),
                      "median_abs_pct_err": float(np.median(np.abs(g.predicted_s / g.measured_s - 1.0)) * 100.0),
                      "attention_share": float(np.median(g.attention_s / g.measured_s))}
                     for (m, tp), g in steps.groupby(["models", "tp"], sort=True)]
    return out
