"""``render_report_md``: the calibration report (``docs/calibration.md``) from a :class:`CalibrationResult`.

Deterministic: the text depends only on the result (no clock); numbers have fixed formats.
"""
from __future__ import annotations

from .dataset import HEAD_DIM, MIN_GEMM_DIM, MIN_PREFILL_LEN, OP_CLASSES
from .fit import FIXED, FREE, K_FOLDS, SEED
from .iteration import DECODE_MAX_TOKENS
from .profiles import CARRY_OVER, DATA_DATE

# Why a class is hard to fit, from inspecting the residuals of this data set (quoted in the report when the
# class misses a target).
WHY = {
    "gemm": "cuBLAS picks a different tile/split-K kernel per shape, so efficiency jumps by 10-20% between "
            "neighbouring shapes near the ridge point (m of 64-512) and for small weights; a smooth roofline "
            "follows the trend, not the jumps (modelled: a sqrt(k) split-K latency, whole row tiles in m, 64 rows "
            "or the profile's gemm_row_tile, and whole waves of the profile's gemm_wave_tile where the stack runs "
            "them).",
    "gemm_fp8": "vLLM's FP8 linear layer is two kernels, the input's quantization (one thread block per token) and "
                "CUTLASS's FP8 GEMM, whose tile vLLM picks by m alone (64 x 64, 64 x 128 or 128 x 128, with no split of "
                "k), both modelled (`ops.fp8_linear_time`). By band the held-out medians stay within 0.89-1.15 "
                "(`python benchmarks/calibration_variants.py`, variant 8: weights of up to 2048 columns at up to 64 or "
                "129-512 tokens over-predicted by 13-15%, products of more than 512 tokens under-predicted by 2-11%); "
                "the p90 is single shapes scattered around them (CUTLASS's per-shape behaviour inside a tile "
                "configuration). Priced as before this class, as bf16 GEMMs at the FP8 peak, the same timings came "
                "out at a median 0.60 of their measured time (39.6% / 67.9%).",
    "attention_prefill": "occupancy is modelled in whole waves (a kernel's query tiles x heads run "
                         "concurrent_blocks at a time, about 1.1 per SM on A100 and 1.5 on H100, so a small grid "
                         "leaves SMs idle and a part-empty last wave costs a whole one), but prompts of 64-128 "
                         "tokens at small batch are still over-predicted by 10-20%: FlashAttention's per-shape "
                         "tile and split choices, which per-batch sums cannot follow.",
    "attention_decode": "the launch grid of vLLM 0.14's FlashAttention-2 decode is modelled (KV-tile walks in "
                        "waves of two blocks per SM, its split-KV heuristic and combine kernel, the grouped-query "
                        "regrouping copies, per-unit costs alongside the KV stream), but what remains are batches "
                        "with as many query as KV heads at contexts up to ~256 tokens, over-predicted by 15-30% "
                        "(their blocks cost less than grouped-query ones), and a single sequence with one KV head "
                        "at 8k-32k tokens, under-predicted by 20-30% (its up to 128 splits cost more than the "
                        "combine kernel's walk over them accounts for).",
    "elementwise": "each kernel has its own bytes, FLOPs and launch grid (norm, rotary and activation run "
                   "one thread block per token, a row per SM at a time; the residual add streams near full "
                   "DRAM bandwidth, faster where its tensors fit in L2), and the trend is right per operator "
                   "(held-out predicted/measured: {by_op}); what remains are norms of 256-2048 tokens whose "
                   "tensors fit in L2 (over-predicted by up to ~25%: their rows wait less on memory than the "
                   "per-block rate fitted over all sizes), rotary embeddings of narrow rows (TP 4-8) and of "
                   "more than 4096 tokens (under-predicted by 10-15%), and single-wave activations (over-"
                   "predicted by ~10%). Tried and rejected: a per-row latency for every per-token kernel, rows "
                   "whose rate scales with the threads per block (vLLM: 1024 for norm and activation, 512 for "
                   "rotary), two resident 1024-thread blocks per SM with the L2 speedup on rows, a "
                   "per-iteration latency model; each was worse held out.",
    "allreduce": "the model follows vLLM's algorithms (custom one-/two-shot kernel below 8 MiB, NCCL's ring "
                 "above, or NVLS where the switch reduces); what remains is the 8-16 MiB step where vLLM hands "
                 "over to NCCL, which is ~20% cheaper than NCCL's fixed cost plus bytes predicts.",
    "send_recv": "Vidur's send/recv between the two GPUs of a node is a single stream of messages; the fit "
                 "is good inside a node.",
    "moe": "vLLM picks the fused MoE kernel's block sizes from tuned tables per (experts, width, GPU) where it "
           "has them and its default rule otherwise; the model pads every expert's rows by the default rule "
           "only, so tuned shapes step elsewhere (H100, held out: Mixtral-8x7B's shape at TP 1 and 320-1024 "
           "tokens is predicted at a median 0.66 of its time). One fixed cost serves the whole kernel sequence, "
           "so batches of 1-4 tokens are over-predicted (median 1.10), and the work over every token-expert pair "
           "(sorting, the activation, zero rows for other devices' experts) costs more than its bytes at wide "
           "parallelism (EP 128-256 or TP 32 at 16-1024 tokens: median 0.81); the rest sits at a median 1.00 "
           "(`python benchmarks/calibration_variants.py`, variant 6). A100's only timings route by a power law (a "
           "few hot experts), which the model's uniform routing does not describe (H100's power-law timings, "
           "predicted by its balanced-routing fit, are off by a median 13-14%: see the cross-checks).",
}

