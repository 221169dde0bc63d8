"""A hypothesis state machine drives the block manager through allocate / append / free / fork /
beam reassign / prefix attach / register / eviction and checks after every step that no block is double-freed or
double-owned, reference counts match the block tables, and capacity is never exceeded."""
from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from simserve.engine.kv import BlockManager

NUM_BLOCKS, BS = 12, 4
# content of a request: a "document" id; prefixes of equal documents hash equally
hash_chain = lambda doc, n: [hash((doc, i)) for i in range(n)]  # noqa: E731


class BlockMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.kv = BlockManager(NUM_BLOCKS, BS)
        self.tokens: dict[int, int] = {}      # model: tokens each live request holds
        self.doc: dict[int, int] = {}
        self.next_id = 0

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    @rule(tokens=st.integers(1, 20), doc=st.integers(0, 2), use_cache=st.booleans())
    def admit(self, tokens, doc, use_cache):
        rid = self._new_id()
        cached = self.kv.attach_prefix(rid, hash_chain(doc, tokens // BS)) if use_cache else 0
        assert cached % BS == 0 and cached <= tokens
        before = self.kv.num_free
        got = self.kv.allocate_slots(rid, tokens)
        if got is None:
            assert self.kv.num_free == before
            self.kv.free(rid)
            return
        self.tokens[rid], self.doc[rid] = tokens, doc
        self.kv.register_prefix(rid, hash_chain(doc, tokens // BS), tokens)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), extra=st.integers(1, 6))
    def append(self, data, extra):
        rid = data.draw(st.sampled_from(sorted(self.tokens)))
        want = self.tokens[rid] + extra
        before = self.kv.num_free
        got = self.kv.allocate_slots(rid, want)
        if got is None:
            assert self.kv.num_free == before
        else:
            self.tokens[rid] = want
            assert self.kv.num_held(rid) == -(-want // BS)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def free(self, data):
        rid = data.draw(st.sampled_from(sorted(self.tokens)))
        assert self.kv.free(rid) == -(-self.tokens.pop(rid) // BS)
        assert self.kv.free(rid) == 0            # a second free is a no-op, never a double free

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def fork(self, data):
        parent = data.draw(st.sampled_from(sorted(self.tokens)))
        child = self._new_id()
        self.kv.fork(parent, child)
        self.tokens[child], self.doc[child] = self.tokens[parent], self.doc[parent]
        assert self.kv.table(child) == self.kv.table(parent)

    @precondition(lambda self: len(self.tokens) > len(set(self.tokens.values())))
    @rule(data=st.data())
    def reassign(self, data):
        # beam search: sequences of equal length draw parents among themselves; every parent keeps its
        # own blocks for one child, the other children take the blocks of sequences nobody chose
        by_len: dict[int, list[int]] = {}
        for rid, tokens in sorted(self.tokens.items()):
            by_len.setdefault(tokens, []).append(rid)
        group = data.draw(st.sampled_from([g for g in by_len.values() if len(g) > 1]))
        parents = data.draw(st.lists(st.sampled_from(group), min_size=len(group), max_size=len(group)))
        extra = [p for i, p in enumerate(parents) if p in parents[:i]]
        moves = list(zip([r for r in group if r not in parents], extra))
        before, used = {r: self.kv.table(r) for r in group}, self.kv.num_used
        self.kv.reassign(moves, self.tokens[group[0]])
        for child, parent in moves:
            assert self.kv.table(child) == before[parent]
            self.doc[child] = self.doc[parent]
        assert self.kv.num_used <= used                # taking over blocks never allocates

    @invariant()
    def consistent(self):
        self.kv.check()
        assert 0 <= self.kv.num_free <= NUM_BLOCKS
        for rid, tokens in self.tokens.items():
            assert self.kv.num_held(rid) == -(-tokens // BS)
        # distinct blocks in use never exceed capacity
        used = {b for rid in self.tokens for b in self.kv.table(rid)}
        assert len(used) == self.kv.num_used <= NUM_BLOCKS


TestBlockMachine = BlockMachine.TestCase
TestBlockMachine.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


def test_prefix_blocks_are_shared_and_evicted_lru():
    kv = BlockManager(4, 2)
    h = hash_chain(7, 2)
    assert kv.attach_prefix(1, h) == 0
    kv.allocate_slots(1, 4)
    kv.register_prefix(1, h, 4)
    assert kv.attach_prefix(2, h) == 4              # both full blocks reused
    assert kv.table(2) == kv.table(1) and kv.num_used == 2
    kv.free(1)
    kv.free(2)
    assert kv.num_free == 4 and kv.num_used == 0    # cached blocks count as free ...
    assert kv.attach_prefix(3, h) == 4              # ... but still hit
    kv.free(3)
    kv.allocate_slots(4, 8)                         # needs every block: the cached ones are evicted
    assert kv.attach_prefix(5, h) == 0
    kv.check()


def test_fork_copies_a_shared_partial_block_on_write():
    kv = BlockManager(6, 4)
    kv.allocate_slots(1, 6)                          # blocks: one full, one half-full
    kv.fork(1, 2)
    assert kv.num_used == 2
    assert kv.allocate_slots(2, 7) == 1              # child writes into the shared half block: copy
    assert kv.table(2)[0] == kv.table(1)[0] and kv.table(2)[1] != kv.table(1)[1]
    assert kv.allocate_slots(1, 7) == 0              # the parent now owns its block alone
    kv.check()


def test_reassign_compares_every_position_not_a_common_prefix():
    # found by the state machine: prefix caching gives two histories of one document different first
    # blocks (the first was already hashed when the second was computed) and the same second block,
    # so the positions where the tables agree are not a prefix
    kv = BlockManager(12, 4)
    kv.allocate_slots(2, 4)
    kv.register_prefix(2, hash_chain(2, 1), 4)      # block 0 holds document 2's first block
    kv.free(2)                                      # ... and stays cached
    kv.allocate_slots(5, 8)
    kv.register_prefix(5, hash_chain(2, 2), 8)      # first hash taken already: only block 2 is hashed
    assert kv.attach_prefix(9, hash_chain(2, 2)) == 8
    assert kv.table(9)[0] != kv.table(5)[0] and kv.table(9)[1] == kv.table(5)[1]
    kv.reassign([(9, 5)], 8)
    assert kv.table(9) == kv.table(5)
    kv.check()
    assert kv.free(5) == 2 and kv.free(9) == 2
    kv.check()
    assert kv.num_used == 0


class CountedMachine(RuleBasedStateMachine):
    """Until block ids matter the manager only counts blocks (BlockManager._list hands out ids when they
    first do). A counted manager and one listed from the start take the same allocations, frees,
    reservations and claims and must answer every query alike; the counted one may be listed midway."""

    def __init__(self):
        super().__init__()
        self.counted, self.listed = BlockManager(NUM_BLOCKS, BS), BlockManager(NUM_BLOCKS, BS)
        self.listed._list()
        self.tokens: dict[int, int] = {}
        self.next_id = 0

    def both(self, method, *args):
        a, b = getattr(self.counted, method)(*args), getattr(self.listed, method)(*args)
        assert a == b, (method, args, a, b)
        return a

    @rule(tokens=st.integers(1, 20))
    def admit(self, tokens):
        self.next_id += 1
        if self.both("allocate_slots", self.next_id, tokens) is None:
            self.both("free", self.next_id)
        else:
            self.tokens[self.next_id] = tokens

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), extra=st.integers(1, 6))
    def append(self, data, extra):
        rid = data.draw(st.sampled_from(sorted(self.tokens)))
        if self.both("allocate_slots", rid, self.tokens[rid] + extra) is not None:
            self.tokens[rid] += extra

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def free(self, data):
        rid = data.draw(st.sampled_from(sorted(self.tokens)))
        del self.tokens[rid]
        self.both("free", rid)

    @precondition(lambda self: self.tokens and self.counted.num_unused > 0)
    @rule(data=st.data())
    def reserve_then_claim(self, data):
        """A steady decoder's next block is reserved in bulk and claimed into its table later."""
        rid = data.draw(st.sampled_from(sorted(self.tokens)))
        self.both("reserve", 1)
        assert self.counted.num_unused == self.listed.num_unused
        if data.draw(st.booleans()):
            self.tokens[rid] = self.counted.num_held(rid) * BS + 1
            self.both("claim", rid, 1, self.tokens[rid])
        else:
            self.both("unreserve", 1)

    @rule()
    def list_ids(self):
        self.counted._list()

    @invariant()
    def answers_agree(self):
        for kv in (self.counted, self.listed):
            kv.check()
        for query in ("num_free", "num_used", "num_unused"):
            assert getattr(self.counted, query) == getattr(self.listed, query), query
        for rid in self.tokens:
            assert self.counted.num_held(rid) == self.listed.num_held(rid) == -(-self.tokens[rid] // BS)


TestCountedMachine = CountedMachine.TestCase
TestCountedMachine.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)
