"""Writing fitted efficiencies into hardware profiles: only the ``efficiency:`` and ``calibration:`` blocks.

Everything else in a profile file (comments, sources, other keys) is left byte-for-byte alone. The new text
is validated as a :class:`~simserve.hardware.HardwareProfile` before the file is replaced.
"""
from __future__ import annotations

from pathlib import Path

from ..config.base import validate
from ..config.yamlio import load_file, loads
from ..hardware import HardwareProfile
from .dataset import OP_CLASSES

# Classes a device may lack (no FP8 tensor cores): its profile then has no line for them and the step model
# prices those kernels with the gemm parameters (hardware.Efficiency).
OPTIONAL_CLASSES = ("gemm_fp8",)
DATA_DATE = "2026-12-03"    # when the measurements were imported into the repo (see data/README.md)
METHOD = ("simserve calibrate: least mean |log(pred/measured)| per operator class (numpy Nelder-Mead); "
          "{basis}; 5-fold held-out error by shape, see docs/calibration.md")

_DATAFLOW = ("assumption: the fractions of peak (and compute/memory overlap) of the measured H100; a statically "
             "compiled dataflow chip launches no kernels, so per-kernel and per-unit overheads are zero (and no GEMM row tiles), its "
             "streaming ops have no per-token thread blocks (the H100's full-bandwidth fraction applies), and its "
             "collectives pay one link latency per algorithm stage of its own links (no in-switch reduction)")
# unmeasured device -> (device whose parameters it takes, why)
CARRY_OVER = {
    "a100-sxm-40gb": ("a100-sxm-80gb", "same GA100 die and kernels as the measured A100 80GB; fractions apply to "
                                       "this board's own peaks (HBM2 bandwidth)"),
    "h200-sxm-141gb": ("h100-sxm-80gb", "same GH100 compute die and kernels as the measured H100, and the same "
                                        "NVLink4 NVSwitch (NVLS all-reduce at the H100's fitted fraction); fractions "
                                        "apply to the H200's own peaks (HBM3e bandwidth), which is an assumption"),
    "b200-180gb": ("h100-sxm-80gb", "no Blackwell measurements; assumes Blackwell kernels reach the same fractions of "
                                    "their peaks and the same overheads as on the measured H100 (NVLS all-reduce "
                                    "included, at the H100's fraction of NVLink5), the H100's 128-row GEMM tiles, and per-token "
                                    "streaming kernels the H100's per-block rate and concurrency (148 SMs against "
                                    "132: pessimistic; no l2_cache_mb in its profile, so no L2 speedup either), and FP8 linear layers as vLLM's "
                                    "Hopper ones (H100's CUTLASS tiles over 132 SMs)"),
    "groq-lpu": ("h100-sxm-80gb", _DATAFLOW),
    "cerebras-cs3": ("h100-sxm-80gb", _DATAFLOW),
}
_FIELDS = ("flops_fraction", "bandwidth_fraction", "overhead_us", "overlap_exponent", "unit_overhead_ns",
           "hop_latency_scale", "row_bandwidth_gb_s", "concurrent_blocks", "reduction_overhead_us",
           "relayout_overhead_us", "switch_bandwidth_fraction", "l2_speedup", "splitk_latency_ns", "row_tile", "wave_tile")
_DEFAULTS = {"overlap_exponent": None, "unit_overhead_ns": 0.0, "hop_latency_scale": 1.0, "row_bandwidth_gb_s": None,
             "concurrent_blocks": None, "reduction_overhead_us": 0.0, "switch_bandwidth_fraction": None,
             "relayout_overhead_us": 0.0, "l2_speedup": 1.0, "splitk_latency_ns": 0.0, "row_tile": None,
             "wave_tile": None}


def _num(v: float) -> str:
    v = 0.0 if abs(v) < 1e-6 else float(f"{v:.4g}")
    return repr(v)


def _op_line(name: str, params: dict) -> str:
    parts = []
    for f in _FIELDS:
        v = params.get(f, _DEFAULTS.get(f))
        if f in _DEFAULTS and (v is None or (f != "overlap_exponent" and v == _DEFAULTS[f])):
            continue
        if f == "wave_tile":
            parts.append(f"wave_tile: {{rows: {int(v['rows'])}, cols: {int(v['cols'])}}}")
        else:
            parts.append(f"{f}: {int(v) if f == 'row_tile' else _num(v)}")
    return f"  {name}: {{{', '.join(parts)}}}"


def efficiency_block(params: dict[str, dict], step_overhead_us: float, comment: str) -> list[str]:
    missing = [oc for oc in OP_CLASSES if oc not in params and oc not in OPTIONAL_CLASSES]
    if missing:
        raise ValueError(f"no parameters for {', '.join(missing)}: calibrate the device they are carried over from too")
    lines = [f"efficiency:           # {comment}"]
    lines += [_op_line(oc, params[oc]) for oc in OP_CLASSES if oc in params]
    lines.append(f"  step_overhead_us: {step_overhead_us!r}")
    return lines


def calibration_block(calibrated: bool, method: str, data_sha256: str | None, p90: float | None,
                      moe_p90: float | None = None, fp8_p90: float | None = None) -> list[str]:
    lines = ["calibration:", f"  calibrated: {'true' if calibrated else 'false'}", f"  method: {_quote(method)}"]
    if data_sha256 is not None:
        lines += [f"  data_sha256: {_quote(data_sha256)}", f"  date: {_quote(DATA_DATE)}"]
    if p90 is not None:
        lines.append(f"  heldout_p90_abs_pct_err: {p90:.1f}")
    if moe_p90 is not None:
        lines.append(f"  moe_heldout_p90_abs_pct_err: {moe_p90:.1f}")
    if fp8_p90 is not None:
        lines.append(f"  fp8_heldout_p90_abs_pct_err: {fp8_p90:.1f}")
    return lines


