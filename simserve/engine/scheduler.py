"""The contract between a replica and its batch scheduler, and the bookkeeping every policy shares.

A scheduler owns a waiting queue and the running requests (in admission order). Each iteration the
replica calls :meth:`Scheduler.schedule` for a :class:`Step`, waits the step's time, then calls
:meth:`Scheduler.update`. Policies subclass :class:`Scheduler` and implement ``schedule``.

Speed: most running requests are *steady decoders* — each iteration they compute one token and sample
one. They are not touched per iteration: each is frozen at the decode tick ``k0`` where it became
steady with ``c0`` computed and ``g0`` generated tokens, so after ``d`` more ticks it has ``c0 + d`` and
``g0 + d``. Only events cost work: a decoder needing its next KV block (every ``block_size`` ticks), a
decoder finishing, or a preemption. The others, *active* requests (prefilling, recomputing), are
handled one by one. A tick is an iteration in which the steady decoders advance.

Where blocks are never shared, even the block events go: a decoder's block crossings fall on the
ticks of one residue class modulo the block size, so a tick's blocks are a count per class, reserved
in bulk and put into block tables only when a decoder stops being steady
(:meth:`Scheduler.count_blocks_by_class`). With sharing, each crossing is a block-due event.

Preemption is by recompute, or by swap when the scheduler is given a :class:`HostSwap`: the victim's KV
is copied to host memory and back on readmission, and the copy times are charged to the iteration in
which they happen (``Step.transfer_s``).

Parallel sampling (``Request.n > 1``): a request that samples its first token forks into ``n`` sequences
sharing its KV blocks (:meth:`BlockManager.fork`). Every sequence of the group gets a block-due event at
its first tick, so the shared, partly filled last block is copied on write before anyone appends. From
then on each sequence is a running request of its own (preempted, recomputed or swapped alone); the
parent is reported finished when its last sequence finishes.

Beam search (``beams`` set, :mod:`simserve.engine.beam`): groups fork the same way, and after every tick
``beams.select`` lets some beams take over others' blocks.
"""
from __future__ import annotations

from array import array
from collections import deque
from dataclasses import dataclass

from pydantic import Field

from ..config.base import Frozen
from ..cost.batch import BatchAccumulator, BatchShape
from ..cost.step import StepCost
from .kv import BlockManager
from .request import Request
from .swap import HostSwap


_NONE: list = []          # shared empty list for steps without active requests (never mutated)


def _by_seq(req: Request) -> int:
    return req.seq


class SchedulerParams(Frozen):
    """Limits shared by every batch scheduler (vLLM names)."""

    max_num_seqs: int = Field(256, ge=1, description="Most sequences in one iteration")
    max_num_batched_tokens: int = Field(8192, ge=1, description="Token budget of one iteration")
    max_model_len: int | None = Field(None, ge=2, description="Longest prompt+output; default: the model's max_context")


@dataclass(slots=True)
class Step:
    """One iteration: every steady decoder computes one token (``num_steady`` of them, a tick when > 0),
    and ``requests[i]`` computes ``new_tokens[i]``. ``shape`` is what the cost model sees.

    Waste, for policies that run fixed-shape batches (both are 0 for continuous batching):
    ``padding_tokens`` of ``shape.num_tokens`` are prompt padding, computed for no request; and
    ``idle_slots`` rows of the batch hold no unfinished request in this iteration (included in ``shape``
    when the policy still computes them).

    ``transfer_s``: seconds of copies between device and host memory (swapped KV) that the iteration
    waits for on top of its compute; the replica adds it to the step time.

    ``extra``: work the iteration runs outside ``shape`` on the same devices (a speculative draft
    model), costed by the policy; the replica adds its time, FLOPs and bytes to the step's."""

    requests: list[Request]
    new_tokens: list[int]
    shape: BatchShape
    num_steady: int
    padding_tokens: int = 0
    idle_slots: int = 0
    transfer_s: float = 0.0
    extra: StepCost | None = None


