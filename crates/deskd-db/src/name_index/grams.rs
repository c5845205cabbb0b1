//! Trigram posting lists over the name index's arena, so that `find` touches the names that
//! can match instead of every name of the volume.
//!
//! Every distinct three-byte window of each framed key `\0key\0` (the NUL frame included, so
//! that a prefix `\0ab` or an exact `\0abc\0` needle has trigrams too) lists the *blocks* of
//! [`BLOCK`] consecutive arena entries holding it. A list is an append-only byte stream of
//! LEB128 deltas between block numbers: entry numbers only grow (a new or renamed key is
//! appended; a removed one is only marked dead in the arena), so appending never reorders, and
//! the arena rebuilds the lists when it renumbers its entries ([`super::Arena`]'s compaction).
//! Listing blocks instead of entries costs one byte for a trigram shared by a whole block (the
//! common ones: `.pd`, `df\0`, a folder's numbering) instead of one byte per name; the price is
//! a `memmem` over the block's few hundred arena bytes to confirm, which the arena does anyway.
//!
//! A query takes the needle's two rarest trigrams, merges their lists, and hands the blocks in
//! both back to the arena to scan. Needles of under three bytes, with a NUL inside, or whose
//! rarest trigram sits in over a [`SCAN_SHARE`] of the blocks are left to the plain scan, which
//! is as fast there.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};

/// Entries per block of a posting list (a power of two).
pub(super) const BLOCK_SHIFT: u32 = 3;
/// Entries per block.
pub(super) const BLOCK: usize = 1 << BLOCK_SHIFT;
/// Scan instead when the rarest trigram is in more than one block in this many.
pub(super) const SCAN_SHARE: usize = 4;

/// Three bytes as the key of a posting list.
type Gram = u32;

fn gram(window: &[u8]) -> Gram {
    u32::from_le_bytes([window[0], window[1], window[2], 0])
}

/// The trigram map's hash: a keyed multiply-xorshift of the three bytes. SipHash (std's
/// default) made the index's build 1.7× as long; the secret key, drawn per index from std's
/// randomly seeded `RandomState`, keeps a user who chooses names from choosing trigrams that
/// collide in the map (which would make every later key's insertion slow).
#[derive(Clone, Copy)]
pub(super) struct GramState(u64);

impl GramState {
    fn random() -> GramState {
        GramState(RandomState::new().hash_one(0x6772_616d_u32))
    }
}

impl BuildHasher for GramState {
    type Hasher = GramHasher;

    fn build_hasher(&self) -> GramHasher {
        GramHasher(self.0)
    }
}

/// See [`GramState`].
pub(super) struct GramHasher(u64);

impl Hasher for GramHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u32(b as u32);
        }
    }

    fn write_u32(&mut self, n: u32) {
        let mut h = (self.0 ^ n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^= h >> 32;
        h = h.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        self.0 = h ^ (h >> 29);
    }
}

/// The blocks holding one trigram, ascending, as LEB128 deltas.
#[derive(Default)]
struct Postings {
    bytes: Vec<u8>,
    /// The last block appended (meaningful when `len > 0`).
    last: u32,
    /// Blocks listed.
    len: u32,
}

impl Postings {
    fn push(&mut self, block: u32) {
        if self.len > 0 && block == self.last {
            return;
        }
        let mut delta = if self.len == 0 {
            block
        } else {
            block - self.last
        };
        while delta >= 0x80 {
            self.bytes.push(delta as u8 | 0x80);
            delta >>= 7;
        }
        self.bytes.push(delta as u8);
        self.last = block;
        self.len += 1;
    }

    fn iter(&self) -> Blocks<'_> {
        Blocks {
            bytes: &self.bytes,
            at: 0,
            block: 0,
            first: true,
        }
    }
}

/// Decodes a posting list.
struct Blocks<'a> {
    bytes: &'a [u8],
    at: usize,
    block: u32,
    first: bool,
}

impl Iterator for Blocks<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        let mut delta = 0u32;
        let mut shift = 0;
        loop {
            let b = *self.bytes.get(self.at)?;
            self.at += 1;
            delta |= ((b & 0x7f) as u32) << shift;
            if b < 0x80 {
                break;
            }
            shift += 7;
        }
        self.block = if self.first {
            delta
        } else {
            self.block + delta
        };
        self.first = false;
        Some(self.block)
    }
}

/// The posting lists of one arena.
pub(super) struct Grams {
    lists: HashMap<Gram, Postings, GramState>,
}

impl Default for Grams {
    fn default() -> Self {
        Grams {
            lists: HashMap::with_hasher(GramState::random()),
        }
    }
}

