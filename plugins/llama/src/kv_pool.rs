//! The bookkeeping of the paged KV cache batched sequences share (no device work here): which
//! blocks of [`KV_BLOCK_ROWS`] positions each sequence holds, which are shared, cached or free.
//!
//! **Blocks.** A sequence holds a [`BlockTable`], its blocks in position order; a block is
//! taken when the sequence's next position starts one, and returned at close. Every block
//! remembers the tokens whose keys and values it holds and the hash of the tokens before it (its
//! sequence's prefix), so the keys and values of a token prefix can be found again.
//!
//! **Sharing.** A full block is immutable and indexed by the hash of its prefix and tokens; a
//! new sequence whose prompt starts with the same tokens takes those blocks by reference
//! (reference counts), whether the sequences holding them are open or closed. A prompt that
//! then continues into part of a block (a closed sequence's last, partial block, a block an
//! open sequence is filling, or a full block of which the prompt shares only the start) copies
//! that part into a block of its own: copy-on-write, since the source is either shared or still
//! being written. The prompt's last token is always recomputed (its logits start the sequence).
//! Hashes are 64-bit (as vLLM's): a collision would be a wrong prefix, at a probability far
//! below the hardware's own error rates; the tokens of each matched block are compared anyway.
//!
//! **Caching and eviction.** A block no sequence holds keeps its contents and stays findable
//! until the pool needs it: blocks are taken from the never-used ones first, then from the
//! cached ones, least recently released first (vLLM's automatic prefix caching).
//!
//! **Reservation.** A sequence is opened only if the pool can give it every block it may need:
//! its prompt and `max_new_tokens` (as the kit bounds it). The blocks are reserved, not taken:
//! they are taken as it grows and the unused rest returns at close. So a running sequence never
//! waits for a block, nothing is preempted and no sequence can corrupt another; the cost is
//! that a sequence stopping early (a stop string, end of generation) held room it did not use.
//! A sequence the pool cannot hold now is refused with [`PoolFull`] naming the pool's size.