class ItlRecorder:
    """Inter-token latencies pooled over every streamed chunk, as (value, count) records: a tick's
    steady decoders share one record, so no per-token storage is needed and percentiles stay exact."""

    __slots__ = ("values", "counts")

    def __init__(self) -> None:
        self.values = array("d")
        self.counts = array("q")

    def add(self, value: float, count: int = 1) -> None:
        self.values.append(value)
        self.counts.append(count)


class Scheduler:
    """Base class. Subclasses implement :meth:`schedule` with the helpers below.

    ``fast_forward``: a policy whose ``schedule`` reduces to ``schedule_steady`` + ``decode_step`` when
    nothing is active or waiting sets it, and the replica may then run such iterations in spans
    (:meth:`quiet_ticks`).

    ``num_outstanding`` (waiting plus running requests, what routers read) is kept by the methods that
    add and remove them (:meth:`add`, :meth:`update`, :meth:`discard`, :meth:`drain`, forks); a policy
    that removes a finished request from ``running`` itself subtracts it too (see the speculative
    policy's ``update``)."""

    fast_forward = False

    def __init__(self, params: SchedulerParams, kv: BlockManager, swap: HostSwap | None = None):
        self.params = params
        self.kv = kv
        self.swap = swap                          # host memory for preemption by swap; None: recompute
        self.pending_transfer_s = 0.0             # host copies made while scheduling, not yet charged
        self._offload_copy_s = 0.0
        self.waiting: deque[Request] = deque()
        self.running: dict[int, Request] = {}     # admission order, steady and active alike
        self.num_outstanding = 0                  # len(waiting) + len(running), kept as they change (routers read it)
        self.active: list[Request] = []           # running requests that are not steady, in order
        self.num_preemptions = 0
        self.num_steady = 0
        self._steady_sum = 0                      # sum of (c0 - k0) over steady decoders
        self.tick = 0                             # ticks completed
        self.tick_end_s = -1.0                    # when the last tick ended
        self._fresh: list[Request] = []           # frozen since the last tick: own last-token time
        self._block_due: dict[int, list] = {}     # tick -> [(request, version)] needing a block then
        self._finish_due: dict[int, list] = {}    # tick -> [(request, version)] finishing in that tick
        self._admitted = 0
        self._next_child_id = -1                  # forked sequences take negative ids (never routed)
        self.prefix_hit_tokens = 0                # prompt tokens reused from the prefix cache at admission
        self.admitted_prompt_tokens = 0           # tokens (prompt + generated) of every admission
        self.now = 0.0                            # simulated time, set by the replica before schedule()
        self.beams = None                         # BeamSearch when requests' sequences are beams
        self.copies = None                        # BlockCopies charging copy-on-write copies (forks)
        self._by_class: list[int] | None = None   # blocks counted by class (count_blocks_by_class)
        self._kv_tick = -1                        # by class: the last tick whose blocks are handed out

    # --- hooks -----------------------------------------------------------------------------------
    def schedule(self) -> Step | None:
        """Hook: the next iteration, or None when there is nothing to run. Must make progress whenever
        requests are running (preempting when KV runs out) and allocate KV for every token it schedules
        (``schedule_steady`` and ``schedule_active`` do both). ``self.now`` is the current time."""
        raise NotImplementedError

    def next_wake_s(self) -> float | None:
        """Hook: after ``schedule`` returned None, the time (> ``self.now``) at which to call it again even
        if no request arrives, e.g. when a batching timer expires; None (the default) sleeps until the
        next arrival. A scheduler that returns None with requests waiting must return a time here."""
        return None

    def bind(self, step_cost, cost_of, rng) -> None:
        """Hook: called once by the cluster after construction with the replica's step-time model
        (``step_cost(shape) -> StepCost``), a factory of step-time models of another model on the same
        devices (``cost_of(ModelSpec)``), and a random generator of this replica's own, derived from the
        scenario's seed. The default ignores them."""

    # --- queue -----------------------------------------------------------------------------------
    def add(self, req: Request) -> None:
        """A request routed to this replica joins the waiting queue."""
        self.waiting.append(req)
        self.num_outstanding += 1

    def attach_cached_prefix(self, req: Request) -> int:
        """Prefix caching: a request about to be admitted with nothing computed shares every cached
        leading block of its prompt; those tokens count as computed. At least one token is always left
        to compute (the model must run to sample). Returns the tokens reused."""
        if req.block_hashes is None or req.num_computed:
            return 0
        usable = (req.num_tokens - 1) // self.kv.block_size
        cached = self.kv.attach_prefix(req.id, req.block_hashes[:usable])
        req.num_computed = cached
        if self.kv.last_loaded:                   # copied back from the offload tier: charged to this step
            self._offload_copy_s = self.kv.offload.copy_s(self.kv.last_loaded)
            self.pending_transfer_s += self._offload_copy_s
        return cached

    def detach_cached_prefix(self, req: Request, cached: int) -> None:
        """Undo :meth:`attach_cached_prefix` when the request is not admitted after all."""
        if req.block_hashes is not None:
            self.kv.free(req.id)
            self.kv.hits_tokens -= cached
            req.num_computed -= cached
            if self.kv.last_loaded:               # the copies stay on the device as cached blocks
                self.pending_transfer_s -= self._offload_copy_s
                self.kv.last_loaded = 0

    def admit(self, req: Request) -> None:
        """Move the head of the waiting queue into the running set (the caller allocated its KV). A
        request whose KV was swapped out has it copied back (the time is charged to this iteration)."""
        self.waiting.popleft()
        if self.swap is not None and self.swap.holds(req.id):
            self.pending_transfer_s += self.swap.swap_in(req.id)
            self.admitted_prompt_tokens += req.num_tokens - req.num_computed
        else:
            self.prefix_hit_tokens += req.num_computed if req.block_hashes is not None else 0
            self.admitted_prompt_tokens += req.prompt_tokens + req.num_generated     # req.num_tokens
        self._admitted += 1
        req.seq = self._admitted
        self.running[req.id] = req
        self.active.append(req)

    # --- steady decoders -------------------------------------------------------------------------
    def count_blocks_by_class(self) -> None:
        """Count the KV blocks steady decoders take instead of handing each its block (for replicas whose
        blocks are never shared: no prefix caching, forks or beams). A steady decoder frozen with ``c0``
        computed tokens at tick ``k0`` crosses into a new block at tick ``t`` exactly when
        ``c0 + t - k0`` is a multiple of the block size, so the decoders needing a block at ``t`` are
        those of class ``(c0 - k0) mod block_size`` equal to ``-t mod block_size``: a tick's blocks are
        one count per class, reserved in the block manager in bulk, and put into a decoder's table only
        when it stops being steady (or blocks run short). Same blocks, same preemptions, no per-decoder
        work between a decoder's freeze and its thaw."""
        if self.num_steady:
            raise RuntimeError("count_blocks_by_class must be chosen before any request runs")
        self._by_class = [0] * self.kv.block_size

    def _leave_class_mode(self) -> None:
        """From now on every steady decoder gets its block through a block-due event (sharing began)."""
        if self._by_class is None:
            return
        steady = [req for req in self.running.values() if req.steady]
        for req in steady:
            self._materialize(req)
        self._by_class = None
        for req in steady:
            self._push_block_due(req, req.k0 + req.output_tokens - req.g0 - 1)

    def _materialize(self, req: Request, release: bool = False) -> None:
        """By class: the blocks ``req`` took since its freeze go from the reserve into its table (or,
        ``release``, straight back: it finished and its table is freed next)."""
        kv = self.kv
        kv_tick = self._kv_tick if self._kv_tick > req.k0 - 1 else req.k0 - 1      # max(...)
        tokens = req.c0 + kv_tick - req.k0 + 1
        extra = -(-tokens // kv.block_size) - kv.num_held(req.id)                  # kv.blocks_for(tokens) - ...
        if extra > 0:
            if release:
                kv.unreserve(extra)
            else:
                kv.claim(req.id, extra, tokens)

    def blocks_held(self, req: Request) -> int:
        """KV blocks ``req`` holds, counting those reserved for it by class."""
        n = self.kv.num_held(req.id)
        if self._by_class is not None and req.steady:
            n = max(n, self.kv.blocks_for(req.c0 + max(self._kv_tick, req.k0 - 1) - req.k0 + 1))
        return n

    def _freeze(self, req: Request, shared_tail: bool = False) -> None:
        """``req`` has caught up and sampled: from the next tick on it decodes one token per tick.
        ``shared_tail``: its last block may be shared (just forked), so it needs a block event at once."""
        req.steady = True
        req.version += 1
        req.k0, req.c0, req.g0 = self.tick, req.num_computed, req.num_generated
        self.num_steady += 1
        self._steady_sum += req.c0 - req.k0
        self._fresh.append(req)
        finish = req.k0 + req.output_tokens - req.g0 - 1
        due = self._finish_due.get(finish)
        if due is None:
            self._finish_due[finish] = [(req, req.version)]
        else:
            due.append((req, req.version))
        by_class = self._by_class
        if by_class is not None:
            if self._kv_tick >= self.tick:   # that tick's decoders were all preempted: it never ran
                self._kv_tick = self.tick - 1
            if not shared_tail and self.kv.num_held(req.id) == self.kv.blocks_for(req.c0):
                by_class[(req.c0 - req.k0) % len(by_class)] += 1
                return
            self._leave_class_mode()
        self._push_block_due(req, finish, shared_tail)

    def _push_block_due(self, req: Request, finish_tick: int, now: bool = False) -> None:
        # at tick t the decoder needs c0 + (t - k0) + 1 slots; its blocks hold held * block_size
        tick = req.k0 if now else req.k0 + self.kv.num_held(req.id) * self.kv.block_size - req.c0
        if tick <= finish_tick:
            if tick < self.tick:
                tick = self.tick
            due = self._block_due.get(tick)
            if due is None:
                self._block_due[tick] = [(req, req.version)]
            else:
                due.append((req, req.version))

    def _thaw(self, req: Request, finished: bool = False) -> None:
        """Write a steady decoder's current counts back to it; it stops being steady. ``finished``: its
        blocks are freed next."""
        by_class = self._by_class
        if by_class is not None:
            self._materialize(req, finished)
            by_class[(req.c0 - req.k0) % len(by_class)] -= 1
        done = self.tick - req.k0
        req.num_computed = req.c0 + done
        req.num_generated = req.g0 + done
        if done > 0:
            req.last_token_s = self.tick_end_s
        req.steady = False
        req.version += 1
        self.num_steady -= 1
        self._steady_sum -= req.c0 - req.k0
        if done == 0 and req in self._fresh:
            self._fresh.remove(req)

    def quiet_ticks(self, limit: int) -> int:
        """How many iterations from now on are *quiet* (at most ``limit``, at most one block size): only
        steady decoders, every KV block they need free without preemption or sharing, so each iteration
        is ``schedule_steady`` + ``decode_step`` + ``update`` and nothing a router or another replica can
        see changes before it ends. An iteration in which decoders finish ends the run of quiet ones (it
        is included: the finishes happen at its end). 0 when the next iteration is not quiet, and
        always 0 unless blocks are counted by class (:meth:`count_blocks_by_class`), which is what makes
        a quiet iteration's blocks a count known in advance."""
        by_class = self._by_class
        if by_class is None or self.active or self.waiting or not self.num_steady:
            return 0
        free, fd = self.kv.num_unused, self._finish_due
        bs = len(by_class)
        t0 = self.tick
        stop = t0 + min(limit, bs)
        need = 0
        for t in range(t0, stop):
            need += by_class[-t % bs]
            if need > free:
                return t - t0
            fin = fd.get(t)
            if fin is not None:
                for r, v in fin:
                    if v == r.version:              # someone finishes in this tick
                        return t - t0 + 1
        return stop - t0

    def advance_tick(self, now: float, itl: "ItlRecorder", num_steady: int) -> list:
        """The tick of ``num_steady`` steady decoders ends at ``now``: each has sampled a token (one ITL
        record for those not frozen since the last tick). Returns the (request, version) entries due to
        finish in it."""
        fresh = self._fresh
        if fresh:
            values, counts = itl.values, itl.counts      # ItlRecorder.add, inlined
            for req in fresh:
                values.append(now - req.last_token_s)
                counts.append(1)
        if num_steady > len(fresh):
            itl.values.append(now - self.tick_end_s)
            itl.counts.append(num_steady - len(fresh))
        fresh.clear()
        t = self.tick
        self.tick += 1
        self.tick_end_s = now
        return self._finish_due.pop(t, ())

    def steady_ctx_plus_one(self) -> int:
        """Sum over steady decoders of (cached tokens + 1) at the coming tick."""
        return self._steady_sum + self.num_steady * (self.tick + 1)

    def kv_tokens_in_use(self, step: Step) -> int:
        """KV slots filled once ``step`` has run: every running request's computed tokens plus the
        step's new ones (a metric; a block shared by several requests counts for each)."""
        n = self._steady_sum + self.num_steady * self.tick + step.num_steady
        for req in self.active:
            n += req.num_computed
        return n + sum(step.new_tokens)

    # --- preemption ------------------------------------------------------------------------------
    def preempt_last(self) -> Request:
        """Preempt the most recently admitted running request; it rejoins the front of the queue. By
        recompute: its KV is dropped, and it will recompute its prompt and every generated token. By
        swap (``self.swap`` set): its computed KV is copied to host memory and it keeps its progress;
        when the host has no room, by recompute."""
        victim = next(reversed(self.running.values()))
        del self.running[victim.id]
        if victim.steady:
            self._thaw(victim)
        else:
            self.active.remove(victim)
        self.kv.free(victim.id)
        if self.swap is None or not self._swap_out(victim):
            victim.num_computed = 0
        victim.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(victim)
        return victim

    def _swap_out(self, req: Request) -> bool:
        """Copy the blocks holding ``req``'s computed KV to host memory; False when there is nothing
        to copy or no room."""
        if not req.num_computed:
            return False
        copy_s = self.swap.swap_out(req.id, self.kv.blocks_for(req.num_computed))
        if copy_s is None:
            return False
        self.pending_transfer_s += copy_s
        return True

    def charge_transfers(self, step: Step | None) -> Step | None:
        """Put the host copies made while scheduling on ``step`` (on the next step when None)."""
        if step is not None and self.pending_transfer_s:
            step.transfer_s = self.pending_transfer_s
            self.pending_transfer_s = 0.0
        return step

    def schedule_steady(self) -> bool:
        """Give every steady decoder the KV block it needs at this tick, in admission order, preempting
        from the back of the running set when blocks run out. Returns whether it preempted."""
        if self._by_class is not None:
            return self._schedule_by_class()
        t = self.tick
        due = self._block_due.pop(t, None)
        if due is None:
            return False
        # each needer is one token past its last block (that is what its due tick means)
        needers = [req for req, version in due if version == req.version]
        preempted = False
        needers.sort(key=_by_seq)                         # admission order, as vLLM allocates
        for req in needers:
            if not req.steady:
                continue                                  # preempted as a victim already
            fits, evicted = self.allocate_or_preempt(req, req.c0 + (t - req.k0) + 1)
            preempted |= evicted
            if fits:
                self._push_block_due(req, req.k0 + req.output_tokens - req.g0 - 1)
        return preempted

    def _schedule_by_class(self) -> bool:
        """:meth:`schedule_steady` when blocks are counted by class."""
        if not self.num_steady:
            return False
        t, kv = self.tick, self.kv
        need = self._by_class[-t % kv.block_size]
        if need <= kv.num_unused:
            if need:
                kv.reserve(need)
            self._kv_tick = t
            return False
        # blocks run short: every steady decoder's blocks into its table, then vLLM's order (admission
        # order, which is the running set's), preempting from the back
        for req in self.running.values():
            if req.steady:
                self._materialize(req)
        bs = kv.block_size
        needers = [req for req in self.running.values() if req.steady and (req.c0 - req.k0 + t) % bs == 0]
        preempted = False
        for req in needers:
            if req.steady:                                # not preempted as a victim already
                preempted |= self.allocate_or_preempt(req, req.c0 + (t - req.k0) + 1)[1]
        self._kv_tick = t
        return preempted

    def allocate_or_preempt(self, req: Request, num_tokens: int) -> tuple[bool, bool]:
        """KV for ``num_tokens`` slots of ``req``, preempting from the back of the running set while
        blocks are short (vLLM's rule). Returns (whether ``req`` got them, whether anything was
        preempted); ``req`` itself is the last victim possible."""
        preempted = False
        while self.kv.allocate_slots(req.id, num_tokens) is None:
            preempted = True
            if self.preempt_last() is req:
                return False, True
        return True, preempted

    def tokens_for(self, req: Request, budget: int) -> int:
        """Hook: the new tokens an active request computes this iteration (at least 1, at most
        ``budget``); by default what it has left, capped by the budget."""
        return min(req.num_tokens - req.num_computed, budget)

    def schedule_active(self, budget: int, reqs: list, news: list, acc: BatchAccumulator) -> tuple[int, bool]:
        """Active running requests in order take their next tokens from ``budget``, preempting from the
        back when KV runs out. Returns the budget left and whether it preempted."""
        preempted = False
        for req in list(self.active):
            if budget <= 0:
                break
            if req.id not in self.running:
                continue
            n = self.tokens_for(req, budget)
            fits, evicted = self.allocate_or_preempt(req, req.num_computed + n)
            preempted |= evicted
            if not fits:
                break
            reqs.append(req)
            news.append(n)
            acc.add(n, req.num_computed)
            budget -= n
        return budget, preempted

    def decode_step(self) -> Step | None:
        """An iteration of steady decoders only."""
        n = self.num_steady
        if not n:
            return None
        return Step(_NONE, _NONE, BatchShape(n, n, n, n, self.steady_ctx_plus_one()), n)

    def make_step(self, reqs: list, news: list, acc: BatchAccumulator, steady: bool = True) -> Step | None:
        num_steady = self.num_steady if steady else 0
        if not reqs and not num_steady:
            return None
        if num_steady:
            acc.add_decodes(num_steady, self.steady_ctx_plus_one())
        logits = num_steady                     # sequences that sample: steady ones and those catching up
        for r, n in zip(reqs, news):
            if r.num_computed + n == r.prompt_tokens + r.num_generated:   # r.num_tokens
                logits += 1
        return Step(reqs, news, acc.shape(logits), num_steady)

    # --- after the iteration ---------------------------------------------------------------------
    def update(self, step: Step, now: float, itl: ItlRecorder) -> list[Request]:
        """Advance the step's requests at time ``now``. A request that has caught up samples one token
        (the first sets TTFT, later ones record an inter-token latency). Returns the requests that
        finished; their KV is freed and they leave the running set."""
        finished = []
        if step.num_steady:
            for req, version in self.advance_tick(now, itl, step.num_steady):
                if version == req.version:
                    self._thaw(req, True)
                    req.last_token_s = req.finish_s = now
                    finished.append(req)
        for req, n in zip(step.requests, step.new_tokens):
            req.num_computed += n
            if req.block_hashes:
                self.kv.register_prefix(req.id, req.block_hashes, req.num_computed)
            if req.num_computed < req.prompt_tokens + req.num_generated:      # req.num_tokens
                continue                      # a prefill chunk that has not reached the end
            req.num_generated += 1
            if req.first_token_s < 0:
                req.first_token_s = now
            else:
                itl.add(now - req.last_token_s)
            req.last_token_s = now
            self.active.remove(req)
            forked = req.n > 1 and not req.seqs_left and req.parent is None and self._fork(req, now)
            if req.num_generated >= req.output_tokens:
                req.finish_s = now
                finished.append(req)
            else:
                self._freeze(req, forked)
        for req in finished:
            del self.running[req.id]
            self.kv.free(req.id)
        self.num_outstanding -= len(finished)
        if self._next_child_id != -1:            # some request forked: report groups, not sequences
            finished = self._completed(finished, now)
        if self.beams is not None:
            self.beams.select(self)
        return finished

    # --- parallel sampling -----------------------------------------------------------------------
    def _fork(self, req: Request, now: float) -> bool:
        """``req`` sampled its first tokens: fork it into ``req.n`` sequences sharing its blocks (no
        children when that token was its last). Returns whether it forked."""
        self._leave_class_mode()
        if req.num_generated >= req.output_tokens:
            req.seqs_left = 1                     # every sequence sampled its only token at once
            return False
        req.seqs_left = req.n
        req.children = []
        for _ in range(req.n - 1):
            child = Request(self._next_child_id, req.arrival_s, req.prompt_tokens, req.output_tokens)
            self._next_child_id -= 1
            child.parent, child.replica, child.block_hashes = req, req.replica, req.block_hashes
            child.num_computed, child.num_generated = req.num_computed, req.num_generated
            child.first_token_s = child.last_token_s = now
            self.kv.fork(req.id, child.id)
            self._admitted += 1
            child.seq = self._admitted
            self.running[child.id] = child
            self.num_outstanding += 1
            req.children.append(child)
            self._freeze(child, True)
        if self.beams is not None:
            self.beams.track(req)
        return True

    def _completed(self, finished: list[Request], now: float) -> list[Request]:
        """The requests whose every sequence has finished, among the sequences in ``finished``."""
        done = []
        for seq in finished:
            head = seq.parent or seq
            if head.n == 1:
                done.append(head)
                continue
            head.seqs_left -= 1
            if head.seqs_left == 0:
                head.last_token_s = head.finish_s = now
                done.append(head)
            else:
                head.finish_s = -1.0
        return done

    # --- timeouts, failures and the end of a run -------------------------------------------------
    def discard(self, req: Request) -> None:
        """Drop a waiting request (an admission timeout): its KV, on the device or the host, is freed."""
        self.waiting.remove(req)
        self.num_outstanding -= 1
        self.kv.free(req.id)
        if self.swap is not None:
            self.swap.drop(req.id)

    def drain(self) -> list[Request]:
        """Drop everything (a failure): returns the running and waiting requests, their KV freed (on
        the host too)."""
        for req in self.running.values():
            if req.steady:
                self._thaw(req)
        lost = list(self.running.values()) + list(self.waiting)
        for req in lost:
            self.kv.free(req.id)
            req.num_computed = 0
        if self._next_child_id != -1:            # a forked group restarts whole: return parents only
            heads = {}
            for req in lost:
                heads.setdefault(id(req.parent or req), req.parent or req)
            lost = list(heads.values())
            for req in lost:
                if req.n > 1:
                    req.children = []
                    req.seqs_left = req.num_generated = 0
        self.running.clear()
        self.active.clear()
        self.waiting.clear()
        self.num_outstanding = 0
        self._fresh.clear()
        self._block_due.clear()
        self._finish_due.clear()
        if self.swap is not None:
            self.swap.clear()
        self.pending_transfer_s = 0.0
        return lost

    def settle(self) -> None:
        """Write every steady decoder's counts back (the run is over)."""
        for req in self.running.values():
            if req.steady:
                self._thaw(req)
