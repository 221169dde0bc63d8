"""Strict readers for the two trace formats. Parsing is vectorised; the first bad row is reported as
``file:line: message`` (1-based lines, the header of a CSV is line 1).

- Azure (AzurePublicDataset): CSV with header ``TIMESTAMP,ContextTokens,GeneratedTokens``; timestamps are
  datetimes such as ``2023-11-16 18:17:03.9799600``. Other columns are ignored.
- Mooncake (FAST'25 release): JSON lines ``{"timestamp": ms, "input_length": n, "output_length": n,
  "hash_ids": [...]}``; each hash id names one 512-token block of the prompt.

Lines end at ``\n``, ``\r\n`` or ``\r`` (as an editor counts them); blank lines are skipped; a UTF-8
byte-order mark is ignored. Timestamps must not decrease (equal is fine); token counts are integers >= 1.
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config.base import fmt_key
from ..errors import TraceError

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length", "hash_ids")
MAX_COUNT = 2**53  # larger "token counts" are corrupt data, and would not survive float64 exactly
_NEWLINE = re.compile(r"\r\n|\r|\n")
_TICKS_PER_S = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


@dataclass(frozen=True, slots=True)
class TraceColumns:
    """One trace as read from disk, in file order."""

    time_s: np.ndarray
    """float64 seconds since the trace's first request (so ``time_s[0] == 0``), non-decreasing."""
    prompt_tokens: np.ndarray
    """int64, >= 1."""
    output_tokens: np.ndarray
    """int64, >= 1."""
    hash_ids: tuple[tuple[int, ...], ...] | None
    """Mooncake prefix-block ids per request; None for formats without them."""

    def __len__(self) -> int:
        return len(self.time_s)


def read_azure(path: Path | str) -> TraceColumns:
    """Read an Azure LLM inference trace (CSV)."""
    name = fmt_key(path)
    text_lines = _NEWLINE.split(_read_text(path))  # not str.splitlines(): it also splits at \x0c, \u2028...
    numbers = [i for i, line in enumerate(text_lines, start=1) if line.strip()]
    rows = [text_lines[i - 1] for i in numbers]  # the header, then one row per request
    _check_widths(name, rows, numbers)
    header = next(csv.reader(rows[:1]))
    missing = [c for c in AZURE_COLUMNS if c not in header]
    if missing:
        raise TraceError(name, numbers[0],
                         f"missing column(s) {', '.join(missing)}; an Azure trace has {','.join(AZURE_COLUMNS)}")
    if len(rows) == 1:
        raise TraceError(name, None, "no requests (only a header)")
    try:
        frame = pd.read_csv(io.StringIO("\n".join(rows)), dtype=str, keep_default_na=False,
                            usecols=list(AZURE_COLUMNS), index_col=False)
    except (pd.errors.ParserError, ValueError) as exc:
        raise TraceError(name, None, f"not a readable CSV file ({str(exc).splitlines()[0]})") from None
    if len(frame) != len(rows) - 1:  # quoted fields spanning lines would break the row -> line map
        raise TraceError(name, None, "quoted fields spanning several lines are not supported")
    lines = np.asarray(numbers[1:])
    prompt = _tokens(frame["ContextTokens"], "ContextTokens", name, lines)
    output = _tokens(frame["GeneratedTokens"], "GeneratedTokens", name, lines)
    # naive timestamps are taken as UTC; only differences between them matter
    stamps = pd.to_datetime(frame["TIMESTAMP"], format="ISO8601", utc=True, errors="coerce")
    bad = stamps.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise TraceError(name, int(lines[i]), f"TIMESTAMP {_show(frame['TIMESTAMP'].iloc[i])} is not a datetime")
    # pandas picks the resolution (ns, or us for years outside 1678-2261): count in its own ticks, as
    # converting to ns would silently wrap around
    values = stamps.dt.tz_localize(None).to_numpy()
    ticks = values.astype(np.int64)
    _check_order(ticks, name, lines, lambda i: frame["TIMESTAMP"].iloc[i])
    time_s = (ticks - ticks[0]).astype(np.float64) / _TICKS_PER_S[np.datetime_data(values.dtype)[0]]
    return TraceColumns(time_s, prompt, output, None)


