"""Paged KV block manager."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from simserve.engine.kv import BlockManager


def test_allocate_grows_by_whole_blocks():
    kv = BlockManager(num_blocks=4, block_size=16)
    assert kv.allocate_slots(1, 1) == 1
    assert kv.allocate_slots(1, 16) == 0        # still one block
    assert kv.allocate_slots(1, 17) == 1
    assert (kv.num_free, kv.num_used, kv.num_held(1)) == (2, 2, 2)


def test_allocation_that_does_not_fit_changes_nothing():
    kv = BlockManager(num_blocks=3, block_size=2)
    assert kv.allocate_slots(1, 4) == 2
    assert kv.allocate_slots(2, 4) is None
    assert (kv.num_free, kv.num_held(2)) == (1, 0)
    assert kv.allocate_slots(2, 2) == 1
    assert kv.num_free == 0


def test_free_returns_every_block_once():
    kv = BlockManager(num_blocks=8, block_size=4)
    kv.allocate_slots(7, 30)
    assert kv.free(7) == 8
    assert kv.free(7) == 0
    assert kv.num_free == 8


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 40), st.booleans()), max_size=60))
def test_blocks_are_conserved(ops):
    kv = BlockManager(num_blocks=10, block_size=4)
    want: dict[int, int] = {}
    for rid, tokens, free in ops:
        if free:
            kv.free(rid)
            want.pop(rid, None)
            continue
        before = kv.num_free
        got = kv.allocate_slots(rid, tokens)
        if got is None:
            assert kv.num_free == before
        else:
            want[rid] = max(want.get(rid, 0), -(-tokens // 4))
        assert kv.num_free >= 0
        assert kv.num_free + sum(kv.num_held(r) for r in range(6)) == 10
        assert all(kv.num_held(r) == want.get(r, 0) for r in range(6))