/// What a query needs from the lists.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Lookup {
    /// The blocks that may hold a match, ascending.
    Blocks(Vec<u32>),
    /// The lists do not narrow this needle enough: scan the whole arena.
    Scan,
}

impl Grams {
    /// List entry `entry`, whose key is `key`.
    pub(super) fn add(&mut self, entry: usize, key: &[u8]) {
        let block = (entry >> BLOCK_SHIFT) as u32;
        let mut push = |g: Gram| self.lists.entry(g).or_default().push(block);
        // The framed key `\0key\0`, window by window, without copying it.
        match key.len() {
            0 => {}
            1 => push(gram(&[0, key[0], 0])),
            n => {
                push(gram(&[0, key[0], key[1]]));
                for window in key.windows(3) {
                    push(gram(window));
                }
                push(gram(&[key[n - 2], key[n - 1], 0]));
            }
        }
    }

    /// Give back the lists' spare capacity (after a bulk build).
    pub(super) fn shrink(&mut self) {
        for list in self.lists.values_mut() {
            list.bytes.shrink_to_fit();
        }
        self.lists.shrink_to_fit();
    }

    /// The bytes the lists fill: their encoded blocks, the map's entries and control bytes.
    pub(super) fn heap_bytes(&self) -> usize {
        self.lists.values().map(|l| l.bytes.len()).sum::<usize>()
            + self.lists.len() * std::mem::size_of::<(Gram, Postings)>()
            + self.lists.capacity()
    }

    /// The blocks that may hold `needle`; [`Lookup::Scan`] when even its rarest trigram is in
    /// more than `scan_above` blocks.
    pub(super) fn lookup(&self, needle: &[u8], scan_above: usize) -> Lookup {
        if needle.len() < 3 || needle[1..needle.len() - 1].contains(&0) {
            return Lookup::Scan;
        }
        let mut lists = Vec::with_capacity(needle.len() - 2);
        for window in needle.windows(3) {
            match self.lists.get(&gram(window)) {
                Some(list) => lists.push(list),
                None => return Lookup::Blocks(Vec::new()),
            }
        }
        lists.sort_by_key(|l| l.len);
        let rarest = lists[0];
        if rarest.len as usize > scan_above {
            return Lookup::Scan;
        }
        // Merging in the next rarest list costs a byte or two of decoding per block it lists,
        // and saves a block scan (a few hundred bytes) per block it rules out: worth it while
        // that list is not much longer than what is left.
        let mut blocks: Vec<u32> = rarest.iter().collect();
        for list in &lists[1..] {
            if blocks.is_empty() || list.len as usize > blocks.len() * MERGE_RATIO {
                break;
            }
            blocks = intersect(&blocks, list.iter());
        }
        Lookup::Blocks(blocks)
    }
}

/// Merge in the next rarest list while it lists at most this many blocks per block left.
const MERGE_RATIO: usize = 8;

/// The blocks of `a` (ascending) that the ascending stream `b` holds too.
fn intersect(a: &[u32], mut b: Blocks<'_>) -> Vec<u32> {
    let mut out = Vec::new();
    let mut y = b.next();
    for &x in a {
        while y.is_some_and(|j| j < x) {
            y = b.next();
        }
        match y {
            Some(j) if j == x => out.push(x),
            Some(_) => {}
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postings_round_trip_deltas_of_every_width() {
        let mut p = Postings::default();
        let blocks = [0u32, 0, 1, 2, 130, 20_000, 3_000_000, u32::MAX >> 3];
        for &b in &blocks {
            p.push(b);
        }
        let mut want = blocks.to_vec();
        want.dedup();
        assert_eq!(p.iter().collect::<Vec<_>>(), want);
        assert_eq!(p.len as usize, want.len());
    }

    #[test]
    fn framed_trigrams_anchor_prefix_and_exact_needles() {
        let mut g = Grams::default();
        g.add(0, b"ab");
        g.add(BLOCK, b"abc");
        g.add(2 * BLOCK, b"x");
        assert_eq!(g.lookup(b"\0ab\0", 1), Lookup::Blocks(vec![0]));
        assert_eq!(g.lookup(b"\0ab", 1), Lookup::Scan, "in 2 blocks");
        assert_eq!(g.lookup(b"\0ab", 2), Lookup::Blocks(vec![0, 1]));
        assert_eq!(g.lookup(b"abc\0", 1), Lookup::Blocks(vec![1]));
        assert_eq!(g.lookup(b"\0x\0", 1), Lookup::Blocks(vec![2]));
        assert_eq!(g.lookup(b"zzz", 1), Lookup::Blocks(vec![]));
        assert_eq!(g.lookup(b"ab", 9), Lookup::Scan);
        assert_eq!(g.lookup(b"a\0b", 9), Lookup::Scan);
    }
}