use std::collections::{BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

pub use pio_gpu::KV_BLOCK_ROWS;

/// A block's index in the pool.
pub type BlockId = u32;

/// Positions per block.
const BLOCK: usize = KV_BLOCK_ROWS as usize;

/// The prefix hash of the first block: no tokens before it.
const EMPTY_PREFIX: u64 = 0;

/// One block of the pool.
#[derive(Debug, Clone, Default)]
struct Block {
    /// Open sequences holding it.
    refs: u32,
    /// Tokens whose keys and values its rows hold, in position order (at most [`BLOCK`]).
    tokens: Vec<u32>,
    /// Hash of every token before it in its sequence (set with its first token).
    prefix: u64,
    /// Release time (for least-recently-released eviction) while it is cached.
    released: u64,
}

/// Positions of a sequence in the pool: its blocks in order and how many positions they hold.
#[derive(Debug)]
pub struct BlockTable {
    blocks: Vec<BlockId>,
    /// Positions whose keys and values are written.
    len: usize,
    /// Hash of the tokens of its full blocks (the prefix of its next block).
    prefix: u64,
    /// Blocks reserved for it and not taken yet.
    reserved: usize,
}

impl BlockTable {
    /// Its blocks, in position order.
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no position.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A copy-on-write: the first `rows` rows of block `from` go to block `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCopy {
    /// Source block.
    pub from: BlockId,
    /// Destination block (the opening sequence's own).
    pub to: BlockId,
    /// Rows copied.
    pub rows: u32,
}

/// The pool cannot hold a sequence now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the KV cache pool of {pool} blocks of {BLOCK} positions cannot hold a sequence of up to \
     {positions} positions now: it needs {needed} more blocks, {available} are free or cached"
)]
pub struct PoolFull {
    /// Blocks in the pool.
    pub pool: usize,
    /// Positions the sequence may need.
    pub positions: usize,
    /// Blocks it needs beyond those it shares.
    pub needed: usize,
    /// Blocks neither held nor reserved.
    pub available: usize,
}

/// The blocks of the pool and who holds them.
#[derive(Debug)]
pub struct BlockPool {
    blocks: Vec<Block>,
    /// Blocks holding nothing.
    empty: Vec<BlockId>,
    /// Blocks no sequence holds that keep their contents, by release time.
    cached: BTreeSet<(u64, BlockId)>,
    /// Full blocks by the hash of their prefix and tokens.
    full: HashMap<u64, BlockId>,
    /// Blocks reserved by open sequences and not taken yet.
    reserved: usize,
    /// Release counter.
    clock: u64,
}

/// The hash of `tokens` after a prefix of hash `prefix`.
fn chain(prefix: u64, tokens: &[u32]) -> u64 {
    let mut hasher = DefaultHasher::new();
    prefix.hash(&mut hasher);
    tokens.hash(&mut hasher);
    hasher.finish()
}

/// Blocks holding `positions` positions.
pub fn blocks_for(positions: usize) -> usize {
    positions.div_ceil(BLOCK)
}

impl BlockPool {
    /// A pool of `n_blocks` empty blocks.
    pub fn new(n_blocks: usize) -> Self {
        BlockPool {
            blocks: vec![Block::default(); n_blocks],
            empty: (0..n_blocks as BlockId).rev().collect(),
            cached: BTreeSet::new(),
            full: HashMap::new(),
            reserved: 0,
            clock: 0,
        }
    }

    /// Blocks in the pool.
    pub fn n_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks a new sequence can have: empty or cached, and not reserved.
    pub fn available(&self) -> usize {
        (self.empty.len() + self.cached.len()).saturating_sub(self.reserved)
    }

    /// Blocks no sequence holds that keep a prefix's keys and values for later prompts.
    pub fn cached(&self) -> usize {
        self.cached.len()
    }

    /// Blocks open sequences hold or have reserved.
    pub fn in_use(&self) -> usize {
        self.n_blocks() - self.available()
    }

    /// Forgets the contents of every cached block (the prefix cache of closed sequences):
    /// they become empty. Returns how many there were. Open sequences keep their blocks.
    pub fn drop_cached(&mut self) -> usize {
        let cached = std::mem::take(&mut self.cached);
        for &(_, block) in &cached {
            let b = &mut self.blocks[block as usize];
            if b.tokens.len() == BLOCK {
                let hash = chain(b.prefix, &b.tokens);
                if self.full.get(&hash) == Some(&block) {
                    self.full.remove(&hash);
                }
            }
            b.tokens.clear();
            self.empty.push(block);
        }
        cached.len()
    }

    /// The longest prefix of `prompt` (but its last token) whose keys and values the pool
    /// holds: the full blocks to share, and the block to copy the next few positions from.
    fn longest_prefix(&self, prompt: &[u32]) -> (Vec<BlockId>, Option<(BlockId, usize)>) {
        let mut shared = Vec::new();
        let mut prefix = EMPTY_PREFIX;
        for chunk in prompt.chunks_exact(BLOCK) {
            let hash = chain(prefix, chunk);
            match self.full.get(&hash) {
                Some(&b) if self.blocks[b as usize].tokens == chunk => {
                    shared.push(b);
                    prefix = hash;
                }
                _ => break,
            }
        }
        let rest = &prompt[shared.len() * BLOCK..];
        let partial = self
            .blocks
            .iter()
            .enumerate()
            .filter(|(_, b)| !b.tokens.is_empty() && b.prefix == prefix)
            .map(|(id, b)| {
                let common = b.tokens.iter().zip(rest).take_while(|(a, b)| a == b);
                (id as BlockId, common.count())
            })
            .filter(|&(_, common)| common > 0)
            .max_by_key(|&(_, common)| common);
        // The prompt's last token is recomputed: reuse at most the tokens before it.
        let limit = prompt.len() - 1;
        let matched = shared.len() * BLOCK + partial.map_or(0, |(_, n)| n);
        let reused = matched.min(limit);
        let keep = reused / BLOCK;
        let source = match shared.get(keep) {
            Some(&block) => Some(block),
            None => partial.map(|(block, _)| block),
        };
        shared.truncate(keep);
        (shared, source.map(|block| (block, reused % BLOCK)))
    }

    /// Opens a sequence for `prompt` that may hold `positions` positions (at least the
    /// prompt's): shares the blocks of the longest cached prefix, copies a partly matching
    /// block with `copy` (the device copy, done before this returns) and reserves every other
    /// block it may need. The table holds the reused positions; the prompt's others are to be
    /// written ([`BlockPool::rows`], [`BlockPool::record`]). Changes nothing on failure.
    pub fn open<E: From<PoolFull>>(
        &mut self,
        prompt: &[u32],
        positions: usize,
        copy: impl FnOnce(BlockCopy) -> Result<(), E>,
    ) -> Result<BlockTable, E> {
        let (shared, partial) = self.longest_prefix(prompt);
        let needed = blocks_for(positions.max(prompt.len())) - shared.len();
        // Shared blocks and a copy's source that are cached leave the cache while held.
        let cached = |b: &BlockId| self.blocks[*b as usize].refs == 0;
        let uncached = shared.iter().filter(|b| cached(b)).count();
        let available = self.available();
        // The copy's source, held while copied, may be the very block the copy needs: then the
        // part of a block is recomputed instead.
        let partial = partial.filter(|(block, rows)| {
            *rows > 0 && needed + uncached + usize::from(cached(block)) <= available
        });
        if needed + uncached > available {
            return Err(PoolFull {
                pool: self.n_blocks(),
                positions: positions.max(prompt.len()),
                needed,
                available,
            }
            .into());
        }
        for &block in &shared {
            self.hold(block);
        }
        let prefix = shared.last().map_or(EMPTY_PREFIX, |&b| {
            chain(
                self.blocks[b as usize].prefix,
                &self.blocks[b as usize].tokens,
            )
        });
        let mut table = BlockTable {
            len: shared.len() * BLOCK,
            blocks: shared,
            prefix,
            reserved: needed,
        };
        self.reserved += needed;
        if let Some((source, rows)) = partial {
            // Held while copied, so taking the destination cannot evict it.
            self.hold(source);
            let to = self.take(&mut table);
            let copied = copy(BlockCopy {
                from: source,
                to,
                rows: rows as u32,
            });
            let tokens = self.blocks[source as usize].tokens[..rows].to_vec();
            self.release_block(source);
            if let Err(error) = copied {
                self.close(table);
                return Err(error);
            }
            let b = &mut self.blocks[to as usize];
            b.tokens = tokens;
            b.prefix = table.prefix;
            table.len += rows;
        }
        Ok(table)
    }

    /// Holds `block` for a sequence, out of the cache if it was cached.
    fn hold(&mut self, block: BlockId) {
        let b = &mut self.blocks[block as usize];
        if b.refs == 0 {
            self.cached.remove(&(b.released, block));
        }
        b.refs += 1;
    }

    /// A block for `table`'s next positions, from its reservation (or, past it, from what is
    /// available): an empty block, else the least recently released cached one, whose contents
    /// are forgotten. The caller has checked that one is available.
    fn take(&mut self, table: &mut BlockTable) -> BlockId {
        if table.reserved > 0 {
            table.reserved -= 1;
            self.reserved -= 1;
        }
        let block = match self.empty.pop() {
            Some(block) => block,
            None => {
                let (released, block) = self.cached.pop_first().expect("a block is available");
                let b = &mut self.blocks[block as usize];
                debug_assert_eq!(b.released, released);
                if b.tokens.len() == BLOCK {
                    let hash = chain(b.prefix, &b.tokens);
                    if self.full.get(&hash) == Some(&block) {
                        self.full.remove(&hash);
                    }
                }
                b.tokens.clear();
                block
            }
        };
        self.blocks[block as usize].refs = 1;
        table.blocks.push(block);
        block
    }

    /// The rows of `table`'s next `n` positions, taking the blocks they start. Fails with
    /// [`PoolFull`] only past the sequence's reservation, when nothing is available.
    pub fn rows(&mut self, table: &mut BlockTable, n: usize) -> Result<Vec<u32>, PoolFull> {
        let end = table.len + n;
        let missing = blocks_for(end).saturating_sub(table.blocks.len());
        let available = table.reserved + self.available();
        if missing > available {
            return Err(PoolFull {
                pool: self.n_blocks(),
                positions: end,
                needed: missing,
                available,
            });
        }
        for _ in 0..missing {
            self.take(table);
        }
        Ok((table.len..end)
            .map(|p| table.blocks[p / BLOCK] * KV_BLOCK_ROWS + (p % BLOCK) as u32)
            .collect())
    }

    /// Records that `tokens` were written at `table`'s next positions (whose rows
    /// [`BlockPool::rows`] gave): a block they fill becomes shareable.
    pub fn record(&mut self, table: &mut BlockTable, tokens: &[u32]) {
        for &token in tokens {
            let block = table.blocks[table.len / BLOCK];
            let b = &mut self.blocks[block as usize];
            debug_assert_eq!(b.tokens.len(), table.len % BLOCK);
            if b.tokens.is_empty() {
                b.prefix = table.prefix;
            }
            b.tokens.push(token);
            table.len += 1;
            if b.tokens.len() == BLOCK {
                table.prefix = chain(b.prefix, &b.tokens);
                // The first block of a prefix is the one found; an identical one stays private.
                self.full.entry(table.prefix).or_insert(block);
            }
        }
    }

    /// Returns `table`'s blocks and its unused reservation; blocks nobody else holds stay cached
    /// (those holding keys and values) or become empty.
    pub fn close(&mut self, table: BlockTable) {
        self.reserved -= table.reserved;
        for block in table.blocks {
            self.release_block(block);
        }
    }

    fn release_block(&mut self, block: BlockId) {
        let b = &mut self.blocks[block as usize];
        b.refs -= 1;
        if b.refs > 0 {
            return;
        }
        if b.tokens.is_empty() {
            self.empty.push(block);
        } else {
            self.clock += 1;
            b.released = self.clock;
            self.cached.insert((self.clock, block));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` tokens starting at `first`.
    fn tokens(first: u32, n: usize) -> Vec<u32> {
        (first..first + n as u32).collect()
    }

    /// Opens `prompt` (copies recorded into `copies`) and writes what it does not reuse.
    fn open_and_fill(
        pool: &mut BlockPool,
        prompt: &[u32],
        positions: usize,
        copies: &mut Vec<BlockCopy>,
    ) -> Result<BlockTable, PoolFull> {
        let mut table = pool.open(prompt, positions, |copy| {
            copies.push(copy);
            Ok::<(), PoolFull>(())
        })?;
        let rest = &prompt[table.len()..];
        pool.rows(&mut table, rest.len())?;
        pool.record(&mut table, rest);
        Ok(table)
    }

    #[test]
    fn blocks_are_taken_as_a_sequence_grows_and_returned_at_close() {
        let mut pool = BlockPool::new(8);
        let mut table = pool
            .open(&tokens(0, 20), 40, |_| Ok::<_, PoolFull>(()))
            .unwrap();
        // 40 positions: 3 blocks reserved, none taken yet.
        assert_eq!(pool.available(), 5);
        let rows = pool.rows(&mut table, 20).unwrap();
        assert_eq!(table.blocks().len(), 2);
        // Rows follow the table: block b holds rows 16b..16b+16.
        let b = table.blocks();
        assert_eq!(rows[0], b[0] * 16);
        assert_eq!(rows[17], b[1] * 16 + 1);
        pool.record(&mut table, &tokens(0, 20));
        assert_eq!(
            pool.available(),
            5,
            "taken blocks came out of the reservation"
        );
        pool.close(table);
        // The full block and the partial one stay cached; the reservation is returned.
        assert_eq!(pool.available(), 8);
        assert_eq!(pool.cached(), 2);
    }

    #[test]
    fn a_shared_prefix_shares_full_blocks_and_copies_a_partial_one() {
        let mut pool = BlockPool::new(16);
        let mut copies = Vec::new();
        let first = open_and_fill(&mut pool, &tokens(100, 40), 40, &mut copies).unwrap();
        assert!(copies.is_empty());
        // An open sequence's blocks are shared: 2 full blocks, then 8 tokens of its third
        // block copied (the prompt diverges after 40 tokens).
        let mut prompt = tokens(100, 40);
        prompt.extend([1, 2, 3]);
        let second = open_and_fill(&mut pool, &prompt, 50, &mut copies).unwrap();
        assert_eq!(second.blocks()[..2], first.blocks()[..2]);
        assert_ne!(second.blocks()[2], first.blocks()[2]);
        assert_eq!(
            copies,
            [BlockCopy {
                from: first.blocks()[2],
                to: second.blocks()[2],
                rows: 8
            }]
        );
        assert_eq!(second.len(), 43);
        // The same prompt as a full block boundary: all but its last token reused, the block
        // holding the last token copied (its 15 first rows), since it is shared.
        copies.clear();
        let third = open_and_fill(&mut pool, &tokens(100, 32), 32, &mut copies).unwrap();
        assert_eq!(third.blocks()[0], first.blocks()[0]);
        assert_eq!(copies[0].from, first.blocks()[1]);
        assert_eq!(copies[0].rows, 15);
        // A different first token shares nothing.
        copies.clear();
        let fourth = open_and_fill(&mut pool, &tokens(101, 20), 20, &mut copies).unwrap();
        assert!(copies.is_empty());
        assert!(fourth.blocks().iter().all(|b| !first.blocks().contains(b)));
    }

    #[test]
    fn dropping_the_cache_empties_closed_blocks_and_keeps_open_ones() {
        let mut pool = BlockPool::new(6);
        let mut copies = Vec::new();
        let prompt = tokens(0, 40);
        let closed = open_and_fill(&mut pool, &prompt, 48, &mut copies).unwrap();
        pool.close(closed);
        let open = open_and_fill(&mut pool, &[7; 20], 20, &mut copies).unwrap();
        assert_eq!((pool.cached(), pool.in_use()), (3, 2));
        assert_eq!(pool.drop_cached(), 3);
        assert_eq!((pool.cached(), pool.in_use(), pool.available()), (0, 2, 4));
        // The closed prompt's prefix is gone: nothing of it is reused any more.
        let again = open_and_fill(&mut pool, &prompt, 48, &mut copies).unwrap();
        assert!(copies.is_empty());
        assert_eq!(again.blocks().len(), 3);
        assert!(!again.is_empty());
        pool.close(again);
        pool.close(open);
        assert_eq!(pool.drop_cached(), 5);
        assert_eq!(pool.available(), 6);
    }

    #[test]
    fn closed_sequences_stay_cached_until_the_pool_needs_their_blocks() {
        let mut pool = BlockPool::new(4);
        let mut copies = Vec::new();
        let old = open_and_fill(&mut pool, &tokens(0, 32), 32, &mut copies).unwrap();
        pool.close(old);
        let newer = open_and_fill(&mut pool, &tokens(500, 16), 16, &mut copies).unwrap();
        pool.close(newer);
        assert_eq!((pool.cached(), pool.available()), (3, 4));
        // A sequence needing 2 blocks takes the empty one and evicts the least recently
        // released (the old sequence's first), whose prefix is then gone.
        let taker = open_and_fill(&mut pool, &tokens(900, 30), 30, &mut copies).unwrap();
        pool.close(taker);
        let again = pool
            .open(&tokens(0, 32), 32, |_| Ok::<_, PoolFull>(()))
            .unwrap();
        assert_eq!(again.len(), 0, "the old prefix was evicted");
        pool.close(again);
        let newer = pool
            .open(&tokens(500, 17), 17, |_| Ok::<_, PoolFull>(()))
            .unwrap();
        assert_eq!(newer.len(), 16, "the newer one is still cached");
    }

    #[test]
    fn an_exhausted_pool_refuses_naming_its_size_and_changes_nothing() {
        let mut pool = BlockPool::new(4);
        let mut copies = Vec::new();
        let held = open_and_fill(&mut pool, &tokens(0, 10), 40, &mut copies).unwrap();
        assert_eq!(pool.available(), 1);
        let error = pool
            .open(&tokens(50, 10), 20, |_| Ok::<_, PoolFull>(()))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "the KV cache pool of 4 blocks of 16 positions cannot hold a sequence of up to 20 \
             positions now: it needs 2 more blocks, 1 are free or cached"
        );
        assert_eq!(pool.available(), 1);
        pool.close(held);
        assert_eq!(pool.available(), 4);
        pool.open(&tokens(50, 10), 20, |_| Ok::<_, PoolFull>(()))
            .unwrap();
    }

    #[test]
    fn a_failed_copy_returns_what_the_opening_took() {
        let mut pool = BlockPool::new(4);
        let mut copies = Vec::new();
        let first = open_and_fill(&mut pool, &tokens(0, 20), 20, &mut copies).unwrap();
        let failed = pool.open(&tokens(0, 25), 25, |_| {
            Err(PoolFull {
                pool: 0,
                positions: 0,
                needed: 0,
                available: 0,
            })
        });
        assert!(failed.is_err());
        assert_eq!(pool.available(), 2);
        pool.close(first);
        assert_eq!(pool.available(), 4);
    }
}
