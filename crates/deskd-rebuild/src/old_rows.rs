//! The old desktop's rows as a rebuild looks them up: by ID, and by place, the directory's ID
//! and the name ([`Rows::place`]).
//!
//! A rebuild holds every row of the desktop while it plans, so what each row costs is what a
//! rebuild of a large volume costs. A `HashMap<u32, Object>` spends about 200 bytes a row
//! (the entry twice over in a half-empty table, and the name's own allocation), and a
//! `HashMap<(u32, Vec<u8>), u32>` by place about 120 more. Here a row is 56 bytes of integers
//! in one `Vec`, its name in one arena, and the two tables hold only 4-byte positions in the
//! rows, hashing and comparing through them.

use std::hash::{BuildHasher, Hash, Hasher};

use deskd_db::{Kind, Object};
use hashbrown::HashTable;

/// The hasher of both tables (keyed per process, as std's maps are).
#[derive(Clone, Default)]
struct Hashing(std::collections::hash_map::RandomState);

impl Hashing {
    fn id(&self, id: u32) -> u64 {
        self.0.hash_one(id)
    }

    fn place(&self, parent: u32, name: &[u8]) -> u64 {
        let mut h = self.0.build_hasher();
        parent.hash(&mut h);
        name.hash(&mut h);
        h.finish()
    }
}

/// One row of the old desktop, its name aside ([`Rows::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OldRow {
    pub dev: u64,
    pub ino: u64,
    pub ctime: i64,
    name_start: u64,
    name_len: u32,
    pub id: u32,
    pub parent: u32,
    pub type_code: [u8; 4],
    pub creator: [u8; 4],
    pub flags: u16,
    pub kind: Kind,
}

/// The old desktop's rows: by ID (the map operations a rebuild uses) and, once
/// [`Rows::index_places`] was called, by place.
#[derive(Clone, Default)]
pub struct Rows {
    rows: Vec<OldRow>,
    names: Vec<u8>,
    /// Positions in `rows`, hashed by the row's ID.
    by_id: HashTable<u32>,
    /// Positions in `rows`, hashed by the row's place (parent and name).
    by_place: HashTable<u32>,
    hashing: Hashing,
}

impl Rows {
    /// Room for `n` more rows.
    pub fn reserve(&mut self, n: usize) {
        self.rows.reserve_exact(n);
        let (rows, hashing) = (&self.rows, &self.hashing);
        self.by_id
            .reserve(n, |&at| hashing.id(rows[at as usize].id));
    }

    /// Add `row` under `id` (its ID), replacing the row there was (whose name stays in the
    /// arena, unused); returns whether there was one.
    pub fn insert(&mut self, id: u32, row: Object) -> bool {
        debug_assert_eq!(id, row.id);
        let kept = OldRow {
            dev: row.dev,
            ino: row.ino,
            ctime: row.ctime,
            name_start: self.names.len() as u64,
            name_len: u32::try_from(row.name.len()).expect("a name under 4 GiB"),
            id: row.id,
            parent: row.parent,
            type_code: row.type_code,
            creator: row.creator,
            flags: row.flags,
            kind: row.kind,
        };
        self.names.extend_from_slice(&row.name);
        let hash = self.hashing.id(id);
        let rows = &self.rows;
        if let Some(&at) = self.by_id.find(hash, |&at| rows[at as usize].id == id) {
            self.rows[at as usize] = kept;
            return true;
        }
        let at = u32::try_from(self.rows.len()).expect("fewer than 2^32 rows");
        self.rows.push(kept);
        let (rows, hashing) = (&self.rows, &self.hashing);
        self.by_id
            .insert_unique(hash, at, |&at| hashing.id(rows[at as usize].id));
        false
    }

    /// Make the rows findable by place ([`Rows::place`]); the last row of a place wins.
    pub fn index_places(&mut self) {
        let (rows, names, hashing) = (&self.rows, &self.names, &self.hashing);
        let place_hash = |r: &OldRow| hashing.place(r.parent, name_in(names, r));
        self.by_place = HashTable::with_capacity(rows.len());
        for (at, row) in rows.iter().enumerate() {
            let hash = place_hash(row);
            let name = name_in(names, row);
            match self.by_place.find_mut(hash, |&other| {
                let o = &rows[other as usize];
                o.parent == row.parent && name_in(names, o) == name
            }) {
                Some(other) => *other = at as u32,
                None => {
                    self.by_place
                        .insert_unique(hash, at as u32, |&at| place_hash(&rows[at as usize]));
                }
            }
        }
    }

