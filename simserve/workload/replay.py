"""Trace workloads: find the trace (a bundled name or a file), read it, and cut and rescale it."""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np

from .. import resources
from ..config.base import fmt_key
from ..errors import ScenarioError
from .config import TraceWorkload
from .specs import RequestSpecs
from .traces import READERS, TraceColumns

SUFFIXES = (".csv", ".jsonl")

# Bundled traces know their format; a user's file must say it (we never guess from the extension).
BUNDLED_FORMATS = {
    "azure-code": "azure",
    "azure-conv": "azure",
    "mooncake-conversation": "mooncake",
    "mooncake-synthetic": "mooncake",
}


def locate(ref: str, fmt: str | None, base_dir: Path | None, where: str) -> tuple[Path, str]:
    """A bundled name or a file path (relative to ``base_dir`` first) -> (file, format).

    ``where`` is the dotted path of the config holding ``path`` and ``format`` (``workload``), used in
    :class:`ScenarioError` messages.
    """
    try:
        path = resources.resolve("workloads", ref, suffixes=SUFFIXES, base=base_dir)
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise ScenarioError(f"{where}.path", f"cannot open {_quote(ref)}: {exc.strerror or exc}") from None
    if path is None:
        known = ", ".join(sorted(BUNDLED_FORMATS))
        raise ScenarioError(f"{where}.path", f"no bundled workload or file {_quote(ref)}; bundled: {known}")
    bundled = _bundled_format(path)
    if bundled is not None:
        if fmt is not None and fmt != bundled:
            raise ScenarioError(f"{where}.format", f"{_quote(ref)} is a bundled {bundled} trace, not {fmt}")
        return path, bundled
    if fmt is None:
        raise ScenarioError(f"{where}.format", f"required for {_quote(ref)} (not a bundled workload): azure or mooncake")
    return path, fmt


def read(path: Path, fmt: str) -> TraceColumns:
    """The trace at ``path``, parsed once per content: a sweep that draws lengths from a trace (or
    replays it) in every run parses and checks the file once. Keyed by the path and a digest of the
    file's bytes (hashing is far cheaper than parsing); the arrays are read-only, as every user of a
    trace only reads it."""
    digest = hashlib.blake2b(path.read_bytes(), digest_size=16).digest()
    return _read_cached(str(path.resolve()), fmt, digest)


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, fmt: str, digest: bytes) -> TraceColumns:
    trace = READERS[fmt](Path(path))
    for column in (trace.time_s, trace.prompt_tokens, trace.output_tokens):
        column.flags.writeable = False
    return trace


def build_trace(cfg: TraceWorkload, base_dir: Path | None = None, where: str = "workload") -> RequestSpecs:
    """Replay a trace: drop requests before ``start_s``, play it ``repeat`` times, keep ``limit``, shift to
    0, scale gaps by ``time_scale``. Repeated copies keep their prefix hashes (the same content again)."""
    path, fmt = locate(cfg.path, cfg.format, base_dir, where)
    trace = read(path, fmt)
    first = int(np.searchsorted(trace.time_s, cfg.start_s, side="left"))
    if first == len(trace):
        span = float(trace.time_s[-1])
        raise ScenarioError(f"{where}.start_s", f"no requests at or after {cfg.start_s} s; {_quote(cfg.path)} spans {span:.1f} s")
    time_s = trace.time_s[first:]
    prompt, output = trace.prompt_tokens[first:], trace.output_tokens[first:]
    hashes = None if trace.hash_ids is None else trace.hash_ids[first:]
    n = len(time_s)
    copies = cfg.repeat if cfg.limit is None else min(cfg.repeat, -(-cfg.limit // n))  # no more than limit needs
    if copies > 1:
        # each copy starts one mean gap after the previous copy's last request
        span = float(time_s[-1] - time_s[0])
        period = span + (span / (n - 1) if n > 1 and span > 0 else 1.0)
        time_s = np.concatenate([time_s + i * period for i in range(copies)])
        prompt, output = np.tile(prompt, copies), np.tile(output, copies)
        hashes = None if hashes is None else hashes * copies
    stop = len(time_s) if cfg.limit is None else min(len(time_s), cfg.limit)
    time_s = time_s[:stop]
    with np.errstate(over="ignore"):
        arrival_s = (time_s - time_s[0]) * cfg.time_scale
    if not np.isfinite(arrival_s[-1]):
        raise ScenarioError(f"{where}.time_scale", f"{cfg.time_scale:g} times the trace's {time_s[-1] - time_s[0]:.1f} s "
                            "overflows; use a smaller time_scale")
    hashes = None if hashes is None else hashes[:stop]
    return RequestSpecs(
        arrival_s=arrival_s,
        prompt_tokens=prompt[:stop].copy(),
        output_tokens=output[:stop].copy(),
        prefix_hashes=hashes,
    )


def _quote(ref: str) -> str:
    return f"'{ref}'" if fmt_key(ref) == ref else fmt_key(ref)


def _bundled_format(path: Path) -> str | None:
    try:
        inside = path.resolve().parent == resources.data_dir("workloads").resolve()
    except OSError:
        return None
    return BUNDLED_FORMATS.get(path.stem) if inside else None
