"""Builds the simulated cluster from a resolved scenario and runs it: arrivals -> router -> replicas."""
from __future__ import annotations

import gc
from array import array
from dataclasses import dataclass

import numpy as np
import simpy

from .. import policies, workload
from ..scenario import Resolved
from ..workload.specs import RequestSpecs
from . import failures
from .beam import BeamSearch, BlockCopies, block_copy_cost
from .disaggregation import kv_transfer_s, transfer_link
from .kv import BlockManager, OffloadTier
from .prefix import shared_block_hashes, trace_block_hashes
from .scheduler import ItlRecorder
from .swap import HostSwap
from .pipeline import PipelinedReplica
from .replica import Replica
from .request import COMPLETED, REJECTED, UNFINISHED, Request


@dataclass
class RunRecord:
    """Everything a run produced, before it is summarised."""

    requests: list[Request]
    itl_s: np.ndarray                # pooled inter-token latencies, seconds ...
    itl_counts: np.ndarray           # ... and how many tokens each value stands for
    replicas: list[Replica]
    duration_s: float
    num_requests: int
    outstanding: np.ndarray          # (arrival time, requests in the system just after it) per arrival
    failure_stats: dict
    disaggregation: dict | None = None   # pools and KV transfers (deployment.disaggregation), else None


class Cluster:
    """Replicas behind a router, fed by the workload. ``run()`` returns a :class:`RunRecord`."""

    def __init__(self, resolved: Resolved, specs: RequestSpecs, step_scale: float = 1.0,
                 rng: np.random.Generator | None = None):
        cfg = resolved.config
        self.resolved = resolved
        self.specs = specs
        self.env = simpy.Environment()
        self.itl = ItlRecorder()
        self.requests: list[Request] = []
        self.num_done = 0
        self.done = self.env.event()

        def cost_of(model):
            """The scenario's step-time model for ``model`` on this deployment's devices."""
            fn = policies.COST_MODELS.impl(cfg.cost_model.kind)(
                cfg.cost_model, model, resolved.hardware, resolved.precision, cfg.deployment.tensor_parallel,
                **resolved.expert_parallelism)
            return fn if step_scale == 1.0 else _scaled(fn, step_scale)

        cost = cost_of(resolved.model)
        sched_cls = policies.SCHEDULERS.impl(cfg.scheduler.policy)
        plan = resolved.memory
        timeout_s = cfg.admission.request_timeout_s
        swap = getattr(cfg.scheduler, "preemption", "recompute") == "swap"

        def scheduler():
            kv = BlockManager(plan.num_blocks, plan.block_size, offload_tier(resolved))
            return sched_cls(cfg.scheduler, kv, swap=host_swap(resolved)) if swap else sched_cls(cfg.scheduler, kv)

        dis = self.disaggregation = cfg.deployment.disaggregation
        num_prefill = dis.prefill_replicas if dis is not None else 0
        pp = cfg.deployment.pipeline_parallel
        self.engine_blocks = plan.num_blocks // pp     # each virtual engine's share of the KV cache
        if pp == 1:
            spans = fast_forward_safe(resolved, specs)
            self.replicas = [
                Replica(self.env, i, scheduler(), cost, self.itl, self._prefilled if i < num_prefill else self._finished,
                        lambda r: self._reject(r, "timeout"), timeout_s, spans)
                for i in range(cfg.deployment.replicas)
            ]
        else:
            stage_costs, send_s = pipeline_costs(resolved, step_scale)

            def engine():
                return sched_cls(cfg.scheduler, BlockManager(self.engine_blocks, plan.block_size))
            self.replicas = [
                PipelinedReplica(self.env, i, [engine() for _ in range(pp)], stage_costs, send_s, self.itl,
                                 self._finished, lambda r: self._reject(r, "timeout"), timeout_s)
                for i in range(cfg.deployment.replicas)
            ]
        if blocks_never_shared(resolved):
            for rep in self.replicas:
                for sched in getattr(rep.scheduler, "engines", [rep.scheduler]):   # a pipeline's engines
                    if hasattr(sched, "count_blocks_by_class"):   # duck-typed schedulers may lack it
                        sched.count_blocks_by_class()
        for rep, sched_rng in zip(self.replicas, scheduler_rngs(cfg.seed, len(self.replicas))):
            if hasattr(rep.scheduler, "bind"):     # Scheduler.bind; duck-typed schedulers may lack it
                rep.scheduler.bind(cost, cost_of, sched_rng)
            if cfg.sampling.beam_width > 1:        # the continuous scheduler ignores sched_rng otherwise
                rep.scheduler.beams = rep.scheduler.copies = beam_search(resolved, sched_rng, step_scale)
            elif cfg.sampling.n > 1 and pp == 1:
                rep.scheduler.copies = BlockCopies(copy_cost_of(resolved, step_scale))
            elif cfg.sampling.n > 1:               # a pipeline's engines count their copies; no time yet
                for sched in rep.scheduler.engines:
                    sched.copies = BlockCopies()
        self._prefilling: dict[int, Request] = {}    # id -> request whose prompt stage is on the prefill pool
        if dis is None:
            self.pool, self.decode_pool = self.replicas, None
            self.router = policies.ROUTERS.impl(cfg.deployment.router.policy)(cfg.deployment.router, len(self.replicas))
        else:
            self.pool, self.decode_pool = self.replicas[:num_prefill], self.replicas[num_prefill:]
            self.router = _router(dis.prefill_router or cfg.deployment.router, len(self.pool))
            self.decode_router = _router(dis.decode_router or cfg.deployment.router, len(self.decode_pool))
            self.link = transfer_link(resolved.hardware, dis.link)
            self.transfers = {"kv_transfers": 0, "kv_transfer_tokens": 0, "kv_transfer_s": 0.0}
        self.max_queue = cfg.admission.max_queue
        self.failures_on = cfg.failures.enabled
        self.prefix_caching = cfg.kv_cache.enable_prefix_caching
        self.rng = rng if rng is not None else np.random.default_rng(cfg.seed)
        self.outstanding = array("d")     # arrival time, requests in the system just after it, per arrival
        self._columns: tuple | None = None   # prompt and output lengths as lists, sequences, beams (_new)
        self.max_model_len, self.block_size = resolved.max_model_len, resolved.memory.block_size
        self.stats = {"failure_events": 0, "spot_reclaims": 0, "requeued_requests": 0, "failure_rejected": 0}

    # --- request lifecycle -----------------------------------------------------------------------
    def submit(self, req: Request) -> None:
        self.requests.append(req)
        if req.prompt_tokens + req.output_tokens > self.max_model_len:
            self._reject(req, "exceeds_max_model_len")
        elif req.max_kv_blocks(self.block_size) > self.engine_blocks:
            self._reject(req, "exceeds_kv_capacity")
        elif self.disaggregation is None:
            self._route(req)
        else:
            self._prefill(req)
        self.outstanding.extend((self.env._now, len(self.requests) - self.num_done))   # env.now, no property call

    def _route(self, req: Request, pool: list[Replica] | None = None, router=None) -> None:
        """Send ``req`` to an open replica of ``pool`` chosen by ``router`` (default: the cluster's, or the
        prefill pool's)."""
        pool = self.pool if pool is None else pool
        if self.failures_on and not all(r.accepting for r in pool):   # only failures close replicas
            open_ = [r for r in pool if r.accepting]
        else:
            open_ = pool
        if not open_:
            return self._reject(req, "no_replica_available")
        target = open_[(self.router if router is None else router).route(req, open_)]
        if self.max_queue is not None and len(target.scheduler.waiting) >= self.max_queue:
            return self._reject(req, "queue_full")
        target.submit(req)

    # --- prefill/decode disaggregation --------------------------------------------------------------
    def _prefill(self, req: Request) -> None:
        """The prompt stage runs on the prefill pool as a request of one output token with the same id;
        ``req`` itself waits here until that stage finishes (:meth:`_prefilled`)."""
        stage = Request(req.id, req.arrival_s, req.prompt_tokens, 1, req.prefix_hashes)
        stage.block_hashes = req.block_hashes
        self._prefilling[req.id] = req
        self._route(stage)

    def _prefilled(self, stage: Request) -> None:
        """The first token is out (TTFT ends here) and the prefill replica has freed the KV: the prompt's KV
        crosses the link, then the request joins a decode replica's queue with its prompt computed."""
        req = self._prefilling.pop(stage.id)
        req.first_token_s = req.last_token_s = stage.first_token_s
        req.num_generated = 1
        req.num_preemptions += stage.num_preemptions
        req.replica = stage.replica
        if req.output_tokens == 1:
            req.finish_s = stage.finish_s
            return self._finished(req)
        self.env.process(self._transfer(req))

    def _transfer(self, req: Request):
        plan, hw = self.resolved.memory, self.resolved.hardware
        time_s = kv_transfer_s(req.prompt_tokens, plan.kv_bytes_per_token, self.link, hw.efficiency.send_recv)
        self.transfers["kv_transfers"] += 1
        self.transfers["kv_transfer_tokens"] += req.prompt_tokens
        self.transfers["kv_transfer_s"] += time_s
        yield self.env.timeout(time_s)
        req.num_computed = req.prompt_tokens
        req.block_hashes = None          # the decode pool receives KV, it does not look it up
        self._route(req, self.decode_pool, self.decode_router)

    def disaggregation_stats(self) -> dict | None:
        if self.disaggregation is None:
            return None
        dis, t = self.disaggregation, self.transfers
        return {"prefill_replicas": dis.prefill_replicas, "decode_replicas": dis.decode_replicas, "link": dis.link,
                **t, "kv_transfer_bytes_per_device": t["kv_transfer_tokens"] * self.resolved.memory.kv_bytes_per_token}

    # --- failures --------------------------------------------------------------------------------
    def fail(self, replica: Replica, cause: str) -> None:
        self.stats["failure_events"] += 1
        requeue = self.resolved.config.failures.on_failure == "requeue"
        for req in replica.fail():
            if requeue:
                req.num_requeues += 1
                self.stats["requeued_requests"] += 1
                self._route(req)
            else:
                self.stats["failure_rejected"] += 1
                self._reject(req, f"replica_{cause}")

    def repair(self, replica: Replica) -> None:
        replica.repair()

    def _reject(self, req: Request, reason: str) -> None:
        if self._prefilling:             # a prompt stage rejected on the prefill pool: its request is
            stage, req = req, self._prefilling.pop(req.id, req)
            req.replica = stage.replica
        req.outcome, req.reason = REJECTED, reason
        self._count(req)

    def _finished(self, req: Request) -> None:
        req.outcome = COMPLETED
        self._count(req)

    def _count(self, req: Request) -> None:
        self.num_done += 1
        if req.on_done is not None:
            req.on_done(req)
        if self.num_done == len(self.specs) and not self.done.triggered:
            self.done.succeed()

    # --- arrival processes -----------------------------------------------------------------------
    def _new(self, i: int) -> Request:
        s = self.specs
        if self._columns is None:            # plain lists: indexing numpy arrays a million times is slow
            sampling = self.resolved.config.sampling
            beams = sampling.beam_width > 1
            self._columns = (s.prompt_tokens.tolist(), s.output_tokens.tolist(),
                             sampling.beam_width if beams else sampling.n, beams)
        prompts, outputs, n, beams = self._columns
        hashes = s.prefix_hashes[i] if s.prefix_hashes is not None else None
        req = Request(i, self.env._now, prompts[i], outputs[i], hashes, n, beams)
        if self.prefix_caching:
            bs = self.resolved.memory.block_size
            if hashes is not None:
                req.block_hashes = trace_block_hashes(hashes, s.prefix_block_tokens, req.prompt_tokens, bs)
            else:
                req.block_hashes = shared_block_hashes(s.shared_prefix_tokens, req.prompt_tokens, bs)
        return req

    def open_loop(self):
        env, new, submit = self.env, self._new, self.submit
        for i, t in enumerate(self.specs.arrival_s.tolist()):
            if t > env._now:                       # env.now, without a property call
                yield Arrival(env, t - env._now)
            submit(new(i))

    def user(self, next_index: list[int]):
        env = self.env
        while next_index[0] < len(self.specs):
            i = next_index[0]
            next_index[0] += 1
            req = self._new(i)
            answered = env.event()
            req.on_done = lambda _r, ev=answered: ev.succeed()
            self.submit(req)
            yield answered
            if self.specs.think_time_s > 0:
                yield env.timeout(self.specs.think_time_s)

    def run(self) -> RunRecord:
        env = self.env
        if self.specs.closed_loop_users is not None:
            counter = [0]
            for _ in range(self.specs.closed_loop_users):
                env.process(self.user(counter))
        else:
            env.process(self.open_loop())
        if len(self.specs) == 0:
            self.done.succeed()
        if self.resolved.config.failures.enabled:
            failures.start(env, self, self.resolved.config.failures, self.rng)
        limit = self.resolved.config.run.max_duration_s
        until = self.done if limit is None else env.any_of([self.done, env.timeout(limit)])
        # The run allocates millions of short-lived objects and keeps every request: the cyclic garbage
        # collector would rescan them over and over for the few cycles the run makes. It is paused for
        # the run (the cycles are collected afterwards); results do not depend on it.
        collecting = gc.isenabled()
        gc.disable()
        try:
            env.run(until=until)
        finally:
            if collecting:
                gc.enable()
        for req in self.requests:
            if not req.outcome:
                req.outcome, req.reason = UNFINISHED, "run_ended"
        if len(self.requests) < len(self.specs):
            # the clock stopped before these were sent: they are accounted for too
            seen = {req.id for req in self.requests}
            closed = self.specs.closed_loop_users is not None
            for i in range(len(self.specs)):
                if i not in seen:
                    req = self._new(i)
                    req.arrival_s = float("nan") if closed else float(self.specs.arrival_s[i])
                    req.outcome, req.reason = UNFINISHED, "not_arrived"
                    self.requests.append(req)
        for rep in self.replicas:
            if isinstance(rep, Replica):
                rep.flush(env.now)
            rep.scheduler.settle()
            if isinstance(rep, PipelinedReplica):
                rep.pipeline.settle(env.now)
            if not rep.up:
                rep.stats.down_s += env.now - rep._down_since
        return RunRecord(self.requests, np.frombuffer(self.itl.values, dtype=float),
                         np.frombuffer(self.itl.counts, dtype=np.int64), self.replicas, env.now, len(self.specs),
                         np.frombuffer(self.outstanding, dtype=float).reshape(-1, 2), dict(self.stats),
                         self.disaggregation_stats())


