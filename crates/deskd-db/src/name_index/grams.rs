//! Trigram and four-gram posting lists over the name index's arena, so that `find` touches the
//! names that can match instead of every name of the volume.
//!
//! Four-grams: on a large volume every trigram of a long needle is common (`-00`, `99-`), and
//! the rarest trigram's list grows with the volume while the needle's hits do not; a four-gram
//! (`099-`) is far more often as rare as the needle, so needles of four bytes or more are
//! looked up by their four-grams, which keeps find's candidate search near constant from 1 to
//! 5 million names. They cost memory (docs/PERFORMANCE.md, "Find at scale"), so only keys of at
//! most [`MAX_QUAD_KEY`] bytes have them: a longer key's block is listed in `long_keys`, and a
//! four-gram lookup adds the blocks that hold a long key with every trigram of the needle (a
//! user naming files with long random bytes gets the trigram cost, not four times it).
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
//! A query intersects the lists of the needle's trigrams, from the rarest, and hands the blocks
//! in all of them back to the arena to scan. The intersection leapfrogs: each list is asked for
//! its first block at or after the highest one another list gave, and jumps there through the
//! skips it keeps every [`SKIP_EVERY`] blocks instead of decoding every delta on the way. On a
//! large volume every trigram of a long needle is common while the needle is not (a folder
//! number, a word and a file number, each found in thousands of names, together in a hundred),
//! and the lists' matches come in runs (names made together get neighbouring IDs), so a query
//! costs about the runs it meets, not the lists' lengths: what keeps `find` as fast at 5 million
//! names as at 1 million. Lists more than [`LEAPFROG_RATIO`] times as long as the rarest are left
//! out (their skips alone would cost more than they save). Needles of under three bytes, with a
//! NUL inside, or whose rarest trigram sits in over a [`SCAN_SHARE`] of the blocks are left to
//! the plain scan, which is as fast there.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};

/// Entries per block of a posting list (a power of two).
pub(super) const BLOCK_SHIFT: u32 = 3;
/// Entries per block.
pub(super) const BLOCK: usize = 1 << BLOCK_SHIFT;
/// Scan instead when the rarest trigram is in more than one block in this many.
pub(super) const SCAN_SHARE: usize = 4;

/// A list notes where it is every this many blocks (a skip), for seeks to jump.
const SKIP_EVERY: u32 = 32;
/// Lists up to this many times as long as the rarest take part in a query's intersection.
const LEAPFROG_RATIO: usize = 64;

/// Keys longer than this many bytes have no four-grams (see the module documentation).
const MAX_QUAD_KEY: usize = 64;
/// New four-gram lists are made while there are at most this many plus [`QUADS_PER_KEY`] per
/// key listed: names of random bytes make a new four-gram at nearly every byte (about 80 bytes
/// of map and list each), and past the cap their keys are listed as long keys instead, at the
/// cost of trigrams. Real names (words, numbers) share their four-grams and never reach it.
const QUAD_BASE: usize = 1 << 16;
/// See [`QUAD_BASE`].
const QUADS_PER_KEY: usize = 2;

/// Three or four bytes, and which, as the key of a posting list.
type Gram = u64;

fn gram(window: &[u8]) -> Gram {
    match *window {
        [a, b, c] => u64::from(u32::from_le_bytes([a, b, c, 0])) | 3 << 32,
        [a, b, c, d] => u64::from(u32::from_le_bytes([a, b, c, d])) | 4 << 32,
        _ => unreachable!("grams are three or four bytes"),
    }
}

