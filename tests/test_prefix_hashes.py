"""Prefix block hashes: equal prefixes hash equally, block by block, and only full blocks count."""
from __future__ import annotations

from simserve.engine.prefix import shared_block_hashes, trace_block_hashes


def test_trace_ids_map_onto_smaller_blocks():
    a = trace_block_hashes([7, 8, 9], 512, 1500, 16)
    b = trace_block_hashes([7, 8, 10], 512, 1500, 16)
    assert len(a) == 1500 // 16
    assert a[:64] == b[:64]            # the first 1024 tokens (ids 7, 8) agree
    assert a[64] != b[64]              # block 64 lies in the third id
    assert all(x != y for x, y in zip(a[64:], b[64:]))


def test_a_different_first_id_shares_nothing():
    a = trace_block_hashes([1, 2], 512, 1024, 16)
    b = trace_block_hashes([3, 2], 512, 1024, 16)
    assert not set(a) & set(b)


def test_blocks_straddling_ids_depend_on_the_later_id():
    a = trace_block_hashes([1, 2], 512, 1024, 48)   # block 10 covers tokens 480..527
    b = trace_block_hashes([1, 3], 512, 1024, 48)
    assert a[:10] == b[:10] and a[10] != b[10]


def test_shared_system_prompt():
    assert shared_block_hashes(100, 500, 16) == shared_block_hashes(100, 40, 16) + shared_block_hashes(100, 500, 16)[2:]
    assert len(shared_block_hashes(100, 500, 16)) == 6
    assert shared_block_hashes(0, 500, 16) == []
