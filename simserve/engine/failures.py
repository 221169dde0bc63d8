"""Failure injection: replicas that fail and come back, and spot capacity reclaimed with notice.

Each source of failure is a SimPy process. A failed replica loses its step in progress and its KV
cache; the cluster re-queues its requests on the replicas still up (they recompute their KV) or
rejects them, as ``on_failure`` says. The router never sends to a replica that is down or draining.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from ..config.base import Frozen


class FailureEvent(Frozen):
    replica: int = Field(ge=0, description="Index of the replica that fails")
    at_s: float = Field(ge=0, description="When it fails, seconds from the start")
    repair_s: float = Field(gt=0, description="How long until it serves again")


class SpotConfig(Frozen):
    replicas: int = Field(ge=1, description="How many replicas run on spot capacity (the last ones)")
    reclaim_rate_per_hour: float = Field(gt=0, description="Mean reclaims per spot replica per hour (Poisson)")
    notice_s: float = Field(30.0, ge=0, description="Warning before the capacity goes: no new requests, running ones continue")
    replace_s: float = Field(gt=0, description="Time until replacement capacity serves again")


class FailuresConfig(Frozen):
    events: list[FailureEvent] = Field(default_factory=list, description="Failures at fixed times")
    mtbf_s: float | None = Field(None, gt=0, description="Mean time between random failures of each replica (exponential)")
    repair_s: float = Field(600.0, gt=0, description="Repair time after a random failure")
    spot: SpotConfig | None = None
    on_failure: Literal["requeue", "reject"] = Field("requeue", description="What happens to a failed replica's requests")

    @property
    def enabled(self) -> bool:
        return bool(self.events) or self.mtbf_s is not None or self.spot is not None


def scheduled(env, cluster, event: FailureEvent):
    yield env.timeout(event.at_s)
    replica = cluster.replicas[event.replica]
    if replica.up:
        cluster.fail(replica, "failure")
        yield env.timeout(event.repair_s)
        cluster.repair(replica)


def random_failures(env, cluster, replica, mtbf_s: float, repair_s: float, rng: np.random.Generator):
    while True:
        yield env.timeout(float(rng.exponential(mtbf_s)))
        if replica.up:
            cluster.fail(replica, "failure")
            yield env.timeout(repair_s)
            cluster.repair(replica)


def spot_reclaims(env, cluster, replica, spot: SpotConfig, rng: np.random.Generator):
    mean_s = 3600.0 / spot.reclaim_rate_per_hour
    while True:
        yield env.timeout(float(rng.exponential(mean_s)))
        if not replica.up:
            continue
        replica.accepting = False                 # the notice: drain, take nothing new
        cluster.stats["spot_reclaims"] += 1
        yield env.timeout(spot.notice_s)
        cluster.fail(replica, "spot_reclaim")
        yield env.timeout(spot.replace_s)
        cluster.repair(replica)


def start(env, cluster, cfg: FailuresConfig, rng: np.random.Generator) -> None:
    for event in cfg.events:
        env.process(scheduled(env, cluster, event))
    if cfg.mtbf_s is not None:
        for replica in cluster.replicas:
            env.process(random_failures(env, cluster, replica, cfg.mtbf_s, cfg.repair_s, rng))
    if cfg.spot is not None:
        for replica in cluster.replicas[-cfg.spot.replicas:]:
            env.process(spot_reclaims(env, cluster, replica, cfg.spot, rng))