# Why same-stack whole layers still miss (quoted when one does; figures from benchmarks/calibration_variants.py).
ITERATION_WHY = (
    "The same-stack layer error is the GEMMs' error, where cuBLAS's choice of kernel per shape steps away from a "
    "roofline of (m, n, k) over documented tiles. A40's decode layers miss on the p90 in two bands of token "
    "counts (`python benchmarks/calibration_variants.py`, variant 7, median signed / p90 absolute error): "
    "33-64 tokens -2.7%/15.0% and 129-256 tokens +2.3%/14.2%, against 6.9% and 8.1% (p90) for 1-32 and 65-128 "
    "tokens: at 33-64 rows its kernels are slower than the 64-row tile predicts, and above 128 rows the "
    "64-row staircase misses both ways.")
# Why vLLM-stack whole layers miss (quoted when one does; figures from benchmarks/calibration_variants.py).
VLLM_WHY = (
    "H100's prefill layers on vLLM 0.24 miss on the median by a trend in size (`python "
    "benchmarks/calibration_variants.py`, variant 5): one flops_fraction serves every product, so layers of "
    "128-1024 tokens are over-predicted (+4.7% to +9.6%, median per token count) and those of 4096 and more "
    "under-predicted (-4.4% to -6.5%): cuBLAS's kernels for large products reach a higher fraction of the peak "
    "than those for mid-sized ones. Its GEMMs neither step in whole tiles (variant 4: one row past 512, 768 or "
    "1024 costs a median 4.5-6.4% more, where a whole extra 128-row tile would cost 13-25%) nor plateau in "
    "waves (variant 3).")


