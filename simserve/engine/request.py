"""One request's state as the engine sees it, in tokens.

``num_tokens`` (prompt plus generated) are known; ``num_computed`` of them have KV in the cache. A step
gives a request some new tokens to compute; when it has caught up (``num_computed == num_tokens``) the
model samples one more token. Prefill, chunked prefill, decode and recompute after preemption are all
just different counts.
"""
from __future__ import annotations

COMPLETED, REJECTED, UNFINISHED = "completed", "rejected", "unfinished"


class Request:
    __slots__ = ("id", "arrival_s", "prompt_tokens", "output_tokens", "num_computed", "num_generated",
                 "first_token_s", "last_token_s", "finish_s", "outcome", "reason", "num_preemptions",
                 "num_requeues", "replica", "on_done", "seq", "steady", "k0", "c0", "g0", "version",
                 "prefix_hashes", "block_hashes")

    def __init__(self, id: int, arrival_s: float, prompt_tokens: int, output_tokens: int,
                 prefix_hashes: tuple[int, ...] | None = None):
        self.id = id
        self.arrival_s = arrival_s
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.num_computed = 0
        self.num_generated = 0
        self.first_token_s = -1.0
        self.last_token_s = -1.0
        self.finish_s = -1.0
        self.outcome = ""            # "" while in flight
        self.reason = ""
        self.num_preemptions = 0
        self.num_requeues = 0          # times moved to another replica after a failure
        self.replica = -1
        self.on_done = None          # optional callback(request), e.g. a closed-loop user
        self.prefix_hashes = prefix_hashes   # ids of the prompt's prefix blocks (RequestSpecs.prefix_hashes), or None
        self.block_hashes: list[int] | None = None   # content hashes of full KV blocks (prefix caching on)
        # scheduler bookkeeping: admission order, and the frozen state of a steady decoder
        self.seq = 0
        self.steady = False
        self.k0 = self.c0 = self.g0 = 0
        self.version = 0

    @property
    def num_tokens(self) -> int:
        """Tokens known so far: the prompt and every generated token."""
        return self.prompt_tokens + self.num_generated

    @property
    def max_kv_tokens(self) -> int:
        """KV slots the request needs at its largest (the last sampled token is never fed back)."""
        return self.prompt_tokens + self.output_tokens - 1

    def __repr__(self) -> str:
        return f"Request({self.id}, computed={self.num_computed}/{self.num_tokens}, out={self.num_generated}/{self.output_tokens})"
