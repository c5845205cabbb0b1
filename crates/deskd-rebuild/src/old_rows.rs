//! The old desktop's rows as a rebuild looks them up: by ID ([`Rows`]) and by place, the
//! directory's ID and the name ([`Places`]).
//!
//! A rebuild holds every row of the desktop while it plans, so what each row costs is what a
//! rebuild of a large volume costs. A `HashMap<u32, Object>` spends about 200 bytes a row
//! (the entry twice over in a half-empty table, and the name's own allocation), and a
//! `HashMap<(u32, Vec<u8>), u32>` by place about 120 more. Here the rows sit in one `Vec` and
//! the tables hold only 4-byte positions; the places keep their names in one arena.

use std::hash::{BuildHasher, Hash, Hasher};

use deskd_db::Object;
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

/// The old desktop's rows by ID: the map operations a rebuild uses, over a `Vec<Object>` and a
/// table of positions in it.
#[derive(Clone, Default)]
pub struct Rows {
    rows: Vec<Object>,
    /// Positions in `rows`, hashed by the row's ID.
    by_id: HashTable<u32>,
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

    /// Add `row` under `id` (its ID), replacing the row there was; returns that one.
    pub fn insert(&mut self, id: u32, row: Object) -> Option<Object> {
        debug_assert_eq!(id, row.id);
        let hash = self.hashing.id(id);
        let rows = &self.rows;
        if let Some(&at) = self.by_id.find(hash, |&at| rows[at as usize].id == id) {
            return Some(std::mem::replace(&mut self.rows[at as usize], row));
        }
        let at = u32::try_from(self.rows.len()).expect("fewer than 2^32 rows");
        self.rows.push(row);
        let (rows, hashing) = (&self.rows, &self.hashing);
        self.by_id
            .insert_unique(hash, at, |&at| hashing.id(rows[at as usize].id));
        None
    }

    fn position(&self, id: u32) -> Option<usize> {
        let rows = &self.rows;
        self.by_id
            .find(self.hashing.id(id), |&at| rows[at as usize].id == id)
            .map(|&at| at as usize)
    }

    /// The row with ID `id`.
    pub fn get(&self, id: &u32) -> Option<&Object> {
        self.position(*id).map(|at| &self.rows[at])
    }

    /// The row with ID `id`, to change (not its ID).
    pub fn get_mut(&mut self, id: &u32) -> Option<&mut Object> {
        self.position(*id).map(|at| &mut self.rows[at])
    }

    pub fn contains_key(&self, id: &u32) -> bool {
        self.position(*id).is_some()
    }

    /// Every row's ID, in the order the rows came.
    pub fn keys(&self) -> impl Iterator<Item = &u32> {
        self.rows.iter().map(|r| &r.id)
    }

    pub fn values(&self) -> impl Iterator<Item = &Object> {
        self.rows.iter()
    }

    /// Every row, to change (not their IDs).
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Object> {
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
    type Output = Object;

    fn index(&self, id: &u32) -> &Object {
        self.get(id).expect("no row with that ID")
    }
}

/// One place: the directory's ID, the ID found there, where the name is in the arena.
#[derive(Clone, Copy)]
struct Place {
    parent: u32,
    id: u32,
    name_start: usize,
    name_len: u32,
}

/// The old desktop's IDs by place: (directory ID, name) -> ID.
#[derive(Clone, Default)]
pub struct Places {
    places: Vec<Place>,
    names: Vec<u8>,
    /// Positions in `places`, hashed by the place.
    by_place: HashTable<u32>,
    hashing: Hashing,
}

impl Places {
    /// Room for `n` more places.
    pub fn reserve(&mut self, n: usize) {
        self.places.reserve_exact(n);
        let (places, names, hashing) = (&self.places, &self.names, &self.hashing);
        self.by_place.reserve(n, |&at| {
            let p = &places[at as usize];
            hashing.place(p.parent, name_of(names, p))
        });
    }

