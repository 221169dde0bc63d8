"""Content hashes of a request's full prompt blocks, for prefix caching.

Two blocks may share KV only if their whole prefix is equal, so each hash chains the previous one.
Traces with prefix ids (Mooncake ``hash_ids``, one per ``id_block_tokens`` tokens) give real sharing:
block ``j`` of ``block_size`` tokens is determined by the ids up to the one holding its last token.
Synthetic workloads may share a system prompt of ``shared_prefix_tokens``; the rest of a synthetic
prompt is unique and gets no hash (it can never be matched). Hashes are of int tuples only, so they are
the same in every process whatever PYTHONHASHSEED is.
"""
from __future__ import annotations

_SHARED, _TRACE = 1, 2


def trace_block_hashes(ids, id_block_tokens: int, prompt_tokens: int, block_size: int) -> list[int]:
    """Hashes of the full blocks of a prompt described by trace prefix ids."""
    out: list[int] = []
    h = _TRACE
    for j in range(prompt_tokens // block_size):
        m = ((j + 1) * block_size - 1) // id_block_tokens
        if m >= len(ids):
            break
        h = hash((h, ids[m], j))
        out.append(h)
    return out


def shared_block_hashes(shared_prefix_tokens: int, prompt_tokens: int, block_size: int) -> list[int]:
    """Hashes of the full blocks of a common system prompt (the first ``shared_prefix_tokens``)."""
    out: list[int] = []
    h = _SHARED
    for j in range(min(shared_prefix_tokens, prompt_tokens) // block_size):
        h = hash((h, j))
        out.append(h)
    return out