    /// Where the row with ID `id` is among the rows (`0..len()`), for marks kept per row.
    pub fn index_of(&self, id: u32) -> Option<usize> {
        let rows = &self.rows;
        self.by_id
            .find(self.hashing.id(id), |&at| rows[at as usize].id == id)
            .map(|&at| at as usize)
    }

    /// The row with ID `id`.
    pub fn get(&self, id: &u32) -> Option<&OldRow> {
        self.index_of(*id).map(|at| &self.rows[at])
    }

    /// The row with ID `id`, to change (not its ID, parent or name).
    pub fn get_mut(&mut self, id: &u32) -> Option<&mut OldRow> {
        self.index_of(*id).map(|at| &mut self.rows[at])
    }

    pub fn contains_key(&self, id: &u32) -> bool {
        self.index_of(*id).is_some()
    }

    /// The ID at `name` in the directory with ID `parent` ([`Rows::index_places`] first).
    pub fn place(&self, parent: u32, name: &[u8]) -> Option<u32> {
        let (rows, names) = (&self.rows, &self.names);
        self.by_place
            .find(self.hashing.place(parent, name), |&at| {
                let r = &rows[at as usize];
                r.parent == parent && name_in(names, r) == name
            })
            .map(|&at| rows[at as usize].id)
    }

    /// The name of `row` (one of these rows).
    pub fn name(&self, row: &OldRow) -> &[u8] {
        name_in(&self.names, row)
    }

    /// Every row's ID, in the order the rows came.
    pub fn keys(&self) -> impl Iterator<Item = &u32> {
        self.rows.iter().map(|r| &r.id)
    }

    pub fn values(&self) -> impl Iterator<Item = &OldRow> {
        self.rows.iter()
    }

    /// Every row, to change (not their IDs).
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut OldRow> {
        self.rows.iter_mut()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl std::ops::Index<&u32> for Rows {
    type Output = OldRow;

    fn index(&self, id: &u32) -> &OldRow {
        self.get(id).expect("no row with that ID")
    }
}

fn name_in<'a>(names: &'a [u8], r: &OldRow) -> &'a [u8] {
    &names[r.name_start as usize..r.name_start as usize + r.name_len as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u32, parent: u32, name: &str) -> Object {
        Object {
            id,
            parent,
            name: name.as_bytes().to_vec(),
            kind: Kind::File,
            dev: 1,
            ino: id as u64,
            type_code: [0; 4],
            creator: [0; 4],
            flags: 0,
            ctime: 0,
        }
    }

    #[test]
    fn rows_behave_as_a_map_by_id() {
        let mut rows = Rows::default();
        rows.reserve(3);
        for id in [40, 17, 90_000] {
            assert!(!rows.insert(id, row(id, 2, "a")));
        }
        assert!(rows.insert(17, row(17, 2, "b")));
        assert_eq!(rows.len(), 3);
        assert_eq!(rows.name(&rows[&17]), b"b");
        assert_eq!(rows.name(&rows[&40]), b"a");
        assert!(rows.get(&18).is_none() && !rows.contains_key(&18));
        rows.get_mut(&40).unwrap().flags = 17;
        assert_eq!(rows.get(&40).unwrap().flags, 17);
        let mut ids: Vec<u32> = rows.keys().copied().collect();
        ids.sort();
        assert_eq!(ids, [17, 40, 90_000]);
        assert!(rows.index_of(90_000).is_some_and(|at| at < rows.len()));
        // Many more than the reserved room: the table grows and still finds every row.
        for id in 100..5000 {
            rows.insert(id, row(id, 2, "x"));
        }
        assert!((100..5000).all(|id| rows.get(&id).is_some_and(|r| r.id == id)));
        assert_eq!(std::mem::size_of::<OldRow>(), 56);
    }

    #[test]
    fn places_find_an_id_by_directory_and_name() {
        let mut rows = Rows::default();
        rows.insert(17, row(17, 2, "docs"));
        rows.insert(18, row(18, 17, "docs"));
        rows.insert(19, row(19, 2, ""));
        for i in 0..5000u32 {
            rows.insert(i + 100, row(i + 100, i, &format!("n{i}")));
        }
        rows.index_places();
        assert_eq!(rows.place(2, b"docs"), Some(17));
        assert_eq!(rows.place(17, b"docs"), Some(18));
        assert_eq!(rows.place(2, b""), Some(19));
        assert_eq!(rows.place(2, b"doc"), None);
        assert!((0..5000u32).all(|i| rows.place(i, format!("n{i}").as_bytes()) == Some(i + 100)));
        // Two rows at one place (a damaged desktop): the later one is found.
        rows.insert(20, row(20, 2, "docs"));
        rows.index_places();
        assert_eq!(rows.place(2, b"docs"), Some(20));
    }
}
