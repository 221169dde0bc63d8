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
    m = r.memory
    click.echo(f"ok: {r.config.name}: {r.model.name} on {r.config.deployment.replicas} x "
               f"{r.config.deployment.tensor_parallel} x {r.hardware.name}; per device "
               f"{m.weight_bytes / 1e9:.1f} GB weights, {m.kv_bytes / 1e9:.1f} GB KV cache "
               f"({m.kv_capacity_tokens:,} tokens); workload of {len(specs):,} requests")


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
@click.option("--json", "as_json", is_flag=True, help="Print as JSON")
def policies(as_json: bool) -> None:
    """List every registered policy by kind."""
    from . import policies as reg

    rows = [row for r in reg.ALL for row in r.describe()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        params = ", ".join(row["params"]) or "-"
        click.echo(f"{row['kind']:<11}{row['name']:<20}{row['summary']}  [{params}]")


if __name__ == "__main__":  # pragma: no cover
    main()
