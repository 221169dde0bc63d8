"""What the step-time model sees of one iteration: per-sequence token counts reduced to sums.

A step is ``{request: new tokens}``; attention cost depends on each sequence's cached context ``c`` and
its new tokens ``q``. The roofline needs only these sums, which keeps the hot path O(1) per request.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class BatchShape:
    num_seqs: int = 0            # sequences in the step
    num_tokens: int = 0          # sum of q: tokens run through the linear layers
    num_logits: int = 0          # sequences that sample a token this step (LM head rows)
    decode_seqs: int = 0         # sequences with q == 1 and a cache (decode kernel)
    decode_ctx: int = 0          # sum of (c + 1) over decode sequences: keys read
    prefill_seqs: int = 0        # sequences with q > 1 or no cache (prefill kernel)
    prefill_tokens: int = 0      # sum of q over prefill sequences
    prefill_q_ctx: float = 0.0   # sum of q * c over prefill sequences
    prefill_q_sq: float = 0.0    # sum of q * q over prefill sequences
    prefill_kv: int = 0          # sum of (c + q) over prefill sequences: keys read

    @staticmethod
    def from_pairs(pairs: list[tuple[int, int]], num_logits: int | None = None) -> "BatchShape":
        """Build from ``[(new_tokens, cached_context), ...]``; handy in tests and notebooks."""
        acc = BatchAccumulator()
        for q, c in pairs:
            acc.add(q, c)
        return acc.shape(len(pairs) if num_logits is None else num_logits)


class BatchAccumulator:
    """Adds sequences one at a time; :meth:`shape` freezes the sums."""

    __slots__ = ("n", "t", "ds", "dc", "ps", "pt", "pqc", "pqq", "pkv")

    def __init__(self) -> None:
        self.n = self.t = self.ds = self.dc = self.ps = self.pt = self.pkv = 0
        self.pqc = self.pqq = 0.0

    def add(self, q: int, c: int) -> None:
        self.n += 1
        self.t += q
        if q == 1 and c > 0:
            self.ds += 1
            self.dc += c + 1
        else:
            self.ps += 1
            self.pt += q
            self.pqc += q * c
            self.pqq += q * q
            self.pkv += c + q

    def add_decodes(self, count: int, sum_ctx_plus_one: int) -> None:
        """``count`` sequences decoding one token each, whose ``c + 1`` sum to ``sum_ctx_plus_one``."""
        self.n += count
        self.t += count
        self.ds += count
        self.dc += sum_ctx_plus_one

    def shape(self, num_logits: int) -> BatchShape:
        return BatchShape(self.n, self.t, num_logits, self.ds, self.dc, self.ps, self.pt,
                          self.pqc, self.pqq, self.pkv)
