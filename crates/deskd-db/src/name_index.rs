//! The in-memory name index behind `find`.
//!
//! Every object's search key (NFC, lower case; see [`crate::names`]) lives in one contiguous
//! byte arena, each key framed by NUL bytes: `\0key\0key\0…`. A NUL cannot occur in a file
//! name, so a SIMD substring search (`memchr::memmem`) finds substring hits that never cross two
//! names, a prefix as `\0prefix`, and an exact name as `\0name\0`. Scanning the whole arena
//! grows with the volume (1.3 ms at a million names, 20 ms at five: the arena outgrows the
//! caches), so trigram posting lists ([`grams`]) name the blocks of eight entries that can hold
//! the needle, and only those are searched: tens to hundreds of microseconds at either size,
//! for some 6 bytes per name. Needles under three bytes, or made of trigrams most blocks hold,
//! are still scanned whole. Nothing of this is kept in the database: the writer only appends a
//! key (and its trigrams) after each commit, which keeps the cost of name indexing off the path
//! that allocates IDs.
//!
//! The index is a cache of `objects.skey`. It is built from the desktop in the background when a
//! volume opens ([`NameIndex::load`]); changes committed meanwhile are queued and replayed, and
//! until it is ready callers fall back to scanning the table ([`crate::Read::find`]). Every hit is
//! confirmed against the caller's own snapshot, so a result never names an object that the
//! caller's view does not hold under a matching name.

mod grams;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::RwLock;

use memchr::memmem;

use grams::{Grams, Lookup, BLOCK, SCAN_SHARE};

use crate::{FindMode, FindQuery, Object, Read, Result, ROOT_ID};

/// One committed change to the names of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameChange {
    /// The object `id` now has this search key (new object or renamed).
    Set(u32, String),
    /// The object `id` is gone.
    Remove(u32),
}

/// The in-memory name index of one volume; shared by the writer and every reader.
pub struct NameIndex {
    state: RwLock<State>,
    /// Keep trigram posting lists ([`grams`]); without them every query scans the arena.
    trigrams: bool,
}

impl Default for NameIndex {
    fn default() -> Self {
        NameIndex {
            state: RwLock::default(),
            trigrams: true,
        }
    }
}

enum State {
    /// Not built yet: changes committed meanwhile, replayed in order when the build ends.
    Loading(Vec<NameChange>),
    Ready(Arena),
}

impl Default for State {
    fn default() -> Self {
        State::Loading(Vec::new())
    }
}

/// The keys, framed by NUL bytes, and which object each belongs to.
#[derive(Default)]
struct Arena {
    /// `\0key\0key\0…`; always starts with a NUL.
    bytes: Vec<u8>,
    /// Offset of each entry's first key byte, ascending.
    starts: Vec<usize>,
    /// The object of each entry; 0 for an entry that was removed or replaced.
    ids: Vec<u32>,
    /// Entry number of each live object.
    entry_of: HashMap<u32, u32>,
    /// Key bytes held by dead entries; the arena is compacted when they dominate.
    dead_bytes: usize,
    /// Which blocks of entries hold each trigram (None: every query scans; the lists are built
    /// after the load, [`NameIndex::index_trigrams`]).
    grams: Option<Grams>,
    /// Compactions so far: a trigram build that started before one must start again.
    compactions: u32,
}

/// Entries given their trigrams per hold of the read lock while the lists are built.
const TRIGRAM_CHUNK: usize = 16 * 1024;

/// Compact when dead keys are over half of the arena and at least this large.
const COMPACT_MIN_DEAD: usize = 1 << 20;

impl Arena {
    /// What the arena's entries fill (the vectors' spare capacity is left out: untouched, it
    /// is not resident; the hash map's control bytes are written for every bucket).
    fn heap_bytes(&self) -> u64 {
        (self.bytes.len()
            + self.starts.len() * std::mem::size_of::<usize>()
            + self.ids.len() * std::mem::size_of::<u32>()
            + self.entry_of.len() * std::mem::size_of::<(u32, u32)>()
            + self.entry_of.capacity()
            + self.grams.as_ref().map_or(0, Grams::heap_bytes)) as u64
    }

    fn new(trigrams: bool) -> Arena {
        Arena {
            bytes: vec![0],
            grams: trigrams.then(Grams::default),
            ..Default::default()
        }
    }

