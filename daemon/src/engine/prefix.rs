//! The prefix cache's bookkeeping (no device work): which sequences' KV caches hold which
//! tokens, found by the longest common prefix with a new prompt, and which finished sequences
//! are retained, least recently used first, within a byte budget. The scheduler owns one and
//! does the copies and frees it decides on. Other work (a load, a re-split) that needs memory
//! takes it from the least recently used retained sequences first, only as much as it needs.
//!
//! Lookup is O(prompt): every sequence's tokens are hashed in blocks of [`PREFIX_BLOCK`], each
//! hash covering the whole prefix up to its block's end, and an index maps each hash to the
//! sequences having that prefix. A prompt's prefix hashes are probed block by block until one is
//! missing; the candidates at the deepest block found are then checked token by token (so a hash
//! collision never serves wrong KV) and extended past it by fewer than a block's tokens each. A
//! prefix shorter than one block is not reused.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::model::SeqId;

/// Tokens per hashed block: a shared prefix is found in whole blocks, then extended token by
/// token. Small enough that a short shared system prompt counts, large enough that the index
/// holds few hashes per sequence (a 4,096-token cache: 256).
pub(super) const PREFIX_BLOCK: usize = 16;

/// What the cache knows of one sequence: running (its prompt) or retained (finished, its whole
/// cached history).
struct Entry {
    /// The tokens its KV cache holds (or will hold, for a running sequence still prefilling:
    /// the scheduler caps a hit at what is cached now).
    tokens: Vec<u32>,
    /// The prefix hash at the end of each whole block of `tokens`, so the index can forget it.
    hashes: Vec<u64>,
    /// For a retained (finished) sequence: the bytes its caches take on every device, and when
    /// it was last used; `None` for a running one.
    retained: Option<Retained>,
}

/// The state of a finished sequence kept for its KV.
#[derive(Clone, Copy, Debug)]
struct Retained {
    /// Bytes of KV cache it holds over every stage (charged to the devices' ledgers).
    bytes: u64,
    /// Positions its caches have room for (a re-split moves caches of this capacity).
    capacity: usize,
    /// The cache's clock when it was retained or last served a hit (larger is more recent).
    last_used: u64,
}

/// A prefix of a new prompt already computed in some sequence's KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Hit {
    /// The sequence whose cache holds it.
    pub(super) source: SeqId,
    /// Tokens shared (its cache's first `len` positions are the prompt's first `len` tokens).
    pub(super) len: usize,
}

/// What a model's prefix cache retains now, published by its worker on every change for
/// `status`, `list` and the metrics to read without asking the worker.
#[derive(Debug, Default)]
pub struct PrefixUsage {
    /// Bytes of KV cache the retained (finished) sequences hold over every device.
    bytes: AtomicU64,
    /// How many finished sequences are retained.
    sequences: AtomicU64,
}

impl PrefixUsage {
    /// Bytes retained and retained sequences, as last published.
    pub fn get(&self) -> (u64, u64) {
        (
            self.bytes.load(Ordering::Relaxed),
            self.sequences.load(Ordering::Relaxed),
        )
    }
}

/// Sequences by the prefixes their caches hold, and the retained ones within their budget.
pub(super) struct PrefixCache {
    /// Bytes retained (finished) sequences may hold at most; 0 keeps none.
    budget: u64,
    /// Every sequence the cache knows, running or retained.
    entries: HashMap<SeqId, Entry>,
    /// Prefix hash (at a block's end) to the sequences whose tokens start with that prefix.
    index: HashMap<u64, Vec<SeqId>>,
    /// Bytes the retained sequences hold now.
    retained_bytes: u64,
    /// How many sequences are retained now.
    retained_count: u64,
    /// Ticks on every retain and hit: the recency of retained entries.
    clock: u64,
    /// Where `retained_bytes` and `retained_count` are published on every change.
    usage: Arc<PrefixUsage>,
}

/// The prefix hash after each whole block of `tokens`.
fn block_hashes(tokens: &[u32]) -> Vec<u64> {
    let mut hashes = Vec::with_capacity(tokens.len() / PREFIX_BLOCK);
    let mut prev = 0u64;
    for block in tokens.chunks_exact(PREFIX_BLOCK) {
        let mut h = DefaultHasher::new();
        prev.hash(&mut h);
        block.hash(&mut h);
        prev = h.finish();
        hashes.push(prev);
    }
    hashes
}

