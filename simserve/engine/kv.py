"""Paged KV cache: fixed-size blocks with reference counts, optional prefix caching and forking.

Every block is in exactly one state: *free* (no owner, no content hash), *cached* (no owner but it
holds a known prefix, reusable until evicted, least recently used first) or *used* (owned by one or
more requests). ``allocate_slots`` grows a request's block table, ``free`` releases it, ``fork`` lets
a child sequence share its parent's blocks (copy-on-write of a partly filled last block), and
``attach_prefix``/``register_prefix`` reuse and publish full blocks by content hash. ``reassign`` gives
sequences copies of other sequences' block tables (beam search, :mod:`simserve.engine.beam`).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass(slots=True)
class OffloadTier:
    """A second prefix-cache tier in host memory or SSD (Mooncake-style): blocks evicted from the device
    keep their content here, least recently used first, and a later prefix hit copies them back."""

    num_blocks: int               # capacity in KV blocks of one device
    block_bytes: float            # one KV block on one device
    bandwidth_bytes_s: float      # tier -> device copy bandwidth
    latency_s: float              # per copy
    hashes: OrderedDict = field(default_factory=OrderedDict)
    stored_blocks: int = 0        # blocks written to the tier (evictions it kept)
    loaded_blocks: int = 0        # blocks copied back to the device on prefix hits

    def copy_s(self, num_blocks: int) -> float:
        return self.latency_s + num_blocks * self.block_bytes / self.bandwidth_bytes_s if num_blocks else 0.0

    def keep(self, block_hash: int) -> None:
        self.hashes[block_hash] = None
        self.hashes.move_to_end(block_hash)
        self.stored_blocks += 1
        if len(self.hashes) > self.num_blocks:
            self.hashes.popitem(last=False)


class BlockManager:
    __slots__ = ("num_blocks", "block_size", "_free", "_cached", "_ref", "_hash", "_by_hash", "_tables",
                 "_tokens", "hits_tokens", "_sharing", "offload", "last_loaded", "num_copied", "reserved",
                 "_listed", "_held", "_num_unlisted")

    def __init__(self, num_blocks: int, block_size: int, offload: OffloadTier | None = None):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: list[int] = []                                     # pop() gives the lowest id first (_list)
        self._cached: OrderedDict[int, None] = OrderedDict()           # refcount-0 blocks with a hash, LRU first
        self._ref = [0] * num_blocks
        self._hash: list[int | None] = [None] * num_blocks
        self._by_hash: dict[int, int] = {}
        self._tables: dict[int, list[int]] = {}
        self._tokens: dict[int, int] = {}                              # KV slots each request holds
        self.hits_tokens = 0
        self._sharing = False        # set once forks or prefix hashes exist; until then a fast path applies
        self.offload = offload       # second prefix-cache tier, or None
        self.last_loaded = 0         # blocks the last attach_prefix copied back from the offload tier
        self.num_copied = 0          # copy-on-write copies of a shared, partly filled last block
        self.reserved = 0            # blocks handed out but in no block table yet (see reserve)
        # Until a block's identity matters (sharing, or a caller asks for a table), blocks are only
        # counted: every block has one owner and any free block serves as well as another, so a request's
        # table is its number of blocks (_held) and the free list its length (_num_unlisted). _list()
        # hands out block ids when they first matter; from then on the lists above are kept.
        self._listed = False
        self._held: dict[int, int] | None = {}
        self._num_unlisted = num_blocks

    def _list(self) -> None:
        """From counts to block ids: each holder gets consecutive ids in the order it first allocated,
        the rest are free (lowest first to be taken). While unshared, which ids a request holds changes
        nothing: only how many."""
        if self._listed:
            return
        tables, first = {}, 0
        for request_id, held in self._held.items():
            tables[request_id] = list(range(first, first + held))
            first += held
        self._tables = tables
        self._free = list(range(self.num_blocks - 1, first - 1, -1))
        self._held = None
        self._listed = True

    def _share(self) -> None:
        """Blocks may be shared or cached from now on. Until this first happens reference counts are not
        kept (every used block has exactly one owner, so they carry no information); they are rebuilt
        from the block tables here."""
        if self.reserved:
            raise RuntimeError("blocks cannot be shared while reserved blocks are outstanding")
        self._list()
        if not self._sharing:
            ref = [0] * self.num_blocks
            for table in self._tables.values():
                for block in table:
                    ref[block] = 1
            self._ref = ref
            self._sharing = True

    # --- queries ---------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        """Blocks that can be handed out now (free or evictable cached)."""
        if not self._listed:
            return self._num_unlisted - self.reserved
        return len(self._free) + len(self._cached) - self.reserved

    @property
    def num_used(self) -> int:
        if not self._listed:
            return self.num_blocks - (self._num_unlisted - self.reserved)
        return self.num_blocks - (len(self._free) + len(self._cached) - self.reserved)   # num_free

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def num_held(self, request_id: int) -> int:
        if not self._listed:
            return self._held.get(request_id, 0)
        return len(self._tables.get(request_id, ()))

    def table(self, request_id: int) -> tuple[int, ...]:
        self._list()
        return tuple(self._tables.get(request_id, ()))

    # --- allocation ------------------------------------------------------------------------------
    def _take(self) -> int:
        if self._free:
            return self._free.pop()
        block, _ = self._cached.popitem(last=False)           # evict the least recently used prefix
        if self.offload is not None:
            self.offload.keep(self._hash[block])
        del self._by_hash[self._hash[block]]
        self._hash[block] = None
        return block

    def _release(self, block: int) -> None:
        self._ref[block] -= 1
        if self._ref[block] == 0:
            if self._hash[block] is not None:
                self._cached[block] = None
            else:
                self._free.append(block)

    def allocate_slots(self, request_id: int, num_tokens: int) -> int | None:
        """Make room for ``num_tokens`` KV slots in total for the request. Returns the number of blocks
        newly taken, or None (changing nothing) when too few are free. Writing into a partly filled
        last block that another sequence shares copies it first (copy-on-write)."""
        if not self._listed:                    # counted: one owner per block, nothing cached
            held = self._held.get(request_id)
            if held is None:
                held = self._held[request_id] = 0
                self._tokens[request_id] = 0
            need = -(-num_tokens // self.block_size) - held
            if need > 0:
                if need > self._num_unlisted - self.reserved:
                    return None
                self._num_unlisted -= need
                self._held[request_id] = held + need
            else:
                need = 0
            if num_tokens > self._tokens[request_id]:
                self._tokens[request_id] = num_tokens
            return need
        table = self._tables.get(request_id)
        if table is None:
            table = self._tables[request_id] = []
            self._tokens[request_id] = 0
        held_tokens = self._tokens[request_id]
        need = -(-num_tokens // self.block_size) - len(table)
        if not self._sharing:           # one owner per block: no copy-on-write, nothing cached
            if need > 0:
                free = self._free
                if need > len(free) - self.reserved:
                    return None
                new = free[-need:]
                del free[-need:]
                new.reverse()                             # the order pop() would have given
                table.extend(new)
            else:
                need = 0
            if num_tokens > held_tokens:
                self._tokens[request_id] = num_tokens
            return need
        cow = (num_tokens > held_tokens and held_tokens % self.block_size != 0
               and self._ref[table[-1]] > 1)
        if need + cow > self.num_free:
            return None
        if cow:
            old = table[-1]
            table[-1] = self._take()
            self._ref[table[-1]] = 1
            self._release(old)
            self.num_copied += 1
        for _ in range(max(need, 0)):
            block = self._take()
            self._ref[block] = 1
            table.append(block)
        if num_tokens > held_tokens:
            self._tokens[request_id] = num_tokens
        return max(need, 0) + cow

    @property
    def num_unused(self) -> int:
        """Blocks in the free list and not reserved (not counting evictable cached ones)."""
        if not self._listed:
            return self._num_unlisted - self.reserved
        return len(self._free) - self.reserved

    def reserve(self, num_blocks: int) -> None:
        """Hand out ``num_blocks`` free blocks without saying to whom yet (the scheduler knows how many
        each of its steady decoders took; :meth:`claim` puts them in a table later). The caller checked
        ``num_unused``. Only while nothing can be shared."""
        self.reserved += num_blocks

    def unreserve(self, num_blocks: int) -> None:
        """Reserved blocks go back free (their decoder finished before they reached its table)."""
        self.reserved -= num_blocks

    def claim(self, request_id: int, num_blocks: int, num_tokens: int) -> None:
        """``num_blocks`` reserved blocks go to the request's table, which then holds ``num_tokens``
        slots."""
        if num_blocks and not self._listed:
            self.reserved -= num_blocks
            self._num_unlisted -= num_blocks
            self._held[request_id] += num_blocks
        elif num_blocks:
            self.reserved -= num_blocks
            free = self._free
            new = free[-num_blocks:]
            del free[-num_blocks:]
            new.reverse()                                 # the order pop() would have given
            self._tables[request_id].extend(new)
        self._tokens[request_id] = num_tokens

    def free(self, request_id: int) -> int:
        """Release every block of the request (shared ones stay with their other owners). Returns how
        many blocks the request held."""
        if not self._listed:
            held = self._held.pop(request_id, None)
            self._tokens.pop(request_id, None)
            if held:
                self._num_unlisted += held
            return held or 0
        table = self._tables.pop(request_id, None)
        self._tokens.pop(request_id, None)
        if not table:
            return 0
        if not self._sharing:               # nothing is shared or cached: every block goes back free
            table.reverse()
            self._free.extend(table)
            return len(table)
        for block in reversed(table):       # the tail is the least reusable: evict it first
            self._release(block)
        return len(table)

    def fork(self, parent_id: int, child_id: int) -> None:
        """The child shares every block of the parent (parallel sampling, beam search)."""
        self._list()
        if child_id in self._tables:
            raise ValueError(f"request {child_id} already holds blocks")
        self._share()
        table = list(self._tables.get(parent_id, ()))
        for block in table:
            self._ref[block] += 1
        self._tables[child_id] = table
        self._tokens[child_id] = self._tokens.get(parent_id, 0)

    def reassign(self, moves: list[tuple[int, int]], num_tokens: int) -> None:
        """Beam search: each ``(child, parent)`` in ``moves`` drops its blocks and shares the blocks the
        parent held before the call (no copy: a shared, partly filled last block is copied on the next
        write). Every sequence involved holds ``num_tokens`` KV slots. Sharing first and releasing after
        keeps a block that one sequence gives up and another adopts from being freed in between. A
        position where both tables hold the same block keeps its count; equal positions need not form
        a prefix (prefix caching can give two histories of the same content different early blocks and
        the same later one), so every position is compared."""
        self._share()
        ref, tables, gone = self._ref, self._tables, []
        for child, parent in moves:           # parents are never children: their tables stay as they are
            new, old = tables[parent], tables[child]
            if new != old:
                tail = [b for a, b in zip(new, old) if a != b] + old[len(new):]
                for block in [a for a, b in zip(new, old) if a != b] + new[len(old):]:
                    ref[block] += 1
                gone.append(tail)
                tables[child] = list(new)
            self._tokens[child] = self._tokens[parent] = num_tokens
        for tail in gone:
            for block in reversed(tail):
                self._release(block)

    # --- prefix caching --------------------------------------------------------------------------
    def attach_prefix(self, request_id: int, block_hashes) -> int:
        """For a request that holds no blocks yet: share every leading full block whose content hash is
        cached or in use; with an offload tier, blocks found only there are copied back into fresh
        device blocks (``last_loaded`` says how many). Returns the number of prompt tokens whose KV is
        thereby already computed."""
        self._list()
        if self._tables.get(request_id):
            raise ValueError(f"request {request_id} already holds blocks")
        self._share()
        table: list[int] = []
        self._tables[request_id] = table
        loaded = 0
        tier = self.offload
        for h in block_hashes:
            block = self._by_hash.get(h)
            if block is not None:
                if self._ref[block] == 0:
                    del self._cached[block]
                self._ref[block] += 1
            elif tier is not None and h in tier.hashes and self.num_free > 0:
                block = self._take()
                self._ref[block] = 1
                self._hash[block] = h
                self._by_hash[h] = block
                tier.hashes.move_to_end(h)
                loaded += 1
            else:
                break
            table.append(block)
        if tier is not None:
            tier.loaded_blocks += loaded
        self.last_loaded = loaded
        tokens = len(table) * self.block_size
        self._tokens[request_id] = tokens
        self.hits_tokens += tokens
        return tokens

    def register_prefix(self, request_id: int, block_hashes, num_computed: int) -> None:
        """Publish the hashes of the request's full, computed blocks so later requests can share them."""
        self._share()
        table = self._tables.get(request_id, ())
        full = min(num_computed // self.block_size, len(table), len(block_hashes))
        for i in range(full):
            block, h = table[i], block_hashes[i]
            if self._hash[block] is None and h not in self._by_hash:
                self._hash[block] = h
                self._by_hash[h] = block

    def check(self) -> None:
        """Assert the state invariants (tests)."""
        if not self._listed:                 # counted: the counts add up; nothing shared or cached
            assert not self._sharing and not self._cached and not self._tables and not self._free
            assert all(held >= 0 for held in self._held.values())
            assert sum(self._held.values()) + self._num_unlisted == self.num_blocks
            assert 0 <= self.reserved <= self._num_unlisted
            assert self._held.keys() == self._tokens.keys()
            assert all(held == self.blocks_for(self._tokens[r]) for r, held in self._held.items())
            return
        owners = [0] * self.num_blocks
        for table in self._tables.values():
            for block in table:
                owners[block] += 1
        if self._sharing:
            assert owners == self._ref, "reference counts disagree with block tables"
            ref = self._ref
        else:                                # counts are not kept until sharing begins
            assert max(owners, default=0) <= 1 and not self._cached, "shared or cached blocks before sharing began"
            ref = owners
        free, cached = set(self._free), set(self._cached)
        assert len(free) == len(self._free) and not free & cached
        assert 0 <= self.reserved <= len(free) and not (self.reserved and self._sharing)
        for b in range(self.num_blocks):
            state = (b in free) + (b in cached) + (ref[b] > 0)
            assert state == 1, f"block {b} is in {state} states"
            assert (b in cached) <= (self._hash[b] is not None)
            assert (b in free) <= (self._hash[b] is None)
        assert all(self._by_hash[h] == b and self._hash[b] == h for h, b in self._by_hash.items())
        assert all(len(t) == self.blocks_for(self._tokens[r]) for r, t in self._tables.items())