def _f(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def _mark(median: float, p90: float, t_med: float, t_p90: float) -> str:
    return "yes" if median <= t_med and p90 <= t_p90 else "**no**"


def _param_cell(p: dict) -> str:
    out = [f"{p['flops_fraction']:.3f}", f"{p['bandwidth_fraction']:.3f}", f"{p['overhead_us']:.2f}"]
    out.append("-" if p.get("overlap_exponent") is None else f"{p['overlap_exponent']:.2f}")
    out.append(f"{p.get('unit_overhead_ns', 0.0):.1f}")
    out.append(f"{p.get('hop_latency_scale', 1.0):.3f}")
    out.append("-" if p.get("row_bandwidth_gb_s") is None else f"{p['row_bandwidth_gb_s']:.2f}")
    out.append("-" if p.get("concurrent_blocks") is None else f"{p['concurrent_blocks']:.0f}")
    out.append(f"{p.get('reduction_overhead_us', 0.0):.2f}")
    out.append(f"{p.get('relayout_overhead_us', 0.0):.2f}")
    out.append("-" if p.get("switch_bandwidth_fraction") is None else f"{p['switch_bandwidth_fraction']:.3f}")
    out.append("-" if p.get("l2_speedup", 1.0) == 1.0 else f"{p['l2_speedup']:.2f}")
    out.append(f"{p.get('splitk_latency_ns', 0.0):.1f}")
    return " | ".join(out)


def _iteration_rows(it: dict, hw: str, label: str, t: dict) -> list[str]:
    rows = []
    for part in ("all", "decode", "prefill"):
        s = it if part == "all" else it[part]
        if not s.get("num_steps"):
            continue
        rows.append(f"| {hw} | {label} | {part} | {s['num_steps']} | {_f(s['median_abs_pct_err'])} | "
                    f"{_f(s['p90_abs_pct_err'])} | {s['median_pred_over_measured']:.3f} | "
                    f"{_mark(s['median_abs_pct_err'], s['p90_abs_pct_err'], t['iteration_median'], t['iteration_p90'])} |")
    return rows


def render_report_md(result) -> str:
    r, t = result.report, result.report["targets"]
    hws = list(r["fit"])
    out = [
        "# Step-time calibration",
        "",
        "Generated by `simserve calibrate --report` from the measurements in `simserve/calibration/data` "
        f"(SHA-256 `{result.data_sha256}`, imported {DATA_DATE}; sources and licences in that folder's "
        "README). Do not edit by hand: change the code or the data and regenerate.",
        "",
        "## Method",
        "",
        "- Every measured kernel becomes a point with FLOPs and bytes from the formulas of "
        "`simserve/cost/ops.py` (the same arguments `simserve/cost/step.py` passes) and the device's peaks "
        "from its hardware profile.",
        "- Each (device, operator class) is fitted by minimising the mean |log(predicted/measured)| with a "
        "deterministic numpy Nelder-Mead (coarse grid start, restarts). Repeated measurements of one shape "
        "count once (their median).",
        f"- Held-out error is by shape: distinct shape keys are shuffled with seed {SEED} and dealt into "
        f"{K_FOLDS} folds; every point is predicted by parameters fitted without its fold. Errors are "
        "|predicted/measured - 1| in percent.",
        "- **Basis.** A class is fitted on aiconfigurator's vLLM tables where they exist (vLLM 0.14 on A100, "
        "0.24 on H100: the engine simserve models), otherwise on Vidur's. The two projects ran different "
        "software stacks and disagree by more than the targets at identical shapes (see cross-checks), so "
        "they are never pooled. A40 has only Vidur data; its attention and all-reduce are carried over from "
        "A100.",
        f"- **Fitted domain.** GEMM: n and k >= {MIN_GEMM_DIM} (dense layers at TP <= 8; smaller ones are "
        f"MoE routers). Attention: head_dim {HEAD_DIM} (FlashAttention picks other tiles for other sizes), "
        f"prefill prompts >= {MIN_PREFILL_LEN} tokens, bf16 KV cache, no sliding window. All-reduce: vLLM "
        "under CUDA graphs. Send/recv: the two GPUs of one node. MoE: vLLM's fused experts in bf16 with the "
        "most even routing aiconfigurator measured on the device (`balanced` on H100; A100 has only power-law "
        "routers, and is fitted on the milder, alpha 1.01), except models with a balanced-routing timing faster "
        "than reading their touched experts' weights at the HBM peak (two of H100's sixteen). Points outside are "
        "predicted as cross-checks.",
        "- **FP8 linear layers** (`ops.fp8_linear_time`, class `gemm_fp8`). With FP8 activations (W8A8-FP8, "
        "per-tensor scales) vLLM runs a linear layer as two kernels (aiconfigurator's vLLM collector times "
        "`RowParallelLinear` with a static activation scale): the input quantized to FP8 "
        "(`static_scaled_fp8_quant`, one thread block per token, so its rows run in waves of the SM count at a "
        "fitted per-block `row_bandwidth_gb_s`, or its 3 bytes per element at the bandwidth when that is longer), "
        "then CUTLASS's FP8 GEMM, whose tile vLLM picks by m rounded up to a power of two "
        "(`cutlass_gemm_sm90_fp8_dispatch` in vLLM's `scaled_mm_c3x`: 64 x 64 tiles in clusters of 8 along n up to "
        "64 rows, 64 x 128 up to 128, 128 x 128 above, both in clusters of 2 along the tokens) and runs with a "
        "persistent scheduler and no split of k, so its compute time is whole waves of whole tiles over the SMs, "
        "idle SMs below one wave included. Fitted on H100's timings (A100 has no FP8 tensor cores; H200 and B200 "
        "carry H100's); the step model uses it for every dense linear layer when the activations are FP8, the "
        "GEMM class otherwise. Priced before as bf16 GEMMs at the FP8 peak, these timings came out at a median "
        "0.60 of their measured time (`python benchmarks/calibration_variants.py`, variant 8).",
        "- **MoE layers** (`ops.moe_work`, `ops.moe_time`). vLLM runs a routed FFN as one sequence of kernels "
        "(`fused_experts`): the token-expert pairs are sorted by expert and each expert's rows padded to a whole "
        "block (16 rows when the tokens are no more than the experts, else 64: vLLM's default config), two "
        "grouped GEMMs (gate/up and down) read the touched experts' weights, and the activation and the top-k "
        "sum run over every pair of every token (with expert parallelism the GEMMs also write zero rows for "
        "the other devices' pairs). The GEMMs take the roofline over their padded rows, the kernels around them "
        "their bytes at the same bandwidth fraction, plus a fixed cost and a cost per token-expert pair "
        "(`unit_overhead_ns`). Before this class the experts were priced as one GEMM with the dense GEMM "
        "fractions and no padding: on H100's balanced-routing timings that predicted a median 0.62 of the "
        "measured time (`python benchmarks/calibration_variants.py`, variant 6).",
        "- **GEMM latency in k** (`ops.gemm_time`). A GEMM's fixed cost grows as the square root of its inner "
        "dimension: `overhead_us + splitk_latency_ns * sqrt(k)` (fitted). A thread block walks its slice of k "
        "serially and cuBLAS splits k across blocks whose partial sums are then reduced; a split into s parts "
        "costs `a k / s + b s`, least at `2 sqrt(a b k)`. Without it the roofline over-predicted large weights "
        "(n x k >= 2^27) by 10-18% at every m and under-predicted mid-size ones by 3-5%. It took the held-out "
        "p90 from 20.5% to 19.2% on A100 and from 19.7% to 16.0% on H100 (A40: unchanged); a latency linear "
        "in k gained half a point, one in log2(k) as much as sqrt(k) but with the fixed overhead fitted to "
        "zero on H100. MoE expert GEMMs (a fused grouped kernel) do not take this term.",
        "- **GEMM row tiles** (`ops.gemm_rows`). A GEMM thread block multiplies a fixed tile of activation "
        "rows, so a partial tile costs a whole one: the compute time counts m rounded up to a power of two up "
        "to 64 rows (skinny products take the smallest tile that covers m) and to whole 64-row tiles above "
        "(FLOPs reported stay the product's own). Vidur's per-layer timings show the staircase on all three "
        "GPUs: at a fixed weight the time is flat in m inside a tile and steps when m passes a boundary (A100, "
        "weights above 100 MB, relative to one row: x1.06 at 64 rows, x1.25 at 72-128, x1.7-1.9 at 136-256), "
        "where the smooth roofline ramps through them, so decode layers of 96-128 tokens were over-predicted "
        "and those of 129-160 under-predicted by 5-7% on every GPU. It took the same-stack decode layer error "
        "(median/p90) from 4.8%/12.2% to 4.5%/9.9% on A100, 4.6%/12.6% to 4.5%/12.2% on H100 and 4.3%/12.5% "
        "to 4.3%/12.0% on A40; held-out GEMM p90 on A100 19.2% -> 19.1%, H100 16.0% -> 16.3%, A40 16.4% -> "
        "16.2%. Tried: 128-row tiles on every device (A100's vLLM GEMM p90 20.2% and its decode layers 12.4%), 64-row tiles from one row (A100 "
        "decode 4.2%/10.1%, H100 4.0%/12.6%), tiles of 32 rows (A100 decode 4.9%/11.8%, H100 4.7%/13.0%), no padding below 64 rows (slightly worse "
        "everywhere), and a hard max instead of the fitted overlap exponent (much worse: the tiles do not "
        "replace it).",
        "- **Hopper's 128-row GEMM tiles** (profile `gemm_row_tile`). The row tile is a fact of the device's "
        "kernels, not fitted: 64 rows unless the hardware profile documents another. H100 (and H200, the same "
        "GH100) documents 128: vLLM's own H100 kernel trace (vllm-project/vllm `docs/contributing/profiling.md`, "
        "nsys stats of Llama-3.1-8B serving) shows its dense GEMMs running cuBLAS's "
        "`sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n` kernels with tiles of 128x128x64, 256x128x64, 64x128x64 and "
        "64x64x64 (88% of their GEMM kernel time in the first three); PyTorch's linear layer calls cuBLAS in the TN "
        "layout with the weight as the first operand, so the tokens run along the tile's second size, 128 in "
        "those three. Which kernel cuBLAS picks per shape is closed (the 64x64x64 one is the exception); "
        "skinny products still take the smallest "
        "power-of-two tile that covers m. It took H100's same-stack layer error (median/p90) from 3.9%/11.9% to "
        "3.6%/10.3% (decode 4.5%/12.2% to 4.0%/9.5%, prefill 3.9%/11.8% to 3.5%/10.4%) and its vLLM GEMM class "
        "from 5.7%/16.3% to 5.8%/17.0%; A100 and A40 are unchanged. Tried on H100 and not kept (worse, or "
        "without a documented basis): wave quantisation over the 132 SMs with fixed tiles (H100's vLLM timings "
        "show no wave plateaus: see the next bullet), a fixed cost per wave of tiles, the sqrt(k) latency only "
        "below one wave, the larger of the roofline and that latency instead of their sum, a pipeline fill and "
        "drain per output tile, no tiles below 64 rows, clusters pairing tiles along the weight's rows "
        "(CUTLASS's 2 x 1 x 1), and weights larger than the L2 re-read once per row tile (every large GEMM "
        "memory-bound).",
        "- **Each stack's GEMM kernels** (profile `gemm_wave_tile`, `ops.gemm_wave_fill`; "
        "`dataset.VIDUR_GEMM_ROW_TILE`). Tiles are facts of the kernels a software stack runs, read from its "
        "own timings and named kernels, never fitted; two differ from the rules above. (a) On vLLM's A100 "
        "stack a grid of more than one wave runs in whole waves of 128-token by 256-weight-column tiles over "
        "the 108 SMs, so its compute is slowed by the part-empty last wave (`tiles / (SMs x waves)`). In "
        "aiconfigurator's A100 table a product with n = 12288 and k = 4096 takes 104 us at 256 rows, 204 us at "
        "384 and at 512, 306 us at 768 and 406 us at 1024: one to four such waves. Over the table (n, k >= "
        "1024, from 256 rows, beyond one wave) neighbouring row counts whose grids take as many waves differ "
        "by a median x1.008 for x1.33 the rows, and those that add waves by x1.90 for x2.00 the rows, where "
        "H100's vLLM timings follow the rows (x1.054 for x1.07; `python benchmarks/calibration_variants.py`, "
        "variant 3). cuBLAS's sm80 bf16 kernels include this tile "
        "(`ampere_bf16_s16816gemm_bf16_256x128_ldg8_f2f_stages_64x3_tn` in public nsys traces of PyTorch "
        "models: 256 of cuBLAS's M, the weight in PyTorch's TN call, by 128 of its N, the tokens). A grid of "
        "one wave or less is not slowed: there cuBLAS fills the device with smaller tiles or a split of k (the "
        "64-row tiles and the sqrt(k) latency). Waves took A100's vLLM-stack layers from 3.1%/10.5% to "
        "2.6%/6.6% (median/p90) and its GEMM class from 7.2%/19.1% to 6.8%/19.2%; waves of 64-row tiles gave "
        "7.5%/21.0% and 3.2%/7.5% (variant 3; an earlier version of this report described that run as 128 x "
        "256 tiles). Vidur's older A100 stack steps at every 64-row tile instead (GEMM row tiles bullet) and "
        "is fitted without waves. (b) Vidur's H100 stack pairs its 128-row tiles along the tokens: its "
        "timings step at every second 128-row tile (variant 1: entering an odd tile costs a median x1.075, an "
        "even one x1.018, where A100's 1.059/1.043 and A40's 1.054/1.065 show no pairing), as cuBLAS's sm90 "
        "kernels launched in clusters of two along N do (`cgasize1x2x1` in their names, e.g. "
        "`sm90_xmma_gemm_f16f16_f16f32_f32_nt_n_tilesize128x128x64_cgasize1x2x1_...`; a cluster launch covers "
        "whole clusters, and cuBLAS's N is the tokens in PyTorch's TN call). That stack's GEMMs are fitted in "
        "256-row steps, which took H100's same-stack layers from 3.6%/10.3% to 3.7%/9.8% and that stack's "
        "GEMM class from 6.1%/18.2% to 6.4%/19.4% (variant 2). vLLM's own H100 trace names no clusters, so the "
        "profile (vLLM's stack) keeps 128-row tiles.",
        "- **All-reduce on a reducing switch.** Where the profile says the intra-node switch reduces "
        "(`interconnect.switch_reduction`: H100's third-generation NVSwitch, NVLink SHARP), NCCL's large "
        "messages take the faster of the ring (2(p-1)/p of the message per device) and NVLS (the switch sums "
        "and multicasts, so each device sends and receives the message once) at its own fitted "
        "`switch_bandwidth_fraction` of the link; devices without it (A100, A40) do not fit that parameter.",
        "- **Prefill attention in waves** (`ops.occupancy`). FlashAttention's forward kernel launches one "
        "thread block per (query tile of 128 rows, head), and at most `concurrent_blocks` (fitted) run at "
        "once, so the blocks run in `ceil(blocks / concurrent_blocks)` waves and the compute part is slowed by "
        "`blocks / (concurrent_blocks * waves)`: idle SMs below one wave, a part-empty last wave above it. "
        "Counting only the first (`min(1, blocks / concurrent_blocks)`) under-predicted single prompts of "
        "512-2048 tokens by ~10%; whole waves took the held-out A100 prefill error from 5.8%/22.5% "
        "(median/p90) to 4.8%/18.4%, H100 from 5.4%/17.8% to 6.0%/18.3%.",
        "- **Decode attention's launch grid** (`ops.decode_attention_time`, `ops.decode_launch`). vLLM 0.14 runs "
        "FlashAttention-2's split-KV kernel (flash-attention's `flash_api.cpp`, `flash_fwd_launch_template.h`): a "
        "thread block walks its KV tiles (128 keys at head_dim 128) one after another, two blocks per SM. With "
        "grouped queries a KV head's queries are regrouped into one tile (`seqlenq_ngroups_swapped`), and a batch "
        "whose (sequence, KV head) blocks fill less than 80% of the block slots has its context split by "
        "`num_splits_heuristic` (re-derived in `ops.splitkv_splits`: the fewest splits whose waves are at least 85% "
        "as full as the fullest), after which a combine kernel merges the parts. From per-batch sums the context is "
        "the batch mean. The model: the kernel's fixed `overhead_us` covers a block's first tile, each further "
        "tile costs its K and V at `row_bandwidth_gb_s`, in waves of twice the SM count, when that is longer than "
        "the roofline; the per-(sequence, KV head) cost `unit_overhead_ns` runs alongside the KV stream (the "
        "larger of the two, not their sum: at 2048 sequences of 1-63 keys the time is flat while the bytes grow "
        "64-fold); the two regrouping copies cost `relayout_overhead_us` plus the queries and outputs they read "
        "and write, and the combine kernel the same `relayout_overhead_us` (free fits gave 5.7 us for each on "
        "A100) plus its walk over the splits: a combine block merges 4 output rows (`kBlockM` at head_dim 128) "
        "and reads each split's fp32 partial rows in turn, at `row_bandwidth_gb_s`. Measured, A100 decode time "
        "is a staircase in the context at multiples of 128 keys, and a single "
        "grouped-query sequence jumps by ~6 us when its context passes 128 keys and splits. These terms took the "
        "held-out A100 decode error from 7.4%/29.9% (median/p90) to 3.9%/13.4% (the combine kernel alone: "
        "5.0%/23.0%; plus per-unit costs alongside the stream: 4.5%/21.2%; plus tile walks: 4.4%/17.2%; plus the "
        "copies' bytes: 3.9%/14.7%; plus the combine's walk over splits: 3.9%/13.4%), H100 (vLLM 0.24, whose "
        "fit puts the combine and copy cost near 0.1 us) from 5.1%/18.8% to 5.6%/18.5%.",
        "- **Streaming kernels** (`ops.streaming_s`). vLLM's RMSNorm, rotary and SiLU-and-mul kernels launch "
        "one thread block per token (`grid(num_tokens)` in vLLM's csrc/layernorm_kernels.cu, "
        "pos_encoding_kernels.cu and activation_kernels.cu), so a block walks its row at the fitted "
        "`row_bandwidth_gb_s` and rows run in waves of `concurrent_blocks`, fixed at the device's SM count "
        "(`sm_count`; free fits gave 115 on A100's 108 SMs and 142 on H100's 132). RMSNorm reduces each row "
        "across its block (a `cub::BlockReduce`, then a second pass over the row), a latency every row pays: "
        "`reduction_overhead_us` per wave of rows (until this version it was charged once per kernel, which "
        "made large-token norms 25% too fast). The DRAM-bound part is sped up where the kernel's footprint "
        "(its bytes) fits in the L2 cache (`l2_cache_mb` in the profile: 40 MB on A100 and 50 MB on H100, "
        "NVIDIA's A100 whitepaper and Hopper in-depth blog; 6 MB on A40's GA102, its whitepaper): its bytes "
        "then move `l2_speedup` times faster (fitted); a larger footprint streams from DRAM, since a pass over "
        "more than the cache evicts its lines before they are used again (a share `min(1, L2 / footprint)` "
        "served from L2 instead was tried: the same on A100, worse on A40, 21.8% against 18.6% p90, and H100, "
        "20.1% against 19.9%). This is what Vidur's timings show: on A100 the residual add of 1-32 MB was over-predicted by 10-37% by the DRAM rate alone "
        "(at 512-1024 tokens it moves 2.1 TB/s, above the 2.04 TB/s DRAM peak) and agrees again above ~64 MB. "
        "In a serving step the norm's and add's inputs were written by the kernel just before, so they "
        "are in L2 when they fit too. A norm's row walk also moves `l2_speedup` times faster when its "
        "footprint fits: behind the block-wide reduction (a barrier) a block cannot overlap its loads, so "
        "its rows are latency-bound and L2's shorter latency shortens them. Without this, norms of 256-2048 "
        "tokens were over-predicted by 15-28% on A100 (held-out elementwise p90 20.9% against 18.6% with it; "
        "H100 19.9% against 18.8%, A40 18.6% against 18.2%); applying it to the rotary and activation rows "
        "too (no barrier) was worse (21.3% on A100), and shortening only the reduction's latency in L2 gained "
        "less (19.4%).",
        "- **Streaming-kernel domain.** Models with a gated FFN and RMSNorm, whose kernels are the vLLM ones "
        "simserve prices. Vidur's one plain-FFN model (phi-2) runs PyTorch's LayerNorm and GELU, a partial "
        "rotary and a parallel attention/FFN block: other kernels (its LayerNorm is half the predicted time "
        "at small batch and 1.6x at large), so its streaming ops are predicted as a cross-check.",
        "",
        "Parameters per class (OpEfficiency fields; the rest stay at their plain-roofline defaults):",
        "",
        "| class | fitted | fixed |",
        "|---|---|---|",
    ]
    for oc in OP_CLASSES:
        fixed = ", ".join(f"{k} = {v}" for k, v in FIXED.get(oc, {}).items()) or "-"
        if oc == "gemm":
            fixed += (" (the profile's gemm_row_tile where given: 128 on H100; 256 on Vidur's H100 stack); "
                      "wave_tile = the profile's gemm_wave_tile and concurrent_blocks = sm_count where given "
                      "(A100, vLLM's stack)")
        if oc in ("elementwise", "gemm_fp8"):          # fit_points: the device's SM count
            fixed = "concurrent_blocks = sm_count" if fixed == "-" else fixed + ", concurrent_blocks = sm_count"
        out.append(f"| {oc} | {', '.join(FREE[oc])} | {fixed} |")
    out += ["", "## Held-out error per operator class", "",
            f"Targets: median <= {t['op_median']:.0f}%, p90 <= {t['op_p90']:.0f}%.", "",
            "| device | class | basis | measurements | shapes | median % | p90 % | target met |",
            "|---|---|---|---|---|---|---|---|"]
    for hw in hws:
        for oc in OP_CLASSES:
            f = r["fit"][hw].get(oc)
            if f is None and oc not in r["carried_over"][hw]:
                continue                                  # the device cannot run it (no FP8 tensor cores)
            if f is None:
                out.append(f"| {hw} | {oc} | not measured (from {r['carried_over'][hw][oc]}) | | | | | |")
                continue
            out.append(f"| {hw} | {oc} | {f['source']} | {f['num_measurements']} | {f['num_points']} | "
                       f"{_f(f['median_abs_pct_err'])} | {_f(f['p90_abs_pct_err'])} | "
                       f"{_mark(f['median_abs_pct_err'], f['p90_abs_pct_err'], t['op_median'], t['op_p90'])} |")
    out += ["", "## Fitted parameters", "",
            "| device | class | flops_fraction | bandwidth_fraction | overhead_us | overlap_exponent | "
            "unit_overhead_ns | hop_latency_scale | row_bandwidth_gb_s | concurrent_blocks | reduction_overhead_us | "
            "relayout_overhead_us | switch_bandwidth_fraction | l2_speedup | splitk_latency_ns |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for hw in hws:
        for oc in OP_CLASSES:
            if oc in result.params[hw]:
                note = "" if oc in r["fit"][hw] else f" (from {r['carried_over'][hw][oc]})"
                out.append(f"| {hw} | {oc}{note} | {_param_cell(result.params[hw][oc])} |")
    out += ["", "## Whole iterations", "",
            "Vidur measured every operator of one decoder layer of real models (Llama-2 7B/70B, Llama-3 "
            "8B/70B on A100, CodeLlama-34B, InternLM-20B, Qwen-72B, phi-2) at many token counts and TP degrees. "
            "A step repeats that layer, so the per-layer sum of the measured operators is compared with the sum "
            f"of their held-out predictions. Decode steps: <= {DECODE_MAX_TOKENS} tokens (a batch of "
            "sequences); prefill steps: more. Vidur did not measure attention for these models (except "
            "below), so these sums leave attention out on both sides; all-reduce is fitted separately. "
            f"Targets: median <= {t['iteration_median']:.0f}%, p90 <= {t['iteration_p90']:.0f}%.", "",
            "- *profile parameters*: the parameters written to the profiles (fitted on the basis above). On "
            "A100 and H100 their GEMMs come from vLLM's newer stack, which is faster than Vidur's, so this "
            "row measures the stack gap as much as the model.",
            "- *same stack*: every operator predicted by parameters fitted on Vidur's own timings (held out by "
            "shape): how well per-operator roofline predictions compose into a layer.", "",
            "| device | parameters | steps | count | median % | p90 % | predicted/measured | target met |",
            "|---|---|---|---|---|---|---|---|"]
    for hw in hws:
        out += _iteration_rows(r["iteration"][hw], hw, "profile", t)
        out += _iteration_rows(r["iteration_in_stack"][hw], hw, "same stack", t)
    for hw in hws:
        for label, key in (("profile", "iteration"), ("same stack", "iteration_in_stack")):
            wa = r[key][hw].get("with_attention")
            if not wa:
                continue
            if label == "profile":
                out += ["", f"With attention ({wa['model']}, TP {', '.join(map(str, wa['tp']))} on {hw}, the only "
                        "model Vidur measured attention for: each attention row is one step, the layer at the "
                        "same token count plus the attention kernel):", "",
                        "| parameters | steps | count | median % | p90 % | predicted/measured |", "|---|---|---|---|---|---|"]
            for part in ("decode", "prefill"):
                s = wa[part]
                if s.get("num_steps"):
                    out.append(f"| {label} | {part} | {s['num_steps']} | {_f(s['median_abs_pct_err'])} | "
                               f"{_f(s['p90_abs_pct_err'])} | {s['median_pred_over_measured']:.3f} |")
    vllm = {hw: r.get("iteration_vllm", {}).get(hw) for hw in hws}
    vllm = {hw: v for hw, v in vllm.items() if v and v.get("num_steps")}
    if vllm:
        out += ["", "### Whole layers on vLLM's stack", "",
                "The layers above are Vidur's older stack. aiconfigurator timed vLLM's own GEMMs, attention and "
                "all-reduce (the basis of the profile parameters) on a grid of shapes; where the grid holds every "
                "kernel of a catalog model's layer, the layer is reassembled from them: QKV, output, gate/up and "
                "down GEMMs, the attention kernel (decode: `batch` sequences at a context of `seq_len`; prefill: "
                "`batch` prompts of `seq_len` tokens), and at TP > 1 two all-reduces of the hidden state. Every "
                "kernel is predicted by the *profile parameters* of the fold that did not see its shape. Norms, "
                "rotary, activation and residual add were not timed on vLLM and are left out on both sides "
                "(`simserve/calibration/stack_layers.py`). Prefill steps of equal token counts share their GEMMs "
                "and all-reduces; only their attention kernel differs.", "",
                "| device | steps | count | median % | p90 % | predicted/measured | target met |",
                "|---|---|---|---|---|---|---|"]
        for hw, v in vllm.items():
            for part in ("all", "decode", "prefill"):
                s = v if part == "all" else v[part]
                if s.get("num_steps"):
                    out.append(f"| {hw} | {part} | {s['num_steps']} | {_f(s['median_abs_pct_err'])} | "
                               f"{_f(s['p90_abs_pct_err'])} | {s['median_pred_over_measured']:.3f} | "
                               f"{_mark(s['median_abs_pct_err'], s['p90_abs_pct_err'], t['iteration_median'], t['iteration_p90'])} |")
        out += ["", "Layers found (models with identical shapes share one):", "",
                "| device | models | TP | steps | median % | attention share of the layer (median) |", "|---|---|---|---|---|---|"]
        for hw, v in vllm.items():
            for lay in v["layers"]:
                out.append(f"| {hw} | {lay['models']} | {lay['tp']} | {lay['num_steps']} | "
                           f"{_f(lay['median_abs_pct_err'])} | {lay['attention_share']:.2f} |")
    out += ["", "## Cross-checks (not fitted)", "",
            "Measurements outside the basis or the fitted domain, predicted with the full-data parameters. "
            "A predicted/measured ratio far from 1 on the other stack is the gap between the stacks.", "",
            "| device | class | source | subset | points | median % | p90 % | predicted/measured |",
            "|---|---|---|---|---|---|---|---|"]
    for hw in hws:
        for oc in OP_CLASSES:
            for c in r["cross_checks"][hw].get(oc, []):
                out.append(f"| {hw} | {oc} | {c['source']} | {c['subset']} | {c['num_points']} | "
                           f"{_f(c['median_abs_pct_err'])} | {_f(c['p90_abs_pct_err'])} | "
                           f"{c['median_pred_over_measured']:.3f} |")
    out += ["", "## Devices without measurements", "",
            "`write_carryover_profiles` writes these with `calibrated: false`:", "",
            "| device | from | why |", "|---|---|---|"]
    for hw, (src, why) in CARRY_OVER.items():
        out.append(f"| {hw} | {src} | {why} |")
    out += ["", "## Weakest where and why", ""]
    misses = []
    for hw in hws:
        for oc in OP_CLASSES:
            f = r["fit"][hw].get(oc)
            if f and (f["median_abs_pct_err"] > t["op_median"] or f["p90_abs_pct_err"] > t["op_p90"]):
                misses.append((f["p90_abs_pct_err"], hw, oc, f))
    for _, hw, oc, f in sorted(misses, key=lambda m: (-m[0], m[1], m[2])):
        by_op = ", ".join(f"{op} {v:.2f}" for op, v in sorted(f.get("by_op", {}).items()))
        out.append(f"- **{oc} on {hw}** (median {_f(f['median_abs_pct_err'])}%, p90 {_f(f['p90_abs_pct_err'])}%): "
                   + WHY[oc].format(by_op=by_op))
    stack_misses = [f"{part} on {hw}" for hw in hws for part in ("all", "decode", "prefill")
                    if (s := (r["iteration_in_stack"][hw] if part == "all" else r["iteration_in_stack"][hw][part]))
                    and s.get("num_steps") and (s["median_abs_pct_err"] > t["iteration_median"]
                                                or s["p90_abs_pct_err"] > t["iteration_p90"])]
    if stack_misses:
        out.append(f"- **Whole layers, same stack** (missing the targets: {', '.join(stack_misses)}). " + ITERATION_WHY)
    vllm_misses = [f"{part} on {hw}" for hw, v in vllm.items() for part in ("all", "decode", "prefill")
                   if (s := (v if part == "all" else v[part])).get("num_steps")
                   and (s["median_abs_pct_err"] > t["iteration_median"] or s["p90_abs_pct_err"] > t["iteration_p90"])]
    if vllm_misses:
        out.append(f"- **Whole layers, vLLM's stack** (missing the targets: {', '.join(vllm_misses)}). " + VLLM_WHY)
    gaps = [(hw, oc, c) for hw in hws for oc in OP_CLASSES for c in r["cross_checks"][hw].get(oc, [])
            if c["subset"] == "other software stack"]
    if gaps:
        text = ", ".join(f"{oc} on {hw} {c['median_pred_over_measured']:.2f}" for hw, oc, c in gaps)
        out.append(f"- **Software stacks.** Vidur's timings (2024 stack) against the profile parameters "
                   f"(predicted/measured, median): {text}. This gap, not the model, is why the whole-iteration "
                   "error with profile parameters is much larger on A100 and H100 than with same-stack parameters.")
    out += ["", "Regenerate with `simserve calibrate --report`.", ""]
    return "\n".join(out)