class Arrival(simpy.Event):
    """A timeout with urgent priority: a request arriving at the very instant an iteration ends is in
    the queue when the replica schedules the next one, whatever order the two events were created in."""

    def __init__(self, env: simpy.Environment, delay: float):
        self.env, self.callbacks = env, []       # Event.__init__, inlined as SimPy's Timeout does
        self._ok, self._value = True, None
        env.schedule(self, simpy.events.URGENT, delay)


# Routers that read nothing of a replica but its request counts, which a quiet iteration leaves alone.
SPAN_SAFE_ROUTERS = frozenset({"round_robin", "least_outstanding"})


def blocks_never_shared(resolved: Resolved) -> bool:
    """No prefix caching, forks or beams: steady decoders' KV blocks may be counted by class
    (:meth:`Scheduler.count_blocks_by_class`)."""
    cfg = resolved.config
    return not cfg.kv_cache.enable_prefix_caching and cfg.sampling.n == 1 and cfg.sampling.beam_width == 1


def fast_forward_safe(resolved: Resolved, specs: RequestSpecs) -> bool:
    """Whether replicas may sleep through spans of quiet iterations (see :mod:`.replica`): only when no
    one looks inside a replica between its events. Failures interrupt replicas at any time, closed-loop
    users and disaggregated pools submit at iteration ends, prefix caching and parallel sampling share
    KV blocks (as beams do), pipelined replicas have their own loop, and a KV-reading router would see the span's bookkeeping late."""
    cfg = resolved.config
    return (not cfg.failures.enabled and specs.closed_loop_users is None and cfg.deployment.disaggregation is None
            and not cfg.kv_cache.enable_prefix_caching and cfg.sampling.n == 1 and cfg.sampling.beam_width == 1
            and cfg.deployment.pipeline_parallel == 1 and cfg.deployment.router.policy in SPAN_SAFE_ROUTERS)


