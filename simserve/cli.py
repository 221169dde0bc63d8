"""The ``simserve`` command. Bad input exits 2 with one line on stderr; only this module writes files."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from .errors import SimserveError

EXIT_BAD_INPUT = 2


def _user_errors(fn):
    """Turn a SimserveError into 'error: <one line>' and exit code 2, never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SimserveError as exc:
            click.echo(f"error: {' '.join(str(exc).split())}", err=True)
            sys.exit(EXIT_BAD_INPUT)
    return wrapper


_set_option = click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
                           help="Override a scenario key by dotted path, e.g. --set scheduler.max_num_seqs=64")


@click.group()
@click.version_option(package_name="simserve")
def main() -> None:
    """simserve: simulate LLM serving clusters."""


@main.command()
@click.argument("scenario")
@_set_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for summary.json and requests.csv [default: simserve_out/<scenario name>]")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of a table")
@click.option("--bands", is_flag=True, help="Also run with step times scaled by the hardware's step-time error "
              "and report low/high for every metric (a 'fidelity' block)")
@_user_errors
def run(scenario: str, overrides: tuple[str, ...], out: Path | None, as_json: bool, bands: bool) -> None:
    """Simulate SCENARIO (a YAML file or a bundled scenario name)."""
    from .api import simulate

    result = simulate(scenario, overrides, bands=bands)
    out = out or Path("simserve_out") / _safe(result.summary["scenario"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(result.summary_json())
    (out / "requests.csv").write_text(result.requests_csv())
    if as_json:
        click.echo(result.summary_json(), nl=False)
    else:
        from .report import render
        click.echo(render(result.summary), nl=False)
        click.echo(f"\nwrote {out / 'summary.json'} and {out / 'requests.csv'}")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "scenario"


@main.command()
@click.argument("scenario")
@_set_option
@_user_errors
def validate(scenario: str, overrides: tuple[str, ...]) -> None:
    """Check SCENARIO without running it: keys, values, references and memory fit."""
    import numpy as np

    from . import workload
    from .scenario import load_scenario

    r = load_scenario(scenario, overrides)
    specs = workload.build(r.config.workload, np.random.default_rng(r.config.seed), r.base_dir)
    m, dep = r.memory, r.config.deployment
    stages = f" x {dep.pipeline_parallel} stages" if dep.pipeline_parallel > 1 else ""
    derived = f" ({', '.join(r.derived)} derived from memory)" if r.derived else ""
    click.echo(f"ok: {r.config.name}: {r.model.name} on {dep.replicas} x "
               f"{dep.tensor_parallel}{stages} x {r.hardware.name}{derived}; per device{' (tightest stage)' * bool(stages)} "
               f"{m.weight_bytes / 1e9:.1f} GB weights, {m.kv_bytes / 1e9:.1f} GB KV cache "
               f"({m.kv_capacity_tokens:,} tokens{_contiguous(m)}); workload of {len(specs):,} requests")


def _contiguous(m) -> str:
    """With contiguous KV: how many requests of max_model_len tokens the cache holds."""
    if m.kv_layout != "contiguous":
        return ""
    return f" in {m.num_blocks:,} contiguous reservation{'s' * (m.num_blocks != 1)} of {m.block_size:,}"


@main.command()
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file instead of stdout")
def schema(output: Path | None) -> None:
    """Print the JSON Schema of scenario files (for editor completion)."""
    from .schema import scenario_schema_json

    text = scenario_schema_json()
    if output:
        output.write_text(text)
    else:
        click.echo(text, nl=False)


@main.command()
@click.option("--hardware", "names", multiple=True, metavar="NAME",
              help="Fit only this measured profile (repeatable) [default: every measured one]")
@click.option("--report", "report_path", is_flag=False, flag_value="docs/calibration.md", default=None,
              metavar="[PATH]", help="Write the report (default docs/calibration.md)")
@click.option("--json", "as_json", is_flag=True, help="Print the held-out errors as JSON")
@click.option("--write-profiles", "profiles_dir", is_flag=False, flag_value="hardware_profiles", default=None,
              metavar="[DIR]", help="Write the fitted efficiency blocks into the profiles (default hardware_profiles/)")
@_user_errors
def calibrate(names: tuple[str, ...], report_path: str | None, as_json: bool, profiles_dir: str | None) -> None:
    """Fit the step-time core to measured kernel timings and report its held-out error."""
    from .calibration import render_report_md, run_calibration, write_carryover_profiles, write_profiles
    from .errors import ScenarioError

    measured = ("a100-sxm-80gb", "h100-sxm-80gb", "a40-48gb")
    unknown = [n for n in names if n not in measured]
    if unknown:
        raise ScenarioError("--hardware", f"no measurements for {unknown[0]!r}; measured: {', '.join(measured)}")
    result = run_calibration(list(names) or None)
    if report_path:
        Path(report_path).write_text(render_report_md(result))
    if profiles_dir:
        written = write_profiles(result, Path(profiles_dir))
        if not names:
            written += write_carryover_profiles(result, Path(profiles_dir))
        click.echo(f"wrote {len(written)} profiles in {profiles_dir}", err=True)
    if as_json:
        keys = ("heldout_median_abs_pct_err", "heldout_p90_abs_pct_err", "iteration", "iteration_in_stack",
                "iteration_vllm")
        click.echo(json.dumps({k: result.report[k] for k in keys if k in result.report}, indent=2, sort_keys=True))
    elif not report_path:
        rep = result.report
        click.echo(f"{'hardware':<16}{'operator class':<20}{'median %':>10}{'p90 %':>10}")
        for hw, classes in sorted(rep["heldout_median_abs_pct_err"].items()):
            for op, med in sorted(classes.items()):
                p90 = rep["heldout_p90_abs_pct_err"][hw][op]
                click.echo(f"{hw:<16}{op:<20}{med:>10.1f}{p90:>10.1f}")
            for label, key in (("layer, Vidur stack", "iteration_in_stack"), ("layer, vLLM stack", "iteration_vllm")):
                it = rep.get(key, {}).get(hw, {})
                if it.get("num_steps"):
                    click.echo(f"{hw:<16}{label:<20}{it['median_abs_pct_err']:>10.1f}{it['p90_abs_pct_err']:>10.1f}")
    if report_path:
        click.echo(f"wrote {report_path}", err=True)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON")
def policies(as_json: bool) -> None:
    """List every registered policy by kind, then the techniques selected by scenario keys."""
    from . import policies as reg
    from .policies import techniques

    rows = [row for r in reg.ALL for row in r.describe()] + techniques.describe()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    kind_w = max(len(r["kind"]) for r in rows) + 2
    name_w = max(len(r["name"]) for r in rows) + 2
    for row in rows:
        params = ", ".join(row["params"]) or "-"
        click.echo(f"{row['kind']:<{kind_w}}{row['name']:<{name_w}}{row['summary']}  [{params}]")


if __name__ == "__main__":  # pragma: no cover
    main()
