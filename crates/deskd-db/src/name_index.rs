//! The in-memory name index behind `find`.
//!
//! Every object's search key (NFC, lower case; see [`crate::names`]) lives in one contiguous
//! byte arena, each key framed by NUL bytes: `\0key\0key\0…`. A NUL cannot occur in a file
//! name, so a SIMD substring scan of the arena (`memchr::memmem`) finds substring hits that
//! never cross two names, a prefix as `\0prefix`, and an exact name as `\0name\0`. Scanning the
//! keys of a million names takes a few milliseconds — as fast as a trigram index, with no index
//! to maintain in the database: the writer only appends a key after each commit, which keeps the
//! cost of name indexing off the path that allocates IDs.
//!
//! The index is a cache of `objects.skey`. It is built from the desktop in the background when a
//! volume opens ([`NameIndex::load`]); changes committed meanwhile are queued and replayed, and
//! until it is ready callers fall back to scanning the table ([`crate::Read::find`]). Every hit is
//! confirmed against the caller's own snapshot, so a result never names an object that the
//! caller's view does not hold under a matching name.

use std::collections::HashMap;
use std::sync::RwLock;

use memchr::memmem;

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
#[derive(Default)]
pub struct NameIndex {
    state: RwLock<State>,
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
}

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
            + self.entry_of.capacity()) as u64
    }

    fn new() -> Arena {
        Arena {
            bytes: vec![0],
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
        self.starts.push(self.bytes.len());
        self.bytes.extend_from_slice(key.as_bytes());
        self.bytes.push(0);
        self.ids.push(id);
        self.entry_of.insert(id, entry);
    }

    fn remove(&mut self, id: u32) {
        if let Some(entry) = self.entry_of.remove(&id) {
            self.kill(entry as usize);
        }
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

    fn compact(&mut self) {
        let mut fresh = Arena::new();
        fresh.bytes.reserve(self.bytes.len() - self.dead_bytes);
        for entry in 0..self.ids.len() {
            let id = self.ids[entry];
            if id != 0 {
                let key = self.key_of(entry);
                fresh.entry_of.insert(id, fresh.ids.len() as u32);
                fresh.starts.push(fresh.bytes.len());
                fresh.bytes.extend_from_slice(key);
                fresh.bytes.push(0);
                fresh.ids.push(id);
            }
        }
        *self = fresh;
    }

    /// The entry whose key contains arena offset `at`.
    fn entry_at(&self, at: usize) -> usize {
        self.starts.partition_point(|&s| s <= at) - 1
    }

    /// IDs of live entries whose key contains `needle` (framed with NULs for anchors), above
    /// `after_id`, unordered.
    fn candidates(&self, needle: &[u8], after_id: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut last_entry = usize::MAX;
        for hit in memmem::find_iter(&self.bytes, needle) {
            // A needle framed by a leading NUL hits at the NUL before the key.
            let at = if needle.first() == Some(&0) {
                hit + 1
            } else {
                hit
            };
            if at >= self.bytes.len() {
                continue;
            }
            let entry = self.entry_at(at);
            if entry == last_entry {
                continue;
            }
            last_entry = entry;
            let id = self.ids[entry];
            if id != 0 && id > after_id {
                out.push(id);
            }
        }
        out
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
        let mut arena = Arena::new();
        db.for_each_search_key(&mut |id, key| arena.set(id, key))?;
        let mut state = self.state.write().unwrap();
        if let State::Loading(queued) = &*state {
            for change in queued {
                arena.apply(change);
            }
        }
        *state = State::Ready(arena);
        Ok(())
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
            for object in db.get_many(&rest[..take])? {
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
        let mut a = Arena::new();
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
}