def pipeline_costs(resolved: Resolved, step_scale: float = 1.0):
    """Each stage's step-time model, and ``send_s(stage, shape)``: the activation transfer from ``stage`` to
    the next, over the intra- or inter-node link as the stage boundary falls (``transfer_s`` of the
    constant cost model instead, when it has one)."""
    from ..cost import pipeline as pl

    cfg, hw, m = resolved.config, resolved.hardware, resolved.model
    dep = cfg.deployment
    impl = policies.COST_MODELS.impl(cfg.cost_model.kind)
    stage_costs = []
    for spec in pl.stages(m.num_layers, dep.pipeline_parallel):
        fn = impl(cfg.cost_model, m, hw, resolved.precision, dep.tensor_parallel, stage=spec,
                  **resolved.expert_parallelism)
        stage_costs.append(fn if step_scale == 1.0 else _scaled(fn, step_scale))
    fixed = getattr(cfg.cost_model, "transfer_s", None)
    if fixed is not None:
        return stage_costs, lambda stage, shape: fixed * step_scale
    links = [pl.link_of(hw, name) for name in pl.boundary_links(hw, dep.tensor_parallel, dep.pipeline_parallel)]
    act, eff = resolved.precision.act_bytes, hw.efficiency.send_recv

    def send_s(stage: int, shape) -> float:
        return pl.activation_transfer_s(shape.num_tokens, m.hidden_size, act, links[stage], eff) * step_scale
    return stage_costs, send_s


