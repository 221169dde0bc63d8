"""Beam search (``sampling.beam_width``): ``W`` beams of one request decode together, and after every
iteration the search keeps the ``W`` best continuations, so some beams die and others are forked.

A request with ``W`` beams is prefilled once and forks into ``W`` sequences exactly as parallel sampling
does (:meth:`Scheduler._fork`: the prompt's blocks are shared, a partly filled last block is copied on
write). Which beams survive depends on token probabilities the simulator does not have, so the choice is
drawn from the replica's seeded generator: after each iteration every beam, with probability
``reshuffle``, takes a parent drawn uniformly from the group's ``W`` beams (itself included), otherwise it
keeps its own. A parent keeps its own sequence for one of its children (vLLM v0 does the same); each other
child takes the sequence of a beam that got no child, whose blocks are released, and shares the parent's
blocks (:meth:`BlockManager.reassign`: full blocks by reference count, no copy). When the shared last
block is partly filled, every sharer gets a block event at the next iteration and all but one copy it on
write; those copies are the KV traffic beam search has over parallel sampling. With the roofline cost
model each iteration is charged the time to read and write the blocks it copied (``Step.extra``).

Only beams that are running, steady and as long as the group's longest are reshuffled: a beam that was
preempted continues alone, as an independent sequence, once readmitted.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..cost import ops
from ..cost.step import StepCost
from ..hardware import HardwareProfile
from .request import Request

if TYPE_CHECKING:
    from .scheduler import Scheduler, Step


class BlockCopies:
    """Per scheduler: KV blocks copied on write (a sequence writing into a partly filled block it shares
    after a fork), each iteration charged the time to read and write the blocks copied while it was
    scheduled (``Step.extra``). Parallel sampling and beam search copy alike."""

    __slots__ = ("copy_cost", "num_copied", "copy_bytes", "copy_s")

    def __init__(self, copy_cost=None):
        self.copy_cost = copy_cost        # copy_cost(num_blocks) -> StepCost, or None: copies take no time
        self.num_copied = 0               # blocks copied on write, charged to iterations
        self.copy_bytes = 0.0             # bytes those copies read and wrote, per device (roofline only)
        self.copy_s = 0.0                 # time charged for them

    def charge(self, step: Step, copied: int) -> None:
        """Charge the blocks copied on write while scheduling ``step`` to it."""
        if not copied:
            return
        self.num_copied += copied
        if self.copy_cost is not None:
            step.extra = cost = self.copy_cost(copied)
            self.copy_bytes += cost.bytes
            self.copy_s += cost.time_s


class BeamSearch(BlockCopies):
    """Per replica: the beam groups a scheduler runs, reshuffled once per decode tick."""

    __slots__ = ("reshuffle", "rng", "groups", "_last_tick", "num_moves")

    def __init__(self, reshuffle: float, rng: np.random.Generator, copy_cost=None):
        super().__init__(copy_cost)
        self.reshuffle = reshuffle        # probability that a beam's parent is redrawn each iteration
        self.rng = rng
        self.groups: dict[int, Request] = {}   # id -> forked head request whose beams are running
        self._last_tick = 0
        self.num_moves = 0                # beams that took another beam's blocks

    def select(self, sched: Scheduler) -> None:
        """After a decode tick: reshuffle every beam group (called from ``Scheduler.update``)."""
        tick = sched.tick
        if tick == self._last_tick:
            return
        self._last_tick = tick
        for rid, head in list(self.groups.items()):
            if head.seqs_left == 0 or not head.children:     # finished, or lost in a failure
                del self.groups[rid]
            else:
                self._select_group(sched, head, tick)

    def track(self, req: Request) -> None:
        """``req`` forked into beams: reshuffle them from now on."""
        if req.n > 1 and req.children:
            self.groups[req.id] = req

    def _select_group(self, sched: Scheduler, head: Request, tick: int) -> None:
        running = sched.running
        beams = [b for b in [head, *head.children]
                 if b.steady and b.k0 < tick and running.get(b.id) is b]
        if len(beams) < 2:
            return
        lengths = [b.c0 + tick - b.k0 for b in beams]
        longest = max(lengths)
        beams = [b for b, n in zip(beams, lengths) if n == longest]
        m = len(beams)
        if m < 2 or self.reshuffle == 0.0:
            return
        u = self.rng.random(2 * m).tolist()   # per beam: redraw or not, then which parent
        r = self.reshuffle
        parents = [int(u[m + i] * m) if u[i] < r else i for i in range(m)]
        # each parent keeps its own sequence for one child; the other children take the dead beams' slots
        kept = set(parents)
        dead = [i for i in range(m) if i not in kept]
        extra = []
        seen = set()
        for p in parents:
            if p in seen:
                extra.append(p)
            seen.add(p)
        if not extra:
            return
        moves = [(beams[d].id, beams[p].id) for d, p in zip(dead, extra)]
        sched.kv.reassign(moves, longest)
        self.num_moves += len(moves)
        if longest % sched.kv.block_size:
            # the shared last block is partly filled: every sharer writes into it at the next tick
            touched = {beams[d].id: beams[d] for d in dead}
            touched.update((beams[p].id, beams[p]) for p in extra)
            for beam in sorted(touched.values(), key=lambda b: b.seq):
                sched._thaw(beam)
                sched._freeze(beam, True)


def block_copy_cost(block_bytes: float, hw: HardwareProfile, dtype: str, scale: float = 1.0):
    """``copy_cost(num_blocks) -> StepCost``: copying KV blocks within one device's memory, one kernel
    that reads and writes each block once, costed like the roofline's element-wise kernels (memory-bound,
    the profile's ``efficiency.elementwise``; ``dtype`` is theirs). ``block_bytes`` is one block on one
    device; ``scale`` multiplies the time (error bands)."""
    eff = hw.efficiency.elementwise
    peak, bw = hw.peak_flops_s(dtype), hw.weight_bandwidth_bytes_s

    def cost(num_blocks: int) -> StepCost:
        t = ops.roofline_s(0.0, 2.0 * num_blocks * block_bytes, peak, bw, eff)
        return StepCost(scale * t.time_s, t.bound, 0.0, t.bytes)
    return cost
