"""Rebuild ``simserve/calibration/data`` from the measured timings in ``/work/shared/calibration``.

Run ``python -m simserve.calibration.importer [SOURCE_DIR] [DEST_DIR]``. Needs pandas and pyarrow (the
``calibrate`` extra) because the aiconfigurator tables are parquet; fitting later reads only the
compressed CSVs written here. Latencies are converted from milliseconds to seconds (``latency_s``).
The output is byte-for-byte reproducible: rows are sorted, numbers are printed with a fixed format and
the gzip header carries no timestamp or file name. What is kept and why is in ``data/README.md``.
"""
from __future__ import annotations

import gzip
import sys
from pathlib import Path

import pandas as pd

DEFAULT_SOURCE = Path("/work/shared/calibration")
DEST = Path(__file__).resolve().parent / "data"

# aiconfigurator: newest vLLM tables per GPU (the engine simserve models) and NCCL for collectives.
AIC = {
    "a100-sxm-80gb": ("a100_sxm", "vllm/0.14.0", "nccl/2.27.3"),
    "h100-sxm-80gb": ("h100_sxm", "vllm/0.24.0", "nccl/2.29.2"),
}
VIDUR_COMPUTE = {"a100-sxm-80gb": "a100", "h100-sxm-80gb": "h100", "a40-48gb": "a40"}
# One topology per GPU: the NVSwitch DGX boxes match the A100/H100 profiles; A40 has only the pairwise box.
# (vidur's a100_pairwise_nvlink/send_recv.csv is byte-identical to the h100 one, so it is not used.)
VIDUR_NETWORK = {"a100-sxm-80gb": "a100_dgx", "h100-sxm-80gb": "h100_dgx", "a40-48gb": "a40_pairwise_nvlink"}
VIDUR_OPS = ("emb", "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
             "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")
MS = 1e-3
# GEMM tables kept: bf16, and vLLM's per-tensor FP8 linear (CutlassFP8ScaledMMLinearKernel, H100 only)
GEMM_DTYPES = {"bfloat16": "bf16", "fp8": "fp8"}