def read_mooncake(path: Path | str) -> TraceColumns:
    """Read a Mooncake trace (JSON lines, timestamps in milliseconds)."""
    name = fmt_key(path)
    text = _read_text(path)
    stamps: list = []
    prompt: list = []
    output: list = []
    hashes: list = []
    lines: list = []
    for number, raw in enumerate(_NEWLINE.split(text), start=1):  # JSON strings may hold \u2028 etc.
        if not raw.strip():
            continue
        try:
            row = json.loads(raw, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            raise TraceError(name, number, f"malformed JSON: {exc.msg} (column {exc.colno})") from None
        except _DuplicateKey as exc:
            raise TraceError(name, number, f"duplicate key {_show(exc.args[0])}") from None
        except ValueError as exc:  # an integer of more than 4,300 digits
            raise TraceError(name, number, f"malformed JSON: {' '.join(str(exc).split(';')[0].split())}") from None
        except RecursionError:
            raise TraceError(name, number, "malformed JSON: nested too deeply") from None
        if not isinstance(row, dict):
            raise TraceError(name, number, "expected a JSON object")
        missing = [k for k in MOONCAKE_KEYS if k not in row]
        if missing:
            raise TraceError(name, number, f"missing key(s) {', '.join(missing)}; a Mooncake row has {', '.join(MOONCAKE_KEYS)}")
        ts, n_in, n_out, ids = row["timestamp"], row["input_length"], row["output_length"], row["hash_ids"]
        if not _is_number(ts) or not 0 <= ts < MAX_COUNT:
            raise TraceError(name, number, f"timestamp must be a number of milliseconds >= 0, got {_show(ts)}")
        for key, value in (("input_length", n_in), ("output_length", n_out)):
            if type(value) is not int or not 1 <= value < MAX_COUNT:
                raise TraceError(name, number, f"{key} must be an integer >= 1, got {_show(value)}")
        if not isinstance(ids, list) or not all(type(h) is int for h in ids):
            raise TraceError(name, number, f"hash_ids must be a list of integers, got {_show(ids)}")
        stamps.append(ts)
        prompt.append(n_in)
        output.append(n_out)
        hashes.append(tuple(ids))
        lines.append(number)
    if not lines:
        raise TraceError(name, None, "empty file")
    ms = np.asarray(stamps, dtype=np.float64)
    line_numbers = np.asarray(lines)
    _check_order(ms, name, line_numbers, lambda i: stamps[i])
    return TraceColumns((ms - ms[0]) / 1e3, np.asarray(prompt, dtype=np.int64),
                        np.asarray(output, dtype=np.int64), tuple(hashes))


READERS = {"azure": read_azure, "mooncake": read_mooncake}


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list) -> dict:
    row = dict(pairs)
    if len(row) != len(pairs):
        seen: set = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return row


def _read_text(path: Path | str) -> str:
    name = fmt_key(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TraceError(name, None, f"cannot read file: {exc.strerror}") from None
    if not data.strip():
        raise TraceError(name, None, "empty file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = len(re.findall(rb"\r\n|\r|\n", data[: exc.start])) + 1
        raise TraceError(name, line, "not UTF-8 text") from None


def _tokens(column: pd.Series, label: str, name: str, lines: np.ndarray) -> np.ndarray:
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~((values >= 1) & (values < MAX_COUNT) & (values == np.floor(values)))  # NaN fails too
    if bad.any():
        i = int(np.argmax(bad))
        raise TraceError(name, int(lines[i]), f"{label} must be an integer >= 1, got {_show(column.iloc[i])}")
    return values.astype(np.int64)


def _check_order(values: np.ndarray, name: str, lines: np.ndarray, shown) -> None:
    back = np.diff(values) < 0
    if back.any():
        i = int(np.argmax(back)) + 1
        raise TraceError(name, int(lines[i]),
                         f"timestamp {_show(shown(i))} is earlier than the previous one {_show(shown(i - 1))}")


def _check_widths(name: str, rows: list[str], numbers: list[int]) -> None:
    """Every row must have as many fields as the header. Counting commas is exact without quotes; with
    quotes, fall back to the csv module (row by row, slower)."""
    if any('"' in row for row in rows):  # rare: Azure traces never quote
        try:
            widths = np.fromiter((len(r) for r in csv.reader(rows)), dtype=np.int64)
        except csv.Error as exc:
            raise TraceError(name, None, f"not a readable CSV file ({exc})") from None
    else:
        widths = pd.Series(rows, dtype=object).str.count(",").to_numpy(dtype=np.int64) + 1
    if len(widths) != len(rows):
        raise TraceError(name, None, "quoted fields spanning several lines are not supported")
    bad = widths != widths[0]
    if bad.any():
        i = int(np.argmax(bad))
        raise TraceError(name, numbers[i], f"expected {widths[0]} fields like the header, found {widths[i]}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