    fn set(&mut self, id: u32, key: &str) {
        if id == ROOT_ID {
            return;
        }
        if let Some(&entry) = self.entry_of.get(&id) {
            if self.key_of(entry as usize) == key.as_bytes() {
                return;
            }
            self.kill(entry as usize);
        }
        let entry = self.ids.len() as u32;
        self.push(id, key.as_bytes());
        self.entry_of.insert(id, entry);
        // A rename leaves its old key dead, like a removal.
        self.compact_if_mostly_dead();
    }

    /// Append a live entry (its `entry_of` is the caller's).
    fn push(&mut self, id: u32, key: &[u8]) {
        if let Some(grams) = &mut self.grams {
            grams.add(self.ids.len(), key);
        }
        self.starts.push(self.bytes.len());
        self.bytes.extend_from_slice(key);
        self.bytes.push(0);
        self.ids.push(id);
    }

    /// Give back spare capacity after a bulk build.
    fn shrink(&mut self) {
        if let Some(grams) = &mut self.grams {
            grams.shrink();
        }
    }

    fn remove(&mut self, id: u32) {
        if let Some(entry) = self.entry_of.remove(&id) {
            self.kill(entry as usize);
        }
        self.compact_if_mostly_dead();
    }

    fn compact_if_mostly_dead(&mut self) {
        if self.dead_bytes >= COMPACT_MIN_DEAD && self.dead_bytes * 2 > self.bytes.len() {
            self.compact();
        }
    }

    fn kill(&mut self, entry: usize) {
        self.dead_bytes += self.key_of(entry).len() + 1;
        self.ids[entry] = 0;
    }

    fn apply(&mut self, change: &NameChange) {
        match change {
            NameChange::Set(id, key) => self.set(*id, key),
            NameChange::Remove(id) => self.remove(*id),
        }
    }

    fn key_of(&self, entry: usize) -> &[u8] {
        let start = self.starts[entry];
        let end = self
            .starts
            .get(entry + 1)
            .map_or(self.bytes.len(), |&next| next);
        &self.bytes[start..end - 1]
    }

    /// Renumber the live entries densely (the trigram lists are rebuilt with them).
    fn compact(&mut self) {
        let mut fresh = Arena::new(self.grams.is_some());
        fresh.compactions = self.compactions.wrapping_add(1);
        fresh.bytes.reserve(self.bytes.len() - self.dead_bytes);
        for entry in 0..self.ids.len() {
            let id = self.ids[entry];
            if id != 0 {
                fresh.entry_of.insert(id, fresh.ids.len() as u32);
                fresh.push(id, self.key_of(entry));
            }
        }
        fresh.shrink();
        *self = fresh;
    }

    /// IDs of live entries whose key contains `needle` (framed with NULs for anchors), above
    /// `after_id`, unordered: from the blocks the trigram lists name, or a scan of them all.
    fn candidates(&self, needle: &[u8], after_id: u32) -> Vec<u32> {
        self.candidates_scanning_above(
            needle,
            after_id,
            self.ids.len().div_ceil(BLOCK) / SCAN_SHARE,
        )
    }

    /// [`Arena::candidates`], scanning every key when the needle's rarest trigram is in more
    /// than `scan_above` blocks.
    fn candidates_scanning_above(
        &self,
        needle: &[u8],
        after_id: u32,
        scan_above: usize,
    ) -> Vec<u32> {
        let finder = memmem::Finder::new(needle);
        let mut out = Vec::new();
        let entries = self.ids.len();
        match &self.grams {
            Some(grams) => match grams.lookup(needle, scan_above) {
                Lookup::Blocks(blocks) => {
                    for block in blocks {
                        let first = block as usize * BLOCK;
                        let range = first..(first + BLOCK).min(entries);
                        self.scan(&finder, range, after_id, &mut out);
                    }
                }
                Lookup::Scan => self.scan(&finder, 0..entries, after_id, &mut out),
            },
            None => self.scan(&finder, 0..entries, after_id, &mut out),
        }
        out
    }