def _write(df: pd.DataFrame, name: str, dest: Path) -> None:
    df = df.sort_values(list(df.columns)).reset_index(drop=True)
    text = df.to_csv(index=False, float_format="%.6g", lineterminator="\n")
    with open(dest / name, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(text.encode())


def _aic_gemm(src: Path) -> pd.DataFrame:
    parts = []
    for hw, (gpu, fw, _) in AIC.items():
        d = pd.read_parquet(src / "aiconfigurator" / gpu / "gemm" / fw / "gemm_perf.parquet")
        d = d[d.gemm_dtype.isin(list(GEMM_DTYPES))]
        parts.append(pd.DataFrame({"hardware": hw, "dtype": d.gemm_dtype.map(GEMM_DTYPES), "m": d.m, "n": d.n, "k": d.k,
                                   "latency_s": d.latency * MS}))
    return pd.concat(parts)


def _aic_attention(src: Path, table: str) -> pd.DataFrame:
    parts = []
    for hw, (gpu, fw, _) in AIC.items():
        d = pd.read_parquet(src / "aiconfigurator" / gpu / "attention" / fw / f"{table}_attention_perf.parquet")
        keep = (d.kv_cache_dtype == "bfloat16") & (d.attn_dtype == "bfloat16")
        if "window_size" in d:
            keep &= d.window_size == 0
        d = d[keep]
        # context: every sequence is a fresh prompt of `isl` tokens; generation: one new token per
        # sequence whose total length (cached + new) is `step` (aiconfigurator collector/vllm/collect_attn.py).
        length = d.isl if table == "context" else d.step
        parts.append(pd.DataFrame({"hardware": hw, "kernel": d.kernel_source, "batch_size": d.batch_size,
                                   "seq_len": length, "num_heads": d.num_heads,
                                   "num_kv_heads": d.num_key_value_heads, "head_dim": d.head_dim,
                                   "latency_s": d.latency * MS}))
    out = pd.concat(parts)
    # a few context shapes were measured twice; keep the median so a shape is one row
    return out.groupby(list(out.columns[:-1]), as_index=False).latency_s.median()


def _aic_allreduce(src: Path) -> pd.DataFrame:
    parts = []
    for hw, (gpu, fw, nccl) in AIC.items():
        c = pd.read_parquet(src / "aiconfigurator" / gpu / "comm" / fw / "custom_allreduce_perf.parquet")
        parts.append(pd.DataFrame({"hardware": hw, "implementation": c.backend, "num_gpus": c.num_gpus,
                                   "message_bytes": c.message_size * 2, "latency_s": c.latency * MS}))
        n = pd.read_parquet(src / "aiconfigurator" / gpu / "comm" / nccl / "nccl_perf.parquet")
        n = n[(n.op_name == "all_reduce") & (n.nccl_dtype == "half")]
        parts.append(pd.DataFrame({"hardware": hw, "implementation": "nccl", "num_gpus": n.num_gpus,
                                   "message_bytes": n.message_size * 2, "latency_s": n.latency * MS}))
    return pd.concat(parts)


def _aic_moe(src: Path) -> pd.DataFrame:
    """vLLM's unquantized fused MoE (Triton) in bf16: one rank's ``fused_experts`` over ``num_tokens`` tokens
    with ``num_experts / moe_ep`` local experts of width ``inter_size / moe_tp`` (aiconfigurator
    collector/vllm/collect_moe.py); ``distribution`` is how the router's choices are spread."""
    parts = []
    for hw, (gpu, fw, _) in AIC.items():
        d = pd.read_parquet(src / "aiconfigurator" / gpu / "moe" / fw / "moe_perf.parquet")
        d = d[d.moe_dtype == "bfloat16"]
        parts.append(pd.DataFrame({"hardware": hw, "distribution": d.distribution, "num_tokens": d.num_tokens,
                                   "hidden_size": d.hidden_size, "inter_size": d.inter_size, "topk": d.topk,
                                   "num_experts": d.num_experts, "moe_tp": d.moe_tp_size, "moe_ep": d.moe_ep_size,
                                   "latency_s": d.latency * MS}))
    out = pd.concat(parts)
    return out.groupby(list(out.columns[:-1]), as_index=False).latency_s.median()


def _vidur_layer_ops(src: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    ops, models = [], []
    shape_cols = ["n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size", "use_gated_mlp"]
    for hw, gpu in VIDUR_COMPUTE.items():
        for path in sorted((src / "vidur" / "compute" / gpu).glob("*/*/mlp.csv")):
            model = f"{path.parent.parent.name}/{path.parent.name}"
            d = pd.read_csv(path)
            models.append(d[shape_cols].drop_duplicates().assign(model=model))
            for op in VIDUR_OPS:
                col = f"time_stats.{op}.median"
                if col not in d:
                    continue
                t = pd.DataFrame({"hardware": hw, "model": model, "tp": d.num_tensor_parallel_workers,
                                  "num_tokens": d.num_tokens, "op": op, "latency_s": d[col] * MS}).dropna()
                # a handful of (num_tokens, tp) rows were profiled twice; keep the median
                ops.append(t.groupby(["hardware", "model", "tp", "num_tokens", "op"], as_index=False).latency_s.median())
    shapes = pd.concat(models).drop_duplicates()
    if shapes.model.duplicated().any():
        raise ValueError("a vidur model has two different shapes")
    shapes["use_gated_mlp"] = shapes.use_gated_mlp.astype(int)
    return pd.concat(ops), shapes[["model"] + shape_cols]


def _vidur_attention(src: Path) -> pd.DataFrame:
    d = pd.read_csv(src / "vidur" / "compute" / "a100" / "meta-llama" / "Llama-2-70b-hf" / "attention.csv")
    kernel = d["time_stats.attn_prefill.median"].where(d.is_prefill, d["time_stats.attn_decode.median"])
    # the attention op is the kernel plus the Q/O reshapes around it
    total = kernel + d["time_stats.attn_input_reshape.median"].fillna(0) + d["time_stats.attn_output_reshape.median"].fillna(0)
    out = pd.DataFrame({"hardware": "a100-sxm-80gb", "model": "meta-llama/Llama-2-70b-hf",
                        "tp": d.num_tensor_parallel_workers, "is_prefill": d.is_prefill.astype(int),
                        "batch_size": d.batch_size, "prefill_chunk_size": d.prefill_chunk_size,
                        "kv_cache_size": d.kv_cache_size, "latency_s": total * MS}).dropna()
    return out.groupby(list(out.columns[:-1]), as_index=False).latency_s.median()


def _vidur_network(src: Path) -> pd.DataFrame:
    parts = []
    for hw, topo in VIDUR_NETWORK.items():
        for coll in ("all_reduce", "send_recv"):
            path = src / "vidur" / "network" / topo / f"{coll}.csv"
            if not path.is_file():
                continue
            d = pd.read_csv(path)
            # vidur writes `size` in bytes (2 x fp16 elements, vidur/profiling/collectives/collectives_wrapper.py)
            parts.append(pd.DataFrame({"hardware": hw, "collective": coll, "num_workers": d.num_workers,
                                       "devices_per_node": d.devices_per_node, "message_bytes": d["size"],
                                       "latency_s": d[f"time_stats.{coll}.median"] * MS}).dropna())
    return pd.concat(parts)


def regenerate(source: Path = DEFAULT_SOURCE, dest: Path = DEST) -> list[str]:
    """Write the data files; returns their names."""
    dest.mkdir(parents=True, exist_ok=True)
    layer_ops, shapes = _vidur_layer_ops(source)
    tables = {
        "aic_gemm.csv.gz": _aic_gemm(source),
        "aic_attention_prefill.csv.gz": _aic_attention(source, "context"),
        "aic_attention_decode.csv.gz": _aic_attention(source, "generation"),
        "aic_allreduce.csv.gz": _aic_allreduce(source),
        "aic_moe.csv.gz": _aic_moe(source),
        "vidur_layer_ops.csv.gz": layer_ops,
        "vidur_models.csv.gz": shapes,
        "vidur_attention.csv.gz": _vidur_attention(source),
        "vidur_network.csv.gz": _vidur_network(source),
    }
    for name, df in tables.items():
        _write(df, name, dest)
    return sorted(tables)


if __name__ == "__main__":
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else DEST
    for name in regenerate(src, out):
        print(out / name)
