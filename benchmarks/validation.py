"""Replay the public validation set and write docs/validation.md.

    python benchmarks/validation.py                  # writes docs/validation.md (about a minute on 2 cores)
    python benchmarks/validation.py --check          # exit 1 if docs/validation.md is not what it would write

Every entry of ``benchmarks/validation/cases.yaml`` names a row of ``published_measurements.csv`` (published
measurements of real serving systems, with their sources), a template scenario and the overrides that
reproduce the row's settings, and the summary metric to compare. The published value must be the row's value,
or appear in the row's notes (``from: notes``), so a typo fails here. Nothing is fitted to these values: the
simulator runs with the shipped hardware profiles, and settings a row leaves open take simserve's defaults or
the stated assumption.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from simserve.api import simulate

HERE = Path(__file__).resolve().parent / "validation"
DOC = Path(__file__).resolve().parent.parent / "docs" / "validation.md"
STATIC_BATCH_CAP = 256

METRICS = {
    "mean_user_decode_tps": ("decode speed of one stream", "tok/s"),
    "mean_ttft_ms": ("time to first token", "ms"),
    "mean_itl_ms": ("inter-token latency", "ms"),
    "output_throughput": ("output throughput", "tok/s"),
}
# Rows of the reference set not replayed, and why.
NOT_REPLAYED = {
    "C007": "Cerebras CS-3: the number of systems serving the model is not stated (secondary sources only)",
    "C050": "a ratio against HuggingFace static batching, whose per-step cost is not vLLM's: simserve models one "
            "engine's kernels, not HuggingFace Transformers'",
    "C051": "a ratio against HuggingFace Transformers and TGI (other engines' kernels)",
    "C053": "a ratio of Sarathi-Serve to vLLM under a tail-latency SLO; the paper's workload is not in the abstract",
    "C059": "an EAGLE speedup in a HuggingFace-based harness (its draft cost and tree shape are not in the row)",
    "C062": "speculative decoding on TPUs (T5X), unverified secondary source",
    "C063": "Medusa speedups on unstated hardware",
}


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def check_value(case: dict, rows: pd.DataFrame) -> pd.Series:
    """The reference row of ``case``; raise if its published value is not the row's (or in its notes)."""
    match = rows[rows.case_id == case["case"]]
    if len(match) != 1:
        raise ValueError(f"{case['case']}: not a row of published_measurements.csv")
    row = match.iloc[0]
    value = float(case["published"])
    if case.get("from") == "notes":
        found = {_number(m) for m in re.findall(r"\d[\d,]*\.?\d*", str(row.notes))}
        if value not in found:
            raise ValueError(f"{case['case']}: {value} is not in the row's notes")
    elif value != float(row.value):
        raise ValueError(f"{case['case']}: published {value} but the row says {row.value}")
    return row


def _static_batch(template: Path, overrides: list[str]) -> int:
    """The most sequences whose prompt + output fit in one replica's KV cache, at most STATIC_BATCH_CAP
    (from a one-request run of the case: its memory plan and its one request's tokens)."""
    probe = simulate(template, overrides + ["workload.num_requests=1"]).summary
    tokens = probe["total_input_tokens"] + probe["total_output_tokens"]
    return int(min(STATIC_BATCH_CAP, probe["memory_per_device"]["kv_capacity_tokens"] // tokens))


def replay(case: dict) -> tuple[float, list[str]]:
    """(simulated value of the case's metric, the overrides used)."""
    template = HERE / case["template"]
    overrides = [str(s) for s in case.get("set", [])]
    if case.get("static_batch") == "fit":
        overrides.append(f"scheduler.batch_size={_static_batch(template, overrides)}")
    summary = simulate(template, overrides).summary
    if summary["completed"] != summary["num_requests"]:
        raise RuntimeError(f"{case['case']}: {summary['completed']} of {summary['num_requests']} requests completed")
    return float(summary[case["metric"]]), overrides


def run() -> pd.DataFrame:
    rows = pd.read_csv(HERE / "published_measurements.csv")
    out = []
    for case in yaml.safe_load((HERE / "cases.yaml").read_text()):
        row = check_value(case, rows)
        value, overrides = replay(case)
        out.append({"case": case["case"] + (" (notes)" if case.get("from") == "notes" else ""),
                    "engine": row.engine, "metric": case["metric"], "published": float(case["published"]),
                    "simserve": value, "ratio": value / float(case["published"]), "template": case["template"],
                    "overrides": ", ".join(f"`{o}`" for o in overrides), "assumed": case.get("assumed", "")})
    return pd.DataFrame(out)


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def render(table: pd.DataFrame) -> str:
    err = (table.ratio - 1.0).abs() * 100.0
    lines = [
        "# Validation against published measurements",
        "",
        "Generated by `python benchmarks/validation.py` from `benchmarks/validation/cases.yaml` and the reference "
        "set `benchmarks/validation/published_measurements.csv` (published results of real serving systems, "
        "each row with its source; see `benchmarks/validation/README.md`). Do not edit by hand.",
        "",
        "Each case replays a published measurement with the shipped hardware profiles and model catalog. Nothing "
        "is fitted to these values. The engines differ: simserve models vLLM's scheduler and kernels "
        "(calibrated on vLLM's kernel timings, [calibration.md](calibration.md)), while most rows were measured "
        "on TensorRT-LLM or NIM, whose kernels and batch settings are their own; a row's unstated settings take "
        "simserve's defaults (vLLM's) or the assumption in the last column. So the ratio is the gap between "
        "simserve's vLLM and that engine as much as simserve's error.",
        "",
        f"Over the {len(table)} values: median |simserve / published - 1| = {np.median(err):.0f}%, "
        f"{(err <= 20).sum()} within 20%, {(err <= 50).sum()} within 50%; "
        f"simserve / published from {table.ratio.min():.2f} to {table.ratio.max():.2f}.",
        "",
        "| metric | values | median simserve / published | median abs % |",
        "|---|---|---|---|",
    ]
    for metric, g in table.groupby("metric", sort=False):
        e = (g.ratio - 1.0).abs() * 100.0
        lines.append(f"| {METRICS[metric][0]} (`{metric}`) | {len(g)} | {g.ratio.median():.2f} | {e.median():.0f} |")
    ordered = table.sort_values("ratio")

    def _cases(rows: pd.DataFrame) -> str:
        return "; ".join(f"{r.case} {r.ratio:.2f} ({r.assumed or 'nothing assumed'})" for r in rows.itertuples())
    lines += ["", f"Lowest: {_cases(ordered.head(3))}. Highest: {_cases(ordered.tail(3).iloc[::-1])}. A row's "
              "unstated settings weigh most on offline throughput: the KV cache dtype and the batch cap set how "
              "many sequences share an iteration."]
    lines += ["", "| case | engine | metric | published | simserve | simserve / published | scenario and overrides "
              "| assumed |", "|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        unit = METRICS[r.metric][1]
        lines.append(f"| {r.case} | {r.engine} | {METRICS[r.metric][0]} | {_fmt(r.published)} {unit} | "
                     f"{_fmt(r.simserve)} {unit} | {r.ratio:.2f} | `{r.template}` {r.overrides} | {r.assumed} |")
    lines += ["", "Rows of the reference set not replayed:", ""]
    lines += [f"- {case}: {why}." for case, why in NOT_REPLAYED.items()]
    lines += ["", "Regenerate with `python benchmarks/validation.py`.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/validation.md is not current")
    args = parser.parse_args()
    text = render(run())
    if args.check:
        current = DOC.read_text() if DOC.is_file() else ""
        if current != text:
            print(f"{DOC} is not current: run python benchmarks/validation.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