/// How many leading tokens `a` and `b` share.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    /// An empty cache keeping at most `budget` bytes of finished sequences' KV.
    pub(super) fn new(budget: u64) -> Self {
        PrefixCache {
            budget,
            entries: HashMap::new(),
            index: HashMap::new(),
            retained_bytes: 0,
            retained_count: 0,
            clock: 0,
            usage: Arc::default(),
        }
    }

    /// The same (empty) cache publishing what it retains to `usage` (set to nothing now).
    pub(super) fn with_usage(mut self, usage: Arc<PrefixUsage>) -> Self {
        self.usage = usage;
        self.publish();
        self
    }

    /// Where this cache publishes what it retains.
    pub(super) fn usage(&self) -> Arc<PrefixUsage> {
        Arc::clone(&self.usage)
    }

    /// Publishes the retained bytes and count.
    fn publish(&self) {
        self.usage
            .bytes
            .store(self.retained_bytes, Ordering::Relaxed);
        self.usage
            .sequences
            .store(self.retained_count, Ordering::Relaxed);
    }

    /// Bytes finished sequences may hold at most.
    pub(super) fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes finished sequences hold now.
    pub(super) fn retained_bytes(&self) -> u64 {
        self.retained_bytes
    }

    /// The retained sequences, least recently used first.
    pub(super) fn retained(&self) -> Vec<SeqId> {
        let mut ids: Vec<(u64, SeqId)> = self
            .entries
            .iter()
            .filter_map(|(&id, e)| e.retained.map(|r| (r.last_used, id)))
            .collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// Positions a retained sequence's cache holds, `None` if it is not retained.
    pub(super) fn retained_len(&self, id: SeqId) -> Option<usize> {
        self.retained_shape(id).map(|(len, _)| len)
    }

    /// Positions a retained sequence's cache holds and has room for, `None` if it is not
    /// retained.
    pub(super) fn retained_shape(&self, id: SeqId) -> Option<(usize, usize)> {
        let e = self.entries.get(&id)?;
        e.retained.map(|r| (e.tokens.len(), r.capacity))
    }

    /// Notes that running sequence `id`'s cache holds (or is being filled with) `tokens`.
    pub(super) fn track(&mut self, id: SeqId, tokens: &[u32]) {
        self.insert(id, tokens.to_vec(), None);
    }

    /// Turns sequence `id` into a retained one whose cache of `capacity` positions holds
    /// `tokens` in `bytes`, then
    /// evicts least recently used retained sequences until the budget holds; returns the
    /// sequences evicted (their caches are to be freed), which may be `id` itself when it alone
    /// is over the budget.
    pub(super) fn retain(
        &mut self,
        id: SeqId,
        tokens: Vec<u32>,
        capacity: usize,
        bytes: u64,
    ) -> Vec<SeqId> {
        self.clock += 1;
        let retained = Retained {
            bytes,
            capacity,
            last_used: self.clock,
        };
        self.insert(id, tokens, Some(retained));
        let mut evicted = Vec::new();
        while self.retained_bytes > self.budget {
            let Some(&oldest) = self.retained().first() else {
                break;
            };
            self.forget(oldest);
            evicted.push(oldest);
        }
        evicted
    }

    /// The least recently used retained sequence other than `keep`, forgotten (its cache is to
    /// be freed); `None` when there is none.
    pub(super) fn evict_lru(&mut self, keep: Option<SeqId>) -> Option<SeqId> {
        let victim = self.retained().into_iter().find(|&id| Some(id) != keep)?;
        self.forget(victim);
        Some(victim)
    }

    /// Forgets retained sequences, least recently used first, until they held `wanted` bytes
    /// together or none is left (`u64::MAX`: every one); returns them (their caches are to be
    /// freed) and the bytes they held.
    pub(super) fn drop_lru(&mut self, wanted: u64) -> (Vec<SeqId>, u64) {
        let before = self.retained_bytes;
        let mut ids = Vec::new();
        while before - self.retained_bytes < wanted {
            let Some(id) = self.evict_lru(None) else {
                break;
            };
            ids.push(id);
        }
        (ids, before - self.retained_bytes)
    }

    /// Forgets sequence `id` (finished without being retained, cancelled, or evicted).
    pub(super) fn forget(&mut self, id: SeqId) {
        let Some(entry) = self.entries.remove(&id) else {
            return;
        };
        if let Some(r) = entry.retained {
            self.retained_bytes -= r.bytes;
            self.retained_count -= 1;
            self.publish();
        }
        for h in entry.hashes {
            if let Some(ids) = self.index.get_mut(&h) {
                ids.retain(|&other| other != id);
                if ids.is_empty() {
                    self.index.remove(&h);
                }
            }
        }
    }

    /// The longest prefix of `prompt`, at most `max_len` tokens, that a known sequence's cache
    /// holds, where `cached(id)` says how many positions sequence `id` holds now. A hit on a
    /// retained sequence makes it the most recently used.
    pub(super) fn lookup(
        &mut self,
        prompt: &[u32],
        max_len: usize,
        cached: impl Fn(SeqId) -> usize,
    ) -> Option<Hit> {
        let best = self.find(prompt, max_len, cached);
        if let Some(hit) = best {
            self.clock += 1;
            let clock = self.clock;
            if let Some(r) = self
                .entries
                .get_mut(&hit.source)
                .and_then(|e| e.retained.as_mut())
            {
                r.last_used = clock;
            }
        }
        best
    }

    /// What [`PrefixCache::lookup`] would find, without touching the recency of any entry.
    pub(super) fn find(
        &self,
        prompt: &[u32],
        max_len: usize,
        cached: impl Fn(SeqId) -> usize,
    ) -> Option<Hit> {
        let prompt = &prompt[..max_len.min(prompt.len())];
        let mut best: Option<Hit> = None;
        // Probe deepest-last: a prefix of k blocks is indexed only where k-1 blocks are too.
        let mut deepest: Option<&Vec<SeqId>> = None;
        for h in block_hashes(prompt) {
            match self.index.get(&h) {
                Some(ids) => deepest = Some(ids),
                None => break,
            }
        }
        for &id in deepest.into_iter().flatten() {
            let Some(entry) = self.entries.get(&id) else {
                continue;
            };
            let len = common_prefix(prompt, &entry.tokens).min(cached(id));
            if len >= PREFIX_BLOCK && best.is_none_or(|b| len > b.len) {
                best = Some(Hit { source: id, len });
            }
        }
        best
    }

    /// Records `id` with `tokens` (replacing what was known of it) and indexes its blocks.
    fn insert(&mut self, id: SeqId, tokens: Vec<u32>, retained: Option<Retained>) {
        self.forget(id);
        let hashes = block_hashes(&tokens);
        for &h in &hashes {
            self.index.entry(h).or_default().push(id);
        }
        if let Some(r) = retained {
            self.retained_bytes += r.bytes;
            self.retained_count += 1;
            self.publish();
        }
        self.entries.insert(
            id,
            Entry {
                tokens,
                hashes,
                retained,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(n: usize, seed: u32) -> Vec<u32> {
        (0..n as u32).map(|i| i * 7 + seed).collect()
    }

    #[test]
    fn the_longest_prefix_is_found_and_capped() {
        let mut c = PrefixCache::new(1 << 20);
        let a = tokens(100, 0);
        c.retain(1, a.clone(), 32, 10);
        let mut b = a[..40].to_vec();
        b.extend(tokens(30, 5000));
        c.retain(2, b.clone(), 32, 10);
        let all = |_| usize::MAX;
        // Full hit, capped at what the caller may reuse.
        assert_eq!(c.lookup(&a, 99, all), Some(Hit { source: 1, len: 99 }));
        // Partial hit past a block boundary: 40 tokens shared with 2 (and 1), 2 extends no
        // further, 1 neither; either serves 40.
        let mut p = b[..45].to_vec();
        p.push(999_999);
        let hit = c.lookup(&p, p.len() - 1, all).expect("hit");
        assert_eq!(hit, Hit { source: 2, len: 45 });
        // A prefix shared only within the first block is not reused.
        let mut short = a[..10].to_vec();
        short.extend(tokens(40, 9000));
        assert_eq!(c.lookup(&short, short.len() - 1, all), None);
        // A miss.
        assert_eq!(c.lookup(&tokens(50, 77), 49, all), None);
        // What the source holds now caps the hit.
        assert_eq!(c.lookup(&a, 99, |_| 20), Some(Hit { source: 1, len: 20 }));
        assert_eq!(c.lookup(&a, 99, |_| 3), None);
    }

    #[test]
    fn retained_sequences_are_evicted_least_recently_used_first() {
        let mut c = PrefixCache::new(300);
        assert!(c.retain(1, tokens(32, 1), 32, 100).is_empty());
        assert!(c.retain(2, tokens(32, 2), 32, 100).is_empty());
        assert!(c.retain(3, tokens(32, 3), 32, 100).is_empty());
        assert_eq!(c.retained_bytes(), 300);
        // A hit on 1 makes it the most recent: 2 goes first.
        assert!(c.lookup(&tokens(32, 1), 31, |_| 32).is_some());
        assert_eq!(c.retain(4, tokens(32, 4), 32, 100), vec![2]);
        assert_eq!(c.retained(), vec![3, 1, 4]);
        assert_eq!(c.evict_lru(Some(3)), Some(1));
        assert_eq!(c.retained_bytes(), 200);
        assert_eq!(c.lookup(&tokens(32, 1), 31, |_| 32), None, "1 is forgotten");
        // One sequence over the whole budget evicts itself.
        assert_eq!(c.retain(5, tokens(32, 5), 32, 301), vec![3, 4, 5]);
        assert_eq!(c.retained_bytes(), 0);
        // Running sequences are found but never evicted.
        c.track(6, &tokens(32, 6));
        assert_eq!(c.evict_lru(None), None);
        assert!(c.lookup(&tokens(33, 6), 32, |_| 32).is_some());
        c.forget(6);
        assert!(c.index.is_empty() && c.entries.is_empty());
    }

    #[test]
    fn what_is_retained_is_published() {
        let usage = Arc::new(PrefixUsage::default());
        let mut c = PrefixCache::new(250).with_usage(Arc::clone(&usage));
        c.retain(1, tokens(32, 1), 32, 100);
        c.retain(2, tokens(32, 2), 32, 100);
        c.track(3, &tokens(32, 3));
        assert_eq!(usage.get(), (200, 2), "running sequences are not retained");
        c.retain(3, tokens(32, 3), 32, 100);
        assert_eq!(usage.get(), (200, 2), "1 was evicted for 3");
        c.forget(2);
        assert_eq!(usage.get(), (100, 1));
        c.drop_lru(u64::MAX);
        assert_eq!(usage.get(), (0, 0));
    }

    #[test]
    fn dropping_for_other_work_takes_the_least_recently_used_until_enough_is_free() {
        let mut c = PrefixCache::new(1000);
        c.retain(1, tokens(32, 1), 32, 100);
        c.retain(2, tokens(32, 2), 32, 200);
        c.retain(3, tokens(32, 3), 32, 300);
        c.retain(4, tokens(32, 4), 32, 50);
        c.track(5, &tokens(32, 5));
        // A hit on 1 makes it the most recent: 2 is the least recently used now.
        assert!(c.lookup(&tokens(32, 1), 31, |_| 32).is_some());
        // 150 bytes wanted: 2 (200) is enough, the others stay.
        assert_eq!(c.drop_lru(150), (vec![2], 200));
        assert_eq!(c.retained(), vec![3, 4, 1]);
        assert_eq!(c.retained_bytes(), 450);
        // 301 wanted: 3 (300) is not enough, 4 (50) follows; 1 stays and is still found.
        assert_eq!(c.drop_lru(301), (vec![3, 4], 350));
        assert_eq!(
            c.lookup(&tokens(33, 1), 32, |_| 32).map(|h| h.source),
            Some(1)
        );
        assert_eq!(c.lookup(&tokens(33, 3), 32, |_| 32), None, "3 is forgotten");
        // Nothing wanted drops nothing; more than is retained drops all but running sequences.
        assert_eq!(c.drop_lru(0), (vec![], 0));
        assert_eq!(c.drop_lru(10_000), (vec![1], 100));
        assert_eq!(c.retained_bytes(), 0);
        assert_eq!(c.drop_lru(1), (vec![], 0));
        assert!(
            c.lookup(&tokens(33, 5), 32, |_| 32).is_some(),
            "running 5 stays"
        );
    }

    #[test]
    fn a_budget_of_zero_keeps_nothing_and_drop_lru_can_free_all() {
        let mut c = PrefixCache::new(0);
        assert_eq!(c.retain(1, tokens(32, 1), 32, 1), vec![1]);
        let mut c = PrefixCache::new(1000);
        c.retain(1, tokens(32, 1), 32, 1);
        c.retain(2, tokens(32, 2), 32, 1);
        c.track(3, &tokens(32, 3));
        assert_eq!(c.drop_lru(u64::MAX), (vec![1, 2], 2));
        assert_eq!(c.retained_bytes(), 0);
        assert_eq!(c.retained_len(3), None);
        assert!(c.lookup(&tokens(33, 3), 32, |_| 32).is_some());
    }
}