def class_p90(result, hw: str, op_class: str) -> float | None:
    """Held-out p90 of one operator class on ``hw``, or on the device it carries the class over from."""
    source = result.report["carried_over"].get(hw, {}).get(op_class, hw)
    fit = result.report["fit"].get(source, {}).get(op_class)
    return None if fit is None else float(fit["p90_abs_pct_err"])


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def replace_block(text: str, key: str, new_lines: list[str]) -> str:
    """Replace the top-level mapping ``key:`` (its line and every indented or blank line after it)."""
    lines = text.split("\n")
    start = next((i for i, ln in enumerate(lines) if ln.startswith(f"{key}:")), None)
    if start is None:
        raise ValueError(f"no top-level '{key}:' block")
    end = start + 1
    while end < len(lines) and (lines[end] == "" or lines[end][0] in " \t"):
        end += 1
    while end > start + 1 and lines[end - 1] == "":   # keep blank lines that separate blocks
        end -= 1
    return "\n".join(lines[:start] + new_lines + lines[end:])


def _rewrite(path: Path, eff_lines: list[str], cal_lines: list[str]) -> None:
    text = path.read_text(encoding="utf-8")
    new = replace_block(replace_block(text, "efficiency", eff_lines), "calibration", cal_lines)
    validate(HardwareProfile, loads(new, str(path)))     # refuse to write a profile that would not load
    if new != text:
        path.write_text(new, encoding="utf-8")


def _step_overhead(path: Path) -> float:
    return load_file(path)["efficiency"]["step_overhead_us"]     # engine-level: kept as it is


def step_time_p90(result, hw: str) -> float:
    """The profile's step-time error (``simserve.fidelity`` scales step times by it for the error bands): the
    worse of the held-out p90s of whole layers, Vidur's models predicted by parameters fitted on their own
    software stack, and vLLM-stack layers (GEMMs, attention, all-reduce) predicted by the profile's own
    parameters where aiconfigurator measured them (:mod:`.stack_layers`)."""
    errs = [result.report["iteration_in_stack"][hw]["p90_abs_pct_err"]]
    vllm = result.report.get("iteration_vllm", {}).get(hw, {})
    if vllm.get("num_steps"):
        errs.append(vllm["p90_abs_pct_err"])
    return float(max(errs))


def write_profiles(result, profiles_dir: Path) -> list[Path]:
    """Rewrite the efficiency and calibration blocks of every hardware in ``result.params``."""
    written = []
    for hw, params in result.params.items():
        path = Path(profiles_dir) / f"{hw}.yaml"
        fitted = result.report["fit"][hw]
        carried = result.report["carried_over"][hw]
        basis = "; ".join(f"{oc} on {fitted[oc]['source']} (held-out p90 {fitted[oc]['p90_abs_pct_err']:.1f}%)"
                          for oc in OP_CLASSES if oc in fitted)
        if carried:
            basis += "; not measured, carried over: " + ", ".join(f"{oc} from {src}" for oc, src in carried.items())
        method = METHOD.format(basis=basis) + ("; heldout_p90_abs_pct_err is the worse whole-layer step-time error "
                                               "of Vidur's models with same-stack parameters and of vLLM-stack layers "
                                               "with these parameters; moe_heldout_p90_abs_pct_err is the fused MoE "
                                               "kernels' (MoE models' error bands take the larger)")
        eff = efficiency_block(params, _step_overhead(path), "fitted by `simserve calibrate`; see calibration")
        _rewrite(path, eff, calibration_block(True, method, result.data_sha256, step_time_p90(result, hw),
                                              class_p90(result, hw, "moe"), class_p90(result, hw, "gemm_fp8")))
        written.append(path)
    return written


def carried_params(source: dict[str, dict], plain: bool) -> dict[str, dict]:
    """A measured device's parameters for an unmeasured one; ``plain`` drops overheads and shape terms."""
    out = {}
    for oc, p in source.items():
        if plain and oc == "gemm_fp8":      # a dataflow chip runs no CUTLASS tiles (and has no FP8 peak in its profile)
            continue
        q = {f: p.get(f, _DEFAULTS.get(f)) for f in _FIELDS}
        if plain:
            q.update(overhead_us=0.0, unit_overhead_ns=0.0, hop_latency_scale=1.0, row_bandwidth_gb_s=None,
                     concurrent_blocks=None, reduction_overhead_us=0.0, switch_bandwidth_fraction=None,
                     relayout_overhead_us=0.0, l2_speedup=1.0, splitk_latency_ns=0.0, row_tile=None,
                     wave_tile=None)
        out[oc] = q
    return out


def write_carryover_profiles(result, profiles_dir: Path, targets: dict = CARRY_OVER) -> list[Path]:
    """Write efficiency blocks of unmeasured devices from their nearest measured device, ``calibrated: false``."""
    written = []
    for hw, (source, why) in targets.items():
        path = Path(profiles_dir) / f"{hw}.yaml"
        if not path.is_file() or source not in result.params:
            continue
        plain = why is _DATAFLOW
        params = carried_params(result.params[source], plain)
        method = (f"carried over from {source} (simserve calibrate, data {result.data_sha256[:12]}): {why}; "
                  f"heldout_p90_abs_pct_err (and moe_heldout_p90_abs_pct_err) is {source}'s")
        eff = efficiency_block(params, _step_overhead(path), f"not measured: carried over from {source}")
        _rewrite(path, eff, calibration_block(False, method, None, step_time_p90(result, source),
                                              class_p90(result, source, "moe"),
                                              class_p90(result, source, "gemm_fp8") if "gemm_fp8" in params else None))
        written.append(path)
    return written