/// The windows of `n` bytes (3 or 4) of the framed key `\0key\0`, without copying it.
fn framed_windows(key: &[u8], n: usize, mut each: impl FnMut(&[u8])) {
    let at = |p: usize| {
        if p == 0 || p == key.len() + 1 {
            0
        } else {
            key[p - 1]
        }
    };
    let framed = key.len() + 2;
    let mut window = [0u8; 4];
    for start in 0..=framed.saturating_sub(n) {
        if start + n > framed {
            break;
        }
        for (i, slot) in window[..n].iter_mut().enumerate() {
            *slot = at(start + i);
        }
        each(&window[..n]);
    }
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
        self.write_u64(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        let mut h = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
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
    /// Every [`SKIP_EVERY`]-th block listed, with where the entry after it starts.
    skips: Vec<Skip>,
}

/// A place in a posting list a seek may jump to.
#[derive(Clone, Copy)]
struct Skip {
    block: u32,
    /// The offset in `bytes` of the entry after `block`.
    at: u32,
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
        if self.len.is_multiple_of(SKIP_EVERY) {
            self.skips.push(Skip {
                block,
                at: self.bytes.len() as u32,
            });
        }
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

/// A posting list read forwards, with seeks ([`Cursor::seek`]).
struct Cursor<'a> {
    blocks: Blocks<'a>,
    skips: &'a [Skip],
    /// The first skip not yet passed.
    next_skip: usize,
    /// The block the cursor is at; `None` past the end.
    current: Option<u32>,
}

impl<'a> Cursor<'a> {
    fn new(list: &'a Postings) -> Cursor<'a> {
        let mut blocks = list.iter();
        let current = blocks.next();
        Cursor {
            blocks,
            skips: &list.skips,
            next_skip: 0,
            current,
        }
    }

    /// Move to the first block at or after `target` (never backwards) and return it; `None`
    /// when the list has none.
    fn seek(&mut self, target: u32) -> Option<u32> {
        let current = self.current?;
        if current >= target {
            return Some(current);
        }
        // The last skip below `target` that lies ahead of the cursor: decoding resumes there.
        let mut jump = None;
        while let Some(skip) = self.skips.get(self.next_skip) {
            if skip.block >= target {
                break;
            }
            self.next_skip += 1;
            if skip.at as usize > self.blocks.at {
                jump = Some(*skip);
            }
        }
        if let Some(skip) = jump {
            self.blocks.at = skip.at as usize;
            self.blocks.block = skip.block;
            self.blocks.first = false;
        }
        loop {
            self.current = self.blocks.next();
            match self.current {
                Some(block) if block < target => continue,
                found => return found,
            }
        }
    }
}

/// The blocks every list holds, ascending (leapfrog: each list seeks to the highest block
/// another gave until all agree).
fn intersect_all(lists: &[&Postings]) -> Vec<u32> {
    let mut cursors: Vec<Cursor<'_>> = lists.iter().map(|l| Cursor::new(l)).collect();
    let mut out = Vec::new();
    let mut target = 0;
    loop {
        let mut agreed = true;
        for cursor in &mut cursors {
            match cursor.seek(target) {
                None => return out,
                Some(block) if block > target => {
                    target = block;
                    agreed = false;
                }
                Some(_) => {}
            }
        }
        if agreed {
            out.push(target);
            match target.checked_add(1) {
                Some(next) => target = next,
                None => return out,
            }
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
    /// The blocks holding a key listed by trigrams only: longer than [`MAX_QUAD_KEY`], or
    /// past the cap on four-gram lists ([`QUAD_BASE`]).
    long_keys: Box<Postings>,
    /// Four-gram lists made, and keys listed: the cap's two terms.
    quads: usize,
    keys: usize,
}

impl Default for Grams {
    fn default() -> Self {
        Grams {
            lists: HashMap::with_hasher(GramState::random()),
            long_keys: Box::default(),
            quads: 0,
            keys: 0,
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
        let lists = &mut self.lists;
        let mut push = |window: &[u8]| lists.entry(gram(window)).or_default().push(block);
        framed_windows(key, 3, &mut push);
        self.keys += 1;
        let room = QUAD_BASE + QUADS_PER_KEY * self.keys;
        // The key's four-grams (the framed key's windows of four) all new still fit the cap:
        // one pass, each looked up once (the cap is for keys of random bytes).
        if key.len() <= MAX_QUAD_KEY && self.quads + (key.len() + 3).saturating_sub(4) <= room {
            let mut new = 0;
            framed_windows(key, 4, |w| match lists.entry(gram(w)) {
                std::collections::hash_map::Entry::Occupied(list) => list.into_mut().push(block),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    new += 1;
                    slot.insert(Postings::default()).push(block);
                }
            });
            self.quads += new;
            return;
        }
        let mut new = 0;
        if key.len() <= MAX_QUAD_KEY {
            framed_windows(key, 4, |w| {
                new += usize::from(!lists.contains_key(&gram(w)))
            });
        }
        if key.len() <= MAX_QUAD_KEY && self.quads + new <= room {
            framed_windows(key, 4, |w| {
                lists.entry(gram(w)).or_default().push(block);
            });
            self.quads += new;
        } else {
            self.long_keys.push(block);
        }
    }

    /// Give back the lists' spare capacity (after a bulk build).
    pub(super) fn shrink(&mut self) {
        for list in self
            .lists
            .values_mut()
            .chain(std::iter::once(&mut *self.long_keys))
        {
            list.bytes.shrink_to_fit();
            list.skips.shrink_to_fit();
        }
        self.lists.shrink_to_fit();
    }

    /// The bytes the lists fill: their encoded blocks, the map's entries and control bytes.
    pub(super) fn heap_bytes(&self) -> usize {
        self.lists
            .values()
            .chain(std::iter::once(&*self.long_keys))
            .map(|l| l.bytes.len() + l.skips.len() * std::mem::size_of::<Skip>())
            .sum::<usize>()
            + self.lists.len() * std::mem::size_of::<(Gram, Postings)>()
            + self.lists.capacity()
    }

    /// The blocks that may hold `needle`; [`Lookup::Scan`] when even its rarest gram is in
    /// more than `scan_above` blocks.
    pub(super) fn lookup(&self, needle: &[u8], scan_above: usize) -> Lookup {
        if needle.len() < 3 || needle[1..needle.len() - 1].contains(&0) {
            return Lookup::Scan;
        }
        if needle.len() < 4 {
            return self.lookup_by(needle, 3, None, scan_above);
        }
        // By four-grams; the blocks of long keys (which have none) by trigrams, added.
        let quads = self.lookup_by(needle, 4, None, scan_above);
        if self.long_keys.len == 0 {
            return quads;
        }
        match (
            quads,
            self.lookup_by(needle, 3, Some(&*self.long_keys), scan_above),
        ) {
            (Lookup::Blocks(a), Lookup::Blocks(b)) => Lookup::Blocks(merge(&a, &b)),
            _ => Lookup::Scan,
        }
    }

    /// The blocks in every list of the needle's `n`-grams (and in `also`, if given).
    fn lookup_by(
        &self,
        needle: &[u8],
        n: usize,
        also: Option<&Postings>,
        scan_above: usize,
    ) -> Lookup {
        let mut lists = Vec::with_capacity(needle.len() - 2);
        lists.extend(also);
        for window in needle.windows(n) {
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
        let bound = (rarest.len as usize).saturating_mul(LEAPFROG_RATIO);
        let taking: Vec<&Postings> = lists
            .into_iter()
            .take_while(|l| l.len as usize <= bound)
            .collect();
        Lookup::Blocks(intersect_all(&taking))
    }
}

/// The blocks of two ascending lists together, ascending, each once.
fn merge(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
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
    fn seeks_jump_by_the_skips_and_the_intersection_is_every_lists_blocks() {
        // Three lists of 10,000 blocks that share every 7th of the first and every 5th of the
        // second: the intersection is every 35th of them, as a plain merge finds it.
        let (mut a, mut b, mut c) = (
            Postings::default(),
            Postings::default(),
            Postings::default(),
        );
        for i in 0..10_000u32 {
            a.push(i * 7);
            b.push(i * 5);
            c.push(i * 3 + (i % 2));
        }
        let in_b: std::collections::HashSet<u32> = b.iter().collect();
        let in_c: std::collections::HashSet<u32> = c.iter().collect();
        let plain: Vec<u32> = a
            .iter()
            .filter(|x| in_b.contains(x) && in_c.contains(x))
            .collect();
        assert!(plain.len() > 100);
        assert_eq!(intersect_all(&[&a, &b, &c]), plain);
        assert_eq!(intersect_all(&[&c, &a, &b]), plain);
        let mut cursor = Cursor::new(&a);
        assert_eq!(cursor.seek(0), Some(0));
        assert_eq!(cursor.seek(700), Some(700), "through the skips");
        assert_eq!(cursor.seek(701), Some(707));
        assert_eq!(cursor.seek(69_993), Some(69_993), "the last block");
        assert_eq!(cursor.seek(69_994), None);
        assert_eq!(
            intersect_all(&[&a, &Postings::default()]),
            Vec::<u32>::new()
        );
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

    #[test]
    fn four_grams_narrow_and_long_keys_are_found_by_their_trigrams() {
        let mut g = Grams::default();
        // "-0099-" in block 0 only; its trigrams everywhere.
        g.add(0, b"proof-0099-draft");
        g.add(BLOCK, b"proof-0199-draft");
        g.add(2 * BLOCK, b"proof-1099-xdraft");
        assert_eq!(g.lookup(b"-0099-", 9), Lookup::Blocks(vec![0]));
        assert_eq!(g.lookup(b"099-", 9), Lookup::Blocks(vec![0, 2]));
        assert_eq!(
            g.lookup(b"99-", 9),
            Lookup::Blocks(vec![0, 1, 2]),
            "3 bytes: trigrams"
        );
        // A key too long for four-grams is still a candidate, by its trigrams.
        let long = [b"x".repeat(MAX_QUAD_KEY), b"-0099-".to_vec()].concat();
        g.add(3 * BLOCK, &long);
        assert_eq!(g.lookup(b"-0099-", 9), Lookup::Blocks(vec![0, 3]));
        assert_eq!(g.lookup(b"zz-0099-", 9), Lookup::Blocks(vec![]));
        assert_eq!(merge(&[1, 3, 5], &[2, 3, 6]), vec![1, 2, 3, 5, 6]);
    }

    #[test]
    fn names_of_random_bytes_stop_making_four_grams_at_the_cap() {
        let mut g = Grams::default();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut random_key = || {
            (0..60)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % 255 + 1) as u8
                })
                .collect::<Vec<u8>>()
        };
        let keys: Vec<Vec<u8>> = (0..3_000).map(|_| random_key()).collect();
        for (i, k) in keys.iter().enumerate() {
            g.add(i * BLOCK, k);
        }
        assert!(g.quads <= QUAD_BASE + QUADS_PER_KEY * g.keys, "{}", g.quads);
        assert!(
            g.long_keys.len > 1_000,
            "most past the cap: {}",
            g.long_keys.len
        );
        // Every key is still found, by four-grams or as a long key.
        for (i, k) in keys.iter().enumerate().step_by(97) {
            let Lookup::Blocks(blocks) = g.lookup(&k[10..30], usize::MAX) else {
                panic!("scan")
            };
            assert!(blocks.contains(&(i as u32)), "key {i}");
        }
    }
}