    /// Say that `id` is at `(parent, name)`, replacing the ID there was; returns that one.
    pub fn insert(&mut self, (parent, name): (u32, Vec<u8>), id: u32) -> Option<u32> {
        self.insert_place(parent, &name, id)
    }

    /// [`Places::insert`] without giving up the name.
    pub fn insert_place(&mut self, parent: u32, name: &[u8], id: u32) -> Option<u32> {
        let hash = self.hashing.place(parent, name);
        if let Some(at) = self.position(hash, parent, name) {
            return Some(std::mem::replace(&mut self.places[at].id, id));
        }
        let at = u32::try_from(self.places.len()).expect("fewer than 2^32 places");
        self.places.push(Place {
            parent,
            id,
            name_start: self.names.len(),
            name_len: u32::try_from(name.len()).expect("a name under 4 GiB"),
        });
        self.names.extend_from_slice(name);
        let (places, names, hashing) = (&self.places, &self.names, &self.hashing);
        self.by_place.insert_unique(hash, at, |&at| {
            let p = &places[at as usize];
            hashing.place(p.parent, name_of(names, p))
        });
        None
    }

    fn position(&self, hash: u64, parent: u32, name: &[u8]) -> Option<usize> {
        let (places, names) = (&self.places, &self.names);
        self.by_place
            .find(hash, |&at| {
                let p = &places[at as usize];
                p.parent == parent && name_of(names, p) == name
            })
            .map(|&at| at as usize)
    }

    /// The ID at `name` in the directory with ID `parent`.
    pub fn get(&self, parent: u32, name: &[u8]) -> Option<u32> {
        self.position(self.hashing.place(parent, name), parent, name)
            .map(|at| self.places[at].id)
    }

    pub fn len(&self) -> usize {
        self.places.len()
    }

    pub fn is_empty(&self) -> bool {
        self.places.is_empty()
    }
}

fn name_of<'a>(names: &'a [u8], p: &Place) -> &'a [u8] {
    &names[p.name_start..p.name_start + p.name_len as usize]
}

#[cfg(test)]
mod tests {
    use super::*;
    use deskd_db::Kind;

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
            assert!(rows.insert(id, row(id, 2, "a")).is_none());
        }
        assert_eq!(rows.insert(17, row(17, 2, "b")).unwrap().name, b"a");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[&17].name, b"b");
        assert!(rows.get(&18).is_none() && !rows.contains_key(&18));
        rows.get_mut(&40).unwrap().parent = 17;
        assert_eq!(rows.get(&40).unwrap().parent, 17);
        let mut ids: Vec<u32> = rows.keys().copied().collect();
        ids.sort();
        assert_eq!(ids, [17, 40, 90_000]);
        // Many more than the reserved room: the table grows and still finds every row.
        for id in 100..5000 {
            rows.insert(id, row(id, 2, "x"));
        }
        assert!((100..5000).all(|id| rows.get(&id).is_some_and(|r| r.id == id)));
    }

    #[test]
    fn places_find_an_id_by_directory_and_name() {
        let mut places = Places::default();
        places.insert((2, b"docs".to_vec()), 17);
        places.insert_place(17, b"docs", 18);
        places.insert_place(2, b"", 19);
        assert_eq!(places.get(2, b"docs"), Some(17));
        assert_eq!(places.get(17, b"docs"), Some(18));
        assert_eq!(places.get(2, b""), Some(19));
        assert_eq!(places.get(2, b"doc"), None);
        assert_eq!(places.insert_place(2, b"docs", 20), Some(17));
        assert_eq!(places.get(2, b"docs"), Some(20));
        for i in 0..5000u32 {
            places.insert_place(i, format!("n{i}").as_bytes(), i + 100);
        }
        assert!((0..5000u32).all(|i| places.get(i, format!("n{i}").as_bytes()) == Some(i + 100)));
        assert_eq!(places.len(), 5003);
    }
}
