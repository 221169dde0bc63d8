"""Shared fixtures: tiny scenarios with a constant-cost model, run straight through the engine."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import settings


from simserve.config.base import set_path
from simserve.cost.memory import MemoryPlan
from simserve.engine.sim import Cluster
from simserve.scenario import load_scenario
from simserve.workload.specs import RequestSpecs

# The suite is reproducible: every hypothesis test draws the same examples on every run, so CI cannot
# fail by chance. `pytest --hypothesis-profile=explore` draws fresh examples (a failure it finds
# becomes a regression test).
settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False, max_examples=1000)
settings.load_profile("default")

TINY = {
    "name": "tiny",
    "model": "llama-3.1-8b",
    "hardware": "h100-sxm-80gb",
    "scheduler": {"policy": "continuous", "max_num_seqs": 4, "max_num_batched_tokens": 8},
    "workload": {"kind": "synthetic", "num_requests": 1, "arrival": {"process": "offline"},
                 "prompt_tokens": {"dist": "fixed", "value": 1}, "output_tokens": {"dist": "fixed", "value": 1}},
    "cost_model": {"kind": "constant", "step_s": 0.01},
}


def tiny_resolved(num_blocks: int | None = None, block_size: int = 16, **sets):
    """The TINY scenario with dotted-path overrides; optionally a KV cache of exactly ``num_blocks``."""
    data = TINY
    for path, value in sets.items():
        data = set_path(data, path.replace("__", "."), value)
    r = load_scenario(data)
    if num_blocks is not None:
        m = r.memory
        plan = MemoryPlan(m.capacity_bytes, m.usable_bytes, m.weight_bytes, m.activation_bytes,
                          m.kv_bytes, m.kv_bytes_per_token, num_blocks * block_size, num_blocks, block_size)
        r = dataclasses.replace(r, memory=plan)
    return r


def specs(rows, users=None, think_s=0.0):
    """``rows``: [(arrival_s, prompt_tokens, output_tokens), ...]."""
    arr = np.array([r[0] for r in rows], dtype=float)
    return RequestSpecs(arr, np.array([r[1] for r in rows], dtype=np.int64),
                        np.array([r[2] for r in rows], dtype=np.int64),
                        closed_loop_users=users, think_time_s=think_s)


def run_tiny(rows, users=None, think_s=0.0, num_blocks=None, block_size=16, **sets):
    r = tiny_resolved(num_blocks=num_blocks, block_size=block_size, **sets)
    return Cluster(r, specs(rows, users, think_s)).run()


def timeline(rec):
    """Per request id: (outcome, first token ms, finish ms), rounded to the microsecond."""
    out = {}
    for q in sorted(rec.requests, key=lambda q: q.id):
        ms = lambda t: round(t * 1e3, 3) if t >= 0 else None  # noqa: E731
        out[q.id] = (q.outcome, ms(q.first_token_s), ms(q.finish_s))
    return out


@pytest.fixture
def tiny():
    return run_tiny