    /// Append to `out` the IDs of the live entries in `entries` whose key holds the finder's
    /// needle, above `after_id`.
    fn scan(
        &self,
        finder: &memmem::Finder,
        entries: Range<usize>,
        after_id: u32,
        out: &mut Vec<u32>,
    ) {
        if entries.is_empty() {
            return;
        }
        // From the NUL before the first key to the NUL after the last one.
        let low = self.starts[entries.start] - 1;
        let high = self
            .starts
            .get(entries.end)
            .map_or(self.bytes.len(), |&s| s);
        let starts = &self.starts[entries.clone()];
        // A needle framed by a leading NUL hits at the NUL before the key.
        let lead = (finder.needle().first() == Some(&0)) as usize;
        let mut from = low;
        while let Some(hit) = finder.find(&self.bytes[from..high]) {
            let at = from + hit + lead;
            if at >= high {
                break;
            }
            let entry = entries.start + starts.partition_point(|&s| s <= at) - 1;
            let id = self.ids[entry];
            if id != 0 && id > after_id {
                out.push(id);
            }
            // Go on from the next key (its leading NUL for an anchored needle): one hit per
            // entry, and an exact `\0name\0` hit does not swallow the NUL that opens the next
            // key's own match.
            match self.starts.get(entry + 1) {
                Some(&next) if next - lead < high => from = next - lead,
                _ => break,
            }
        }
    }

    fn all(&self, after_id: u32) -> Vec<u32> {
        self.ids
            .iter()
            .copied()
            .filter(|&id| id != 0 && id > after_id)
            .collect()
    }

    fn live(&self) -> usize {
        self.entry_of.len()
    }
}

/// The bytes every match must contain, with NUL anchors where the pattern is anchored; `None`
/// when the pattern has no literal part (every name is a candidate).
fn needle_for(mode: FindMode, folded: &str) -> Option<Vec<u8>> {
    let framed = |pre: bool, text: &[u8], post: bool| {
        let mut n = Vec::with_capacity(text.len() + 2);
        if pre {
            n.push(0);
        }
        n.extend_from_slice(text);
        if post {
            n.push(0);
        }
        n
    };
    match mode {
        FindMode::Substring if folded.is_empty() => None,
        FindMode::Substring => Some(folded.as_bytes().to_vec()),
        FindMode::Prefix => Some(framed(true, folded.as_bytes(), false)),
        FindMode::Exact => Some(framed(true, folded.as_bytes(), true)),
        FindMode::Glob => glob_literal(folded),
    }
}

/// The longest literal run of a GLOB pattern (outside `*`, `?` and `[...]`), NUL-anchored at the
/// ends where the pattern itself is anchored.
fn glob_literal(pattern: &str) -> Option<Vec<u8>> {
    let bytes = pattern.as_bytes();
    let mut best: Option<(usize, usize, bool, bool)> = None; // (start, end, at_start, at_end)
    let mut run_start = 0;
    let mut i = 0;
    let consider = |start: usize, end: usize, best: &mut Option<(usize, usize, bool, bool)>| {
        if end > start {
            let anchored_start = start == 0;
            let anchored_end = end == bytes.len();
            let weight = end - start + anchored_start as usize + anchored_end as usize;
            let current = best.map_or(0, |(s, e, a, b)| e - s + a as usize + b as usize);
            if weight > current {
                *best = Some((start, end, anchored_start, anchored_end));
            }
        }
    };
    while i < bytes.len() {
        match bytes[i] {
            b'*' | b'?' => {
                consider(run_start, i, &mut best);
                i += 1;
                run_start = i;
            }
            b'[' => {
                consider(run_start, i, &mut best);
                // Skip the class: `[]...]` and `[^]...]` may hold a literal `]` first.
                let mut j = i + 1;
                if j < bytes.len() && bytes[j] == b'^' {
                    j += 1;
                }
                if j < bytes.len() && bytes[j] == b']' {
                    j += 1;
                }
                while j < bytes.len() && bytes[j] != b']' {
                    j += 1;
                }
                i = (j + 1).min(bytes.len());
                run_start = i;
            }
            _ => i += 1,
        }
    }
    consider(run_start, bytes.len(), &mut best);
    let (start, end, at_start, at_end) = best?;
    let mut needle = Vec::with_capacity(end - start + 2);
    if at_start {
        needle.push(0);
    }
    needle.extend_from_slice(&bytes[start..end]);
    if at_end {
        needle.push(0);
    }
    Some(needle)
}