def _router(params, num_replicas: int):
    return policies.ROUTERS.impl(params.policy)(params, num_replicas)


def host_swap(resolved: Resolved) -> HostSwap:
    """One replica's host swap space: ``kv_cache.swap_space_gb`` per device, in KV blocks, copied over
    the hardware's host link."""
    plan, link = resolved.memory, resolved.hardware.host_link
    block_bytes = plan.block_size * plan.kv_bytes_per_token
    return HostSwap(int(resolved.config.kv_cache.swap_space_gb * 1e9 // block_bytes), block_bytes,
                    link.bandwidth_gb_s * 1e9, link.latency_us * 1e-6)


def copy_cost_of(resolved: Resolved, step_scale: float = 1.0):
    """``copy_cost(num_blocks)`` of copying KV blocks on one device, under the roofline cost model only
    (the constant and linear models charge nothing beyond their parameters): None otherwise."""
    if resolved.config.cost_model.kind != "roofline":
        return None
    block_bytes = resolved.memory.kv_bytes_per_token * resolved.memory.block_size
    return block_copy_cost(block_bytes, resolved.hardware, resolved.precision.attention_dtype, step_scale)


def beam_search(resolved: Resolved, rng: np.random.Generator, step_scale: float = 1.0) -> BeamSearch:
    """One replica's beam search, its block copies costed by :func:`copy_cost_of`."""
    return BeamSearch(resolved.config.sampling.beam_reshuffle, rng, copy_cost_of(resolved, step_scale))


def scheduler_rngs(seed: int, num_replicas: int) -> list[np.random.Generator]:
    """One generator per replica's scheduler (speculative acceptance draws, beam selection): the third
    stream spawned from the scenario's seed, after the workload's and the failures' (``run``), split per
    replica."""
    stream = np.random.SeedSequence(seed).spawn(3)[2]
    return [np.random.default_rng(s) for s in stream.spawn(num_replicas)]


def _scaled(cost_fn, factor: float):
    """Step times multiplied by ``factor`` (error bands)."""
    from ..cost.step import StepCost

    def scaled(shape):
        c = cost_fn(shape)
        return StepCost(c.time_s * factor, c.bound, c.flops, c.bytes)
    return scaled


def offload_tier(resolved: Resolved) -> OffloadTier | None:
    """The second prefix-cache tier of one replica's device, sized in KV blocks, or None."""
    cfg = resolved.config.kv_cache.offload
    if cfg is None:
        return None
    link = resolved.hardware.host_link
    block_bytes = resolved.memory.kv_bytes_per_token * resolved.memory.block_size
    bandwidth = (cfg.bandwidth_gb_s if cfg.bandwidth_gb_s is not None else link.bandwidth_gb_s) * 1e9
    latency = (cfg.latency_us if cfg.latency_us is not None else link.latency_us) * 1e-6
    return OffloadTier(int(cfg.capacity_gb * 1e9 // block_bytes), block_bytes, bandwidth, latency)


def run(resolved: Resolved, step_scale: float = 1.0) -> RunRecord:
    """Independent random streams for the workload and for failures, both from the scenario's seed."""
    workload_seed, failure_seed = np.random.SeedSequence(resolved.config.seed).spawn(2)
    specs = workload.build(resolved.config.workload, np.random.default_rng(workload_seed), resolved.base_dir)
    return Cluster(resolved, specs, step_scale, np.random.default_rng(failure_seed)).run()
