"""Speculative decoding on top of continuous batching.

Each iteration a decoding sequence with ``c`` cached tokens feeds its pending token and ``k`` draft
tokens: the target verifies them in one pass of ``k + 1`` query rows over context ``c`` (the prefill
attention kernel). Draft tokens are accepted one by one, position ``i`` with probability ``alpha_i``,
until the first rejection; the target always adds one token of its own, so the sequence emits
``a + 1`` tokens as one streamed chunk and holds ``c + a + 1`` computed tokens afterwards. KV slots for
``c + k + 1`` are allocated before the step (the lookahead).

The drafts come from a draft model (``draft_model``: ``k`` sequential decode passes of that model on the
same devices, after it has run over the step's prompt chunks) or a draft head (``draft_cost_fraction``
of a target decode step of the speculating sequences). Their time is put on ``Step.extra``.

Speculating sequences emit a variable number of tokens per iteration, so they are never frozen as
steady decoders: every running request stays active and is handled one by one.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from ..cost.batch import BatchAccumulator
from ..cost.step import StepCost
from ..engine.scheduler import ItlRecorder, Step
from ..engine.request import Request
from ..model import catalog_names, load_model
from .continuous import ContinuousBatching, ContinuousParams
from .registry import SCHEDULERS


class SpeculativeParams(ContinuousParams):
    policy: Literal["speculative"]
    num_speculative_tokens: int = Field(4, ge=1, le=64, description="Draft tokens k proposed per sequence and iteration")
    acceptance_rate: float | list[float] = Field(
        0.7, description="Probability that a draft token is accepted given the ones before it were: one alpha, "
                         "or a list of num_speculative_tokens values, one per draft position")
    draft_model: str | None = Field(
        None, description="Catalog name of a draft model run on the same devices (k decode passes per iteration)")
    draft_cost_fraction: float | None = Field(
        None, ge=0, le=100, description="Draft head (EAGLE/Medusa-like): drafting the k tokens costs this fraction "
                                        "of a target decode step of the same sequences")

    @field_validator("acceptance_rate")
    @classmethod
    def _probabilities(cls, v):
        values = v if isinstance(v, list) else [v]
        if not values or any(not 0.0 <= a <= 1.0 for a in values):
            raise ValueError(f"acceptance rates must lie in [0, 1], got {v}")
        return v

    @field_validator("draft_model")
    @classmethod
    def _in_catalog(cls, v):
        if v is not None and v not in catalog_names():
            raise ValueError(f"unknown draft model '{v}', known: {', '.join(catalog_names())}")
        return v

    @model_validator(mode="after")
    def _one_drafter(self) -> "SpeculativeParams":
        if (self.draft_model is None) == (self.draft_cost_fraction is None):
            raise ValueError("give exactly one of draft_model and draft_cost_fraction")
        if isinstance(self.acceptance_rate, list) and len(self.acceptance_rate) != self.num_speculative_tokens:
            raise ValueError(f"acceptance_rate lists one value per draft position: {self.num_speculative_tokens} "
                             f"expected, got {len(self.acceptance_rate)}")
        return self

    def alphas(self) -> np.ndarray:
        """Acceptance probability of each draft position."""
        a = self.acceptance_rate
        return np.asarray(a if isinstance(a, list) else [a] * self.num_speculative_tokens, dtype=float)


class SpecStep(Step):
    """A :class:`Step` that also says how many draft tokens each of its requests verifies (0: none)."""

    __slots__ = ("drafts",)

    def __init__(self, requests, new_tokens, shape, drafts: list[int], extra: StepCost | None):
        super().__init__(requests, new_tokens, shape, 0, extra=extra)
        self.drafts = drafts


@SCHEDULERS.register(SpeculativeParams)
class SpeculativeDecoding(ContinuousBatching):
    """Continuous batching with speculative decoding: k draft tokens verified per sequence and iteration."""

    def __init__(self, params: SpeculativeParams, kv, swap=None):
        super().__init__(params, kv, swap=swap)
        self.k = params.num_speculative_tokens
        self.alphas = params.alphas()
        self.rng: np.random.Generator | None = None
        self.target_cost = None
        self.draft_cost = None                    # a step-time model of the draft model, or None (head)
        self._drafts: dict[int, int] = {}         # request id -> draft tokens in the step being built
        self.accepted_hist = np.zeros(self.k + 1, dtype=np.int64)   # full k-token verifications by tokens accepted

    def bind(self, step_cost, cost_of, rng) -> None:
        self.target_cost, self.rng = step_cost, rng
        if self.params.draft_model is not None:
            self.draft_cost = cost_of(load_model(self.params.draft_model, where="scheduler.draft_model"))

    # --- scheduling ------------------------------------------------------------------------------
    def schedule(self) -> Step | None:
        self._drafts = {}
        return super().schedule()

    def tokens_for(self, req: Request, budget: int) -> int:
        """As the base class, but a decoding request (only its last sampled token left to compute) also
        feeds up to k draft tokens: never past its last output token, nor past the token budget. The
        draft count is noted for the step (a request that then fails to get KV is not in the step)."""
        todo = req.num_tokens - req.num_computed
        k = 0
        if todo == 1 and req.num_generated:
            k = max(0, min(self.k, req.output_tokens - req.num_generated - 1, budget - 1))
        if not k:
            return min(todo, budget)
        self._drafts[req.id] = k
        return k + 1                                  # the lookahead: c + k + 1 slots

    def make_step(self, reqs: list, news: list, acc: BatchAccumulator, steady: bool = True) -> Step | None:
        if not reqs:
            return None
        drafts = [self._drafts.get(r.id, 0) for r in reqs]
        # the target samples at every verified position, and once for each request that catches up
        logits = sum(k + 1 if k else int(r.num_computed + n == r.num_tokens)
                     for r, n, k in zip(reqs, news, drafts))
        return SpecStep(reqs, news, acc.shape(logits), drafts, self._draft_work(reqs, news, drafts))

    def _draft_work(self, reqs: list, news: list, drafts: list[int]) -> StepCost | None:
        """What drafting costs this iteration, or None when it costs nothing."""
        spec = [(r.num_computed, k) for r, k in zip(reqs, drafts) if k]
        if self.draft_cost is None:               # a head: a fraction of a target decode step
            if not spec:
                return None
            acc = BatchAccumulator()
            for c, _ in spec:
                acc.add(1, c)
            base = self.target_cost(acc.shape(len(spec)))
            f = self.params.draft_cost_fraction
            return StepCost(f * base.time_s, base.bound, f * base.flops, f * base.bytes)
        # a draft model: pass 0 runs what the target runs, with each speculating sequence feeding only its
        # pending token (so the draft model keeps the KV of every prompt and accepted token); pass j > 0
        # feeds draft token j of each sequence still drafting, over c + j cached tokens
        acc = BatchAccumulator()
        logits = 0
        for r, n, k in zip(reqs, news, drafts):
            acc.add(1 if k else n, r.num_computed)
            logits += 1 if k or r.num_computed + n == r.num_tokens else 0
        total = self.draft_cost(acc.shape(logits))
        time_s, flops, bytes_ = total.time_s, total.flops, total.bytes
        for j in range(1, max((k for _, k in spec), default=0)):
            acc = BatchAccumulator()
            for c, k in spec:
                if k > j:
                    acc.add(1, c + j)
            one = self.draft_cost(acc.shape(acc.n))
            time_s, flops, bytes_ = time_s + one.time_s, flops + one.flops, bytes_ + one.bytes
        return StepCost(time_s, total.bound, flops, bytes_)

    # --- after the iteration ---------------------------------------------------------------------
    def update(self, step: Step, now: float, itl: ItlRecorder) -> list[Request]:
        """Advance the step's requests. A speculating request accepts a + 1 tokens (one chunk, one ITL
        value); the others are advanced as in the base class, but nobody is frozen as a steady decoder."""
        finished = []
        drafts = step.drafts if isinstance(step, SpecStep) else [0] * len(step.requests)
        accepted = self._accept(drafts)
        for req, n, k, a in zip(step.requests, step.new_tokens, drafts, accepted):
            if k:
                req.num_computed += a + 1           # the pending token and the accepted drafts
                emitted = a + 1                     # ... plus the target's own token
            else:
                req.num_computed += n
                if req.num_computed < req.num_tokens:
                    continue                        # a prefill chunk that has not reached the end
                emitted = 1
            req.num_generated += emitted
            if req.first_token_s < 0:
                req.first_token_s = now
            else:
                itl.add(now - req.last_token_s)
            req.last_token_s = now
            if req.num_generated >= req.output_tokens:
                req.finish_s = now
                finished.append(req)
        for req in finished:
            self.active.remove(req)
            del self.running[req.id]
            self.kv.free(req.id)
        self.num_outstanding -= len(finished)
        return finished

    def _accept(self, drafts: list[int]) -> list[int]:
        """Accepted draft tokens per row: positions are accepted in order, position i with probability
        alpha_i, until the first rejection (one uniform per draft position, from the seeded generator)."""
        kmax = max(drafts, default=0)
        if not kmax:
            return [0] * len(drafts)
        if self.rng is None:
            raise RuntimeError("speculative scheduler used before bind(): it needs the cluster's generator")
        u = self.rng.random((len(drafts), kmax))
        ok = u < self.alphas[:kmax]
        run = np.cumprod(ok, axis=1).sum(axis=1)
        out = [min(a, k) for k, a in zip(drafts, run.tolist())]
        for k, a in zip(drafts, out):
            if k == self.k:                         # full-length verifications only (the law's support)
                self.accepted_hist[a] += 1
        return out