impl NameIndex {
    /// A new index in the loading state (changes are queued until [`NameIndex::load`]).
    pub fn new() -> NameIndex {
        NameIndex::default()
    }

    /// Build the index from `db` (a read snapshot taken after this index was created, so that
    /// every change committed since is either in the snapshot or in the queue), then replay the
    /// queued changes. Replaying a change the snapshot already holds is harmless: each change
    /// sets or clears one object's key.
    pub fn load<R: Read + ?Sized>(&self, db: &R) -> Result<()> {
        let mut arena = Arena::new(false);
        db.for_each_search_key(&mut |id, key| arena.set(id, key))?;
        self.finish_load(arena);
        Ok(())
    }

    /// Build the index from `(id, search key)` pairs instead of a desktop (benchmarks, tests),
    /// then replay the queued changes like [`NameIndex::load`].
    pub fn load_keys<'a>(&self, keys: impl IntoIterator<Item = (u32, &'a str)>) {
        let mut arena = Arena::new(false);
        for (id, key) in keys {
            arena.set(id, key);
        }
        self.finish_load(arena);
    }

    fn finish_load(&self, mut arena: Arena) {
        let mut state = self.state.write().unwrap();
        if let State::Loading(queued) = &*state {
            for change in queued {
                arena.apply(change);
            }
        }
        *state = State::Ready(arena);
    }

    /// Build the trigram lists of a loaded index (the server calls this right after
    /// [`NameIndex::load`], on the same background thread). Until they are in place every
    /// query scans the keys, so the index answers as soon as the keys are in; the lists are
    /// built a chunk of entries at a time under the read lock (the writer's updates wait for a
    /// chunk at most) and put in place under the write lock once they cover every entry. A
    /// compaction meanwhile renumbers the entries: the build starts again. Does nothing for a
    /// [`NameIndex::scan_only`] index, one still loading, or one whose lists are in place.
    pub fn index_trigrams(&self) {
        if !self.trigrams {
            return;
        }
        let mut grams = Grams::default();
        let (mut done, mut compactions) = (0, None);
        loop {
            {
                let state = self.state.read().unwrap();
                let State::Ready(arena) = &*state else { return };
                if arena.grams.is_some() {
                    return;
                }
                if compactions != Some(arena.compactions) {
                    (grams, done, compactions) = (Grams::default(), 0, Some(arena.compactions));
                }
                let end = (done + TRIGRAM_CHUNK).min(arena.ids.len());
                for entry in done..end {
                    grams.add(entry, arena.key_of(entry));
                }
                done = end;
                if done < arena.ids.len() {
                    continue;
                }
            }
            // Caught up: finish under the write lock (entries appended since the last chunk).
            let mut state = self.state.write().unwrap();
            let State::Ready(arena) = &mut *state else {
                return;
            };
            if compactions != Some(arena.compactions) {
                continue;
            }
            for entry in done..arena.ids.len() {
                grams.add(entry, arena.key_of(entry));
            }
            grams.shrink();
            arena.grams = Some(grams);
            return;
        }
    }

    /// True once the trigram lists are in place ([`NameIndex::index_trigrams`]).
    pub fn has_trigrams(&self) -> bool {
        matches!(&*self.state.read().unwrap(), State::Ready(arena) if arena.grams.is_some())
    }

    /// An index that keeps no trigram lists: every query scans all the keys. For comparisons
    /// only (scripts/bench-find-scale.sh); the server uses [`NameIndex::new`].
    pub fn scan_only() -> NameIndex {
        NameIndex {
            trigrams: false,
            ..NameIndex::default()
        }
    }

    /// The IDs whose key may match `pattern` in `mode`, above `after_id`, unordered and not yet
    /// confirmed (what [`NameIndex::find`] confirms); None while loading.
    pub fn candidates(&self, mode: FindMode, pattern: &str, after_id: u32) -> Option<Vec<u32>> {
        let folded = crate::names::fold_pattern(pattern);
        match &*self.state.read().unwrap() {
            State::Ready(arena) => Some(match needle_for(mode, &folded) {
                Some(needle) => arena.candidates(&needle, after_id),
                None => arena.all(after_id),
            }),
            State::Loading(_) => None,
        }
    }

    /// Record committed changes (the writer calls this after each commit).
    pub fn apply(&self, changes: &[NameChange]) {
        if changes.is_empty() {
            return;
        }
        let mut state = self.state.write().unwrap();
        match &mut *state {
            State::Loading(queue) => queue.extend_from_slice(changes),
            State::Ready(arena) => {
                for change in changes {
                    arena.apply(change);
                }
            }
        }
    }

    /// True once [`NameIndex::load`] has finished.
    pub fn is_ready(&self) -> bool {
        matches!(&*self.state.read().unwrap(), State::Ready(_))
    }

    /// Number of names indexed (None while loading).
    pub fn names(&self) -> Option<usize> {
        match &*self.state.read().unwrap() {
            State::Ready(arena) => Some(arena.live()),
            State::Loading(_) => None,
        }
    }

    /// The heap the index fills, in bytes (what its entries use, not the spare capacity of its
    /// vectors). Takes the read lock briefly.
    pub fn heap_bytes(&self) -> u64 {
        match &*self.state.read().unwrap() {
            State::Ready(arena) => arena.heap_bytes(),
            State::Loading(queue) => queue
                .iter()
                .map(|change| match change {
                    NameChange::Set(_, key) => key.capacity() + std::mem::size_of::<NameChange>(),
                    NameChange::Remove(_) => std::mem::size_of::<NameChange>(),
                })
                .sum::<usize>() as u64,
        }
    }

    /// Run `query` against the index and confirm each hit in `db`; falls back to
    /// [`Read::find`] (a table scan) while the index is still loading.
    pub fn find<R: Read + ?Sized>(&self, db: &R, query: &FindQuery) -> Result<Vec<Object>> {
        self.find_with(db, query, |ids| db.get_many(ids))
    }

    /// [`NameIndex::find`], each window of hits confirmed by `get_many` (a cache in front of
    /// `db`'s, say) instead of [`Read::get_many`]; it answers as that does (the rows found,
    /// in ID order).
    pub fn find_with<R: Read + ?Sized>(
        &self,
        db: &R,
        query: &FindQuery,
        mut get_many: impl FnMut(&[u32]) -> Result<Vec<Object>>,
    ) -> Result<Vec<Object>> {
        let folded = crate::names::fold_pattern(&query.pattern);
        let mut candidates = {
            let state = self.state.read().unwrap();
            let State::Ready(arena) = &*state else {
                drop(state);
                return db.find(query);
            };
            match needle_for(query.mode, &folded) {
                Some(needle) => arena.candidates(&needle, query.after_id),
                None => arena.all(query.after_id),
            }
        };
        let limit = query.limit.max(1) as usize;
        let glob = crate::find_glob(query.mode, &folded);
        let mut out = Vec::with_capacity(limit.min(candidates.len()));
        // Only the lowest IDs are needed: order a window of them at a time.
        let mut done = 0;
        while out.len() < limit && done < candidates.len() {
            let window = (limit - out.len()) + 16;
            let rest = &mut candidates[done..];
            if rest.len() > window {
                rest.select_nth_unstable(window);
                rest[..window].sort_unstable();
            } else {
                rest.sort_unstable();
            }
            let take = window.min(rest.len());
            // Confirmed in the caller's own view, by the same GLOB rule as the scan; one
            // `get_many` a window (one round trip on PostgreSQL).
            for object in get_many(&rest[..take])? {
                if out.len() == limit {
                    break;
                }
                if crate::names::glob_matches(&glob, &crate::names::search_key(&object.name)) {
                    out.push(object);
                }
            }
            done += take;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_literal_picks_the_longest_anchored_run() {
        assert_eq!(glob_literal("*.txt").unwrap(), b".txt\0");
        assert_eq!(glob_literal("rep*").unwrap(), b"\0rep");
        assert_eq!(glob_literal("a*report*b").unwrap(), b"report");
        assert_eq!(glob_literal("[ab]c?d*"), Some(b"c".to_vec()));
        assert_eq!(glob_literal("*"), None);
        assert_eq!(glob_literal("[]x]*"), None);
        assert_eq!(glob_literal("exact").unwrap(), b"\0exact\0");
    }

    #[test]
    fn arena_set_rename_remove_and_compact() {
        let mut a = Arena::new(true);
        a.set(17, "alpha");
        a.set(18, "beta");
        a.set(17, "gamma");
        assert_eq!(a.candidates(b"alpha", 0), Vec::<u32>::new());
        assert_eq!(a.candidates(b"amm", 0), vec![17]);
        a.remove(18);
        assert_eq!(a.candidates(b"beta", 0), Vec::<u32>::new());
        a.compact();
        assert_eq!(a.live(), 1);
        assert_eq!(a.candidates(b"\0gamma\0", 0), vec![17]);
        assert_eq!(a.candidates(b"a", 17), Vec::<u32>::new());
    }

    #[test]
    fn renaming_one_name_over_and_over_compacts_the_arena() {
        let mut a = Arena::new(true);
        a.set(16, "kept");
        for i in 0..10_000 {
            a.set(17, &format!("{i:0>200}"));
        }
        assert!(
            a.bytes.len() < 3 * COMPACT_MIN_DEAD,
            "{} bytes",
            a.bytes.len()
        );
        assert!(a.ids.len() < 10_000);
        assert_eq!(a.candidates(b"\0kept\0", 0), vec![16]);
        assert_eq!(
            a.candidates(format!("{:0>200}", 9_999).as_bytes(), 0),
            vec![17]
        );
        assert!(a
            .candidates(format!("\0{:0>200}\0", 9_998).as_bytes(), 0)
            .is_empty());
    }

    /// Trigram lists built while the writer renames, removes and compacts end up listing every
    /// entry: the same candidates as a scan-only index given the same changes.
    #[test]
    fn trigram_lists_built_during_changes_and_compactions_are_complete() {
        let (index, scan) = (NameIndex::new(), NameIndex::scan_only());
        let keys: Vec<(u32, String)> = (16..60_000)
            .map(|id| (id, format!("{id:0>150}.x")))
            .collect();
        for i in [&index, &scan] {
            i.load_keys(keys.iter().map(|(id, k)| (*id, k.as_str())));
        }
        // Renames of long names: enough dead keys to compact the arena several times.
        let changes: Vec<NameChange> = (0..40_000u32)
            .map(|i| match i % 3 {
                0 => NameChange::Remove(16 + i),
                _ => NameChange::Set(16 + (i * 7) % 59_000, format!("renamed-{i}-{:0>150}", i)),
            })
            .collect();
        std::thread::scope(|s| {
            s.spawn(|| index.index_trigrams());
            for chunk in changes.chunks(50) {
                index.apply(chunk);
            }
        });
        index.index_trigrams();
        scan.apply(&changes);
        assert!(index.has_trigrams());
        for pattern in [
            "renamed-3999",
            "00059999.x",
            "renamed-1-",
            "-39998-",
            "nothing",
        ] {
            let mut a = index.candidates(FindMode::Substring, pattern, 0).unwrap();
            let mut b = scan.candidates(FindMode::Substring, pattern, 0).unwrap();
            a.sort_unstable();
            b.sort_unstable();
            assert_eq!(a, b, "{pattern}");
        }
    }

    #[test]
    fn exact_needles_find_adjacent_equal_names() {
        // `\0x\0\0x\0` shares the NUL between two equal keys: both are hits.
        for trigrams in [false, true] {
            let mut a = Arena::new(trigrams);
            for id in 10..30 {
                a.set(id, "x");
            }
            let mut hits = a.candidates_scanning_above(b"\0x\0", 0, usize::MAX);
            hits.sort_unstable();
            assert_eq!(hits, (10..30).collect::<Vec<_>>(), "trigrams {trigrams}");
        }
    }

    #[test]
    fn postings_follow_renames_removals_and_compaction() {
        let mut a = Arena::new(true);
        // Enough entries for several blocks, so that lists name more than one.
        for id in 10..60 {
            a.set(id, &format!("file-{id}.txt"));
        }
        let hits = |a: &Arena, needle: &[u8]| {
            let mut ids = a.candidates_scanning_above(needle, 0, usize::MAX);
            ids.sort_unstable();
            ids
        };
        assert_eq!(hits(&a, b"\0file-42.txt\0"), vec![42]);
        a.set(42, "renamed.doc");
        assert_eq!(hits(&a, b"\0file-42.txt\0"), Vec::<u32>::new());
        assert_eq!(hits(&a, b"named"), vec![42]);
        a.remove(43);
        a.set(44, "renamed.doc");
        assert_eq!(hits(&a, b"e-4"), vec![40, 41, 45, 46, 47, 48, 49]);
        assert_eq!(hits(&a, b".doc\0"), vec![42, 44]);
        a.compact();
        assert_eq!(a.ids.len(), 49);
        assert_eq!(hits(&a, b"e-4"), vec![40, 41, 45, 46, 47, 48, 49]);
        assert_eq!(hits(&a, b"\0renamed.doc\0"), vec![42, 44]);
        assert_eq!(
            hits(&a, b".txt"),
            (10..60)
                .filter(|id| ![42, 43, 44].contains(id))
                .collect::<Vec<_>>()
        );
        assert!(a.grams.as_ref().unwrap().heap_bytes() > 0);
    }

    /// The IDs whose framed key `\0key\0` holds `needle`: what `candidates` must answer.
    fn oracle(keys: &HashMap<u32, String>, needle: &[u8], after_id: u32) -> Vec<u32> {
        let mut ids: Vec<u32> = keys
            .iter()
            .filter(|(&id, key)| {
                let framed = [&[0u8][..], key.as_bytes(), &[0]].concat();
                id > after_id && memmem::find(&framed, needle).is_some()
            })
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        ids
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// After any run of sets, renames, removals and compactions, the trigram lists (forced
        /// on, and with the share that falls back to a scan) and the plain scan give every
        /// needle the same IDs as a test of each key.
        #[test]
        fn trigram_lookups_answer_like_the_scan(
            ops in proptest::collection::vec((0u8..8, 3u32..60, "[ab.-]{0,6}"), 1..120),
            needles in proptest::collection::vec(("[ab.-]{0,5}", 0u8..4, 0u32..60), 1..12),
        ) {
            let (mut indexed, mut scanned) = (Arena::new(true), Arena::new(false));
            let mut keys = HashMap::new();
            for (op, id, key) in ops {
                match op {
                    0 => {
                        indexed.remove(id);
                        scanned.remove(id);
                        keys.remove(&id);
                    }
                    1 => indexed.compact(),
                    _ => {
                        indexed.set(id, &key);
                        scanned.set(id, &key);
                        keys.insert(id, key);
                    }
                }
            }
            for (text, mode, after_id) in needles {
                let mode = [FindMode::Substring, FindMode::Prefix, FindMode::Exact, FindMode::Glob][mode as usize];
                let Some(needle) = needle_for(mode, &text) else { continue };
                let want = oracle(&keys, &needle, after_id);
                for got in [
                    indexed.candidates_scanning_above(&needle, after_id, usize::MAX),
                    indexed.candidates(&needle, after_id),
                    scanned.candidates(&needle, after_id),
                ] {
                    let mut got = got;
                    got.sort_unstable();
                    proptest::prop_assert_eq!(&got, &want, "{:?} {:?}", mode, needle);
                }
            }
        }
    }

    #[test]
    fn load_keys_and_candidates_match_a_scan_only_index() {
        let keys: Vec<(u32, String)> = (3..3000)
            .map(|id| (id, format!("photo-{:04}-{id:06}.dat", id / 100)))
            .collect();
        let (index, scan) = (NameIndex::new(), NameIndex::scan_only());
        assert_eq!(
            index.candidates(FindMode::Substring, "x", 0),
            None,
            "loading"
        );
        for i in [&index, &scan] {
            i.load_keys(keys.iter().map(|(id, k)| (*id, k.as_str())));
            i.index_trigrams();
        }
        assert!(index.has_trigrams() && !scan.has_trigrams());
        assert!(index.heap_bytes() > scan.heap_bytes());
        for (mode, pattern, after) in [
            (FindMode::Substring, "-0012-", 0),
            (FindMode::Substring, "-0012-", 1250),
            (FindMode::Prefix, "PHOTO-0029", 0),
            (FindMode::Exact, "photo-0007-000777.dat", 0),
            (FindMode::Glob, "*-0013-*77.dat", 0),
            (FindMode::Substring, "dat", 2990),
        ] {
            let mut a = index.candidates(mode, pattern, after).unwrap();
            let mut b = scan.candidates(mode, pattern, after).unwrap();
            a.sort_unstable();
            b.sort_unstable();
            assert!(!a.is_empty(), "{pattern}");
            assert_eq!(a, b, "{pattern} {mode:?}");
        }
    }
}
