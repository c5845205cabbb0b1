//! [`WriteBatch`]: the writes of one transaction, on any back end, object-safe so the server's
//! writer can hold a `Box<dyn WriteBatch>` whichever store the volume has.
//!
//! The SQLite [`Batch`] keeps its inherent methods (the writer's hot path calls them directly,
//! with no indirection); this trait forwards to them. `commit` takes `self: Box<Self>`: a batch
//! reached through the trait is a boxed one (a store hands out `Box<dyn WriteBatch + '_>`),
//! while code holding a concrete [`Batch`] keeps calling its own `commit(self)`, which method
//! resolution prefers, so no caller changes.
//!
//! [`lookup_or_add`] is the one lookup-or-add every store's `add` runs: a store supplies only
//! its own reads, checks and insert ([`AddSteps`]), so the rules (name checked first, an
//! existing object returned as it is, the parent a directory, the hint tried before the
//! counter) cannot drift between back ends.

use crate::{
    validate_name, ApplRecord, Batch, DbError, IconRecord, InfoUpdate, NameChange, NewObject,
    Object, Read, Result,
};

/// One write transaction of a desktop: every mutation, each request isolated with
/// [`WriteBatch::step_dyn`], and the commit. Reads inside it ([`Read`]) see its own changes.
/// Dropping it without committing rolls it back.
pub trait WriteBatch: Read {
    /// Register a new object and return it with `true`; an object already registered under
    /// that name in that directory is returned with `false` (lookup-or-add).
    fn add(&mut self, new: &NewObject) -> Result<(Object, bool)>;

    /// Register a new object whose place the caller has just found empty in this batch
    /// ([`add_absent`]): [`WriteBatch::add`] without its lookup, a round trip on a networked
    /// back end. Should the place be taken after all, the insert fails (the unique place).
    fn add_absent(&mut self, new: &NewObject) -> Result<Object> {
        self.add(new).map(|(object, _)| object)
    }

    /// A hint before the batch's requests run: these places (folder, name) are about to be
    /// looked up (its registrations). A networked back end reads them in one query
    /// and answers their lookups from that; SQLite, whose lookups cost no round trip, ignores
    /// it.
    fn prefetch_places(&mut self, _places: &[(u32, &[u8])]) -> Result<()> {
        Ok(())
    }

    /// Record a new device, inode and change time for `id` (a copy-replace on disk).
    fn set_devino(&mut self, id: u32, dev: u64, ino: u64, ctime: i64) -> Result<()>;

    /// Move and/or rename `id`; with `replace`, an object at the destination is removed
    /// first. Returns the IDs the replacement removed.
    fn rename(
        &mut self,
        id: u32,
        new_parent: u32,
        new_name: &[u8],
        replace: bool,
    ) -> Result<Vec<u32>>;

    /// [`WriteBatch::rename`] with `replace`, of records the caller has just read in this
    /// batch: `object` the one to move, `new_parent` the folder it goes to, `displaced` what
    /// that folder holds by `new_name` (removed first, as `rename(2)` replaces it). A back
    /// end may take those reads as they are instead of reading the records again (SQLite:
    /// one statement instead of four, for each rename the watcher follows); a folder moved
    /// is always checked not to go into itself. The default runs the checked rename.
    fn rename_read(
        &mut self,
        object: &Object,
        new_parent: &Object,
        new_name: &[u8],
        displaced: Option<&Object>,
    ) -> Result<Vec<u32>> {
        let _ = displaced;
        self.rename(object.id, new_parent.id, new_name, true)
    }

    /// Remove an object (with `recursive`, a directory and all below it); returns the IDs.
    fn delete(&mut self, id: u32, recursive: bool) -> Result<Vec<u32>>;

    /// Change Mac type, creator or Finder flags; returns the object as it now is.
    fn set_info(&mut self, id: u32, update: &InfoUpdate) -> Result<Object>;

    /// Add (or retag) an APPL record.
    fn appl_add(&mut self, record: &ApplRecord) -> Result<()>;

    /// Remove an APPL record; returns whether one was there.
    fn appl_remove(&mut self, creator: [u8; 4], app_id: u32) -> Result<bool>;

    /// Add or replace an icon record.
    fn icon_add(&mut self, icon: &IconRecord) -> Result<()>;

    /// Set (replace) the Finder comment of an object.
    fn comment_set(&mut self, id: u32, text: &[u8]) -> Result<()>;

    /// Remove the Finder comment of an object; returns whether one was there.
    fn comment_remove(&mut self, id: u32) -> Result<bool>;

    /// A new ID from the counter, never one handed out before.
    fn allocate_id(&mut self) -> Result<u32>;

    /// Insert `o` with its own ID (a rebuild restoring an ID); the counter rises to it.
    fn insert_with_id(&mut self, o: &Object) -> Result<()>;

    /// Overwrite the row of `o.id` with `o` (a rebuild making the desktop say what the disk
    /// says).
    fn overwrite(&mut self, o: &Object) -> Result<()>;

    /// Move the row of `id` to a name no file can have, freeing its place.
    fn park(&mut self, id: u32) -> Result<()>;

    /// Raise the allocation counter to at least `at_least` (it never moves backwards).
    fn raise_counter(&mut self, at_least: u32);

    /// The ID counter as this batch has left it so far: the highest ID handed out (what the
    /// server's new-ID budget charges a request with, as the counter's rise).
    fn counter(&self) -> u32;

    /// A mark of the name changes made so far, for [`WriteBatch::changed_since`].
    fn change_mark(&self) -> usize;

    /// A number that changes whenever another connection commits to the desktop, read inside
    /// this batch's write lock: what a cache of the desktop's contents kept across batches
    /// checks before use. `None` where the back end cannot tell (the cache then starts empty).
    fn others_commits(&mut self) -> Result<Option<i64>> {
        Ok(None)
    }

    /// The name changes made since `mark`, in order.
    fn changed_since(&self, mark: usize) -> &[NameChange];

    /// Run one request in a savepoint: if `f` fails, only its own changes are undone and its
    /// error is returned. (The object-safe form of the back ends' generic `step`; a caller
    /// that needs a value out of `f` keeps it in a variable `f` captures.)
    fn step_dyn(&mut self, f: &mut dyn FnMut(&mut dyn WriteBatch) -> Result<()>) -> Result<()>;

    /// [`WriteBatch::step_dyn`] for code generic over a concrete batch (the server's writer,
    /// monomorphised per back end): `f` gets the batch itself, not a `dyn`, and returns its
    /// value. Not on a trait object (`where Self: Sized`), which has `step_dyn`.
    fn step<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T>
    where
        Self: Sized;

    /// Commit the batch with its counter.
    fn commit(self: Box<Self>) -> Result<()>;

    /// [`WriteBatch::commit`] for code generic over a concrete batch (`S::Batch` of a
    /// [`crate::Store`]), which has no box to commit through.
    fn commit_owned(self) -> Result<()>
    where
        Self: Sized;
}

impl WriteBatch for Batch<'_> {
    fn add(&mut self, new: &NewObject) -> Result<(Object, bool)> {
        Batch::add(self, new)
    }

    fn add_absent(&mut self, new: &NewObject) -> Result<Object> {
        add_absent(self, new)
    }

    fn set_devino(&mut self, id: u32, dev: u64, ino: u64, ctime: i64) -> Result<()> {
        Batch::set_devino(self, id, dev, ino, ctime)
    }

    fn rename(
        &mut self,
        id: u32,
        new_parent: u32,
        new_name: &[u8],
        replace: bool,
    ) -> Result<Vec<u32>> {
        Batch::rename(self, id, new_parent, new_name, replace)
    }

    fn rename_read(
        &mut self,
        object: &Object,
        new_parent: &Object,
        new_name: &[u8],
        displaced: Option<&Object>,
    ) -> Result<Vec<u32>> {
        Batch::rename_read(self, object, new_parent, new_name, displaced)
    }

    fn delete(&mut self, id: u32, recursive: bool) -> Result<Vec<u32>> {
        Batch::delete(self, id, recursive)
    }

    fn set_info(&mut self, id: u32, update: &InfoUpdate) -> Result<Object> {
        Batch::set_info(self, id, update)
    }

    fn appl_add(&mut self, record: &ApplRecord) -> Result<()> {
        Batch::appl_add(self, record)
    }

    fn appl_remove(&mut self, creator: [u8; 4], app_id: u32) -> Result<bool> {
        Batch::appl_remove(self, creator, app_id)
    }

    fn icon_add(&mut self, icon: &IconRecord) -> Result<()> {
        Batch::icon_add(self, icon)
    }

    fn comment_set(&mut self, id: u32, text: &[u8]) -> Result<()> {
        Batch::comment_set(self, id, text)
    }

    fn comment_remove(&mut self, id: u32) -> Result<bool> {
        Batch::comment_remove(self, id)
    }

    fn allocate_id(&mut self) -> Result<u32> {
        Batch::allocate_id(self)
    }

    fn insert_with_id(&mut self, o: &Object) -> Result<()> {
        Batch::insert_with_id(self, o)
    }

    fn overwrite(&mut self, o: &Object) -> Result<()> {
        Batch::overwrite(self, o)
    }

    fn park(&mut self, id: u32) -> Result<()> {
        Batch::park(self, id)
    }

    fn raise_counter(&mut self, at_least: u32) {
        Batch::raise_counter(self, at_least)
    }

    fn counter(&self) -> u32 {
        Batch::counter(self)
    }

    fn change_mark(&self) -> usize {
        Batch::change_mark(self)
    }

    fn others_commits(&mut self) -> Result<Option<i64>> {
        Batch::others_commits(self).map(Some)
    }

    fn changed_since(&self, mark: usize) -> &[NameChange] {
        Batch::changed_since(self, mark)
    }

    fn step_dyn(&mut self, f: &mut dyn FnMut(&mut dyn WriteBatch) -> Result<()>) -> Result<()> {
        Batch::step(self, |batch| f(batch))
    }

    fn step<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        Batch::step(self, f)
    }

    fn commit(self: Box<Self>) -> Result<()> {
        Batch::commit(*self)
    }

    fn commit_owned(self) -> Result<()> {
        Batch::commit(self)
    }
}

/// What one store does its own way inside [`lookup_or_add`]: how it reads a name, checks a
/// directory, picks an ID and inserts a row. The order of the steps and what happens between
/// them are `lookup_or_add`'s.
pub trait AddSteps {
    /// The store's error; the desktop's own refusals ([`DbError`]) convert into it.
    type Error: From<DbError>;

    /// The object registered under `name` in directory `parent`, if any.
    fn registered_as(&mut self, parent: u32, name: &[u8]) -> Result<Option<Object>, Self::Error>;

    /// `Ok` when `id` is a directory; else [`DbError::NoSuchId`] or [`DbError::NotADirectory`].
    fn check_directory(&mut self, id: u32) -> Result<(), Self::Error>;

    /// The ID for a new object: `hint` when it is allowed and free, else the counter's next.
    fn pick_id(&mut self, hint: Option<u32>) -> Result<u32, Self::Error>;

    /// Insert the row of `object` (checked by the caller) and note the change for the commit
    /// and the name index.
    fn insert_checked(&mut self, object: &Object) -> Result<(), Self::Error>;
}

/// Register `new` and return it with `true`; an object already registered under that name in
/// that directory is returned with `false` (lookup-or-add), whatever the store.
pub fn lookup_or_add<S: AddSteps + ?Sized>(
    store: &mut S,
    new: &NewObject,
) -> Result<(Object, bool), S::Error> {
    validate_name(&new.name)?;
    if let Some(existing) = store.registered_as(new.parent, &new.name)? {
        return Ok((existing, false));
    }
    add_absent(store, new).map(|object| (object, true))
}

/// [`lookup_or_add`] for a place the caller has just found empty in the same batch: no
/// lookup (nothing can have taken the place since; the insert's unique place would refuse it).
pub fn add_absent<S: AddSteps + ?Sized>(
    store: &mut S,
    new: &NewObject,
) -> Result<Object, S::Error> {
    validate_name(&new.name)?;
    store.check_directory(new.parent)?;
    let object = Object {
        id: store.pick_id(new.hint)?,
        parent: new.parent,
        name: new.name.clone(),
        kind: new.kind,
        dev: new.dev,
        ino: new.ino,
        type_code: new.type_code,
        creator: new.creator,
        flags: new.flags,
        ctime: new.ctime,
    };
    store.insert_checked(&object)?;
    Ok(object)
}

impl AddSteps for Batch<'_> {
    type Error = DbError;

    fn registered_as(&mut self, parent: u32, name: &[u8]) -> Result<Option<Object>> {
        self.lookup(parent, name)
    }

    fn check_directory(&mut self, id: u32) -> Result<()> {
        self.require_dir(id)
    }

    fn pick_id(&mut self, hint: Option<u32>) -> Result<u32> {
        self.allocate(hint)
    }

    fn insert_checked(&mut self, object: &Object) -> Result<()> {
        self.insert_new(object)
    }
}

#[cfg(test)]
mod tests {
    //! [`lookup_or_add`]'s rules on a store of a few rows in memory: what every back end's
    //! `add` now gets from the one function.

    use super::*;
    use crate::Kind;

    /// Rows in a `Vec`, a counter, and the steps called, in order.
    #[derive(Default)]
    struct Rows {
        rows: Vec<Object>,
        counter: u32,
        steps: Vec<&'static str>,
    }

    impl AddSteps for Rows {
        type Error = DbError;

        fn registered_as(&mut self, parent: u32, name: &[u8]) -> Result<Option<Object>> {
            self.steps.push("registered_as");
            Ok(self
                .rows
                .iter()
                .find(|o| o.parent == parent && o.name == name)
                .cloned())
        }

        fn check_directory(&mut self, id: u32) -> Result<()> {
            self.steps.push("check_directory");
            match self.rows.iter().find(|o| o.id == id) {
                None => Err(DbError::NoSuchId(id)),
                Some(o) if o.kind != Kind::Dir => Err(DbError::NotADirectory(id)),
                Some(_) => Ok(()),
            }
        }

        fn pick_id(&mut self, hint: Option<u32>) -> Result<u32> {
            self.steps.push("pick_id");
            self.counter = hint.unwrap_or(self.counter + 1).max(self.counter);
            Ok(self.counter)
        }

        fn insert_checked(&mut self, object: &Object) -> Result<()> {
            self.steps.push("insert_checked");
            self.rows.push(object.clone());
            Ok(())
        }
    }

    fn new(parent: u32, name: &[u8], kind: Kind, hint: Option<u32>) -> NewObject {
        NewObject {
            parent,
            name: name.to_vec(),
            kind,
            dev: 1,
            ino: 2,
            type_code: *b"TEXT",
            creator: *b"ttxt",
            flags: 0x0100,
            ctime: 3,
            hint,
        }
    }

    /// A store holding the root (2) and one file in it (17).
    fn store() -> Rows {
        let mut rows = Rows::default();
        for (id, parent, name, kind) in [(2, 1, &b"vol"[..], Kind::Dir), (17, 2, b"f", Kind::File)]
        {
            rows.rows.push(Object {
                id,
                parent,
                name: name.to_vec(),
                kind,
                dev: 1,
                ino: u64::from(id),
                type_code: [0; 4],
                creator: [0; 4],
                flags: 0,
                ctime: 0,
            });
        }
        rows.counter = 17;
        rows
    }

    #[test]
    fn a_new_name_is_inserted_with_every_field_and_the_hint() {
        let mut s = store();
        let (o, created) = lookup_or_add(&mut s, &new(2, b"g", Kind::File, Some(40))).unwrap();
        assert!(created);
        assert_eq!((o.id, o.parent, &o.name[..]), (40, 2, &b"g"[..]));
        assert_eq!((o.dev, o.ino, o.ctime, o.flags), (1, 2, 3, 0x0100));
        assert_eq!((o.type_code, o.creator), (*b"TEXT", *b"ttxt"));
        assert_eq!(s.rows.last(), Some(&o));
        assert_eq!(
            s.steps,
            [
                "registered_as",
                "check_directory",
                "pick_id",
                "insert_checked"
            ]
        );
    }

    #[test]
    fn a_registered_name_comes_back_unchanged_and_nothing_is_inserted() {
        let mut s = store();
        let (o, created) = lookup_or_add(&mut s, &new(2, b"f", Kind::File, Some(99))).unwrap();
        assert!(!created);
        assert_eq!(o.id, 17);
        assert_eq!((s.rows.len(), s.counter), (2, 17));
        assert_eq!(s.steps, ["registered_as"]);
    }

    #[test]
    fn a_bad_name_is_refused_before_any_read_and_a_file_is_no_parent() {
        let mut s = store();
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            let e = lookup_or_add(&mut s, &new(2, bad, Kind::File, None)).unwrap_err();
            assert!(matches!(e, DbError::InvalidName(..)), "{bad:?}: {e}");
        }
        assert!(s.steps.is_empty());
        let e = lookup_or_add(&mut s, &new(17, b"x", Kind::File, None)).unwrap_err();
        assert!(matches!(e, DbError::NotADirectory(17)), "{e}");
        let e = lookup_or_add(&mut s, &new(99, b"x", Kind::File, None)).unwrap_err();
        assert!(matches!(e, DbError::NoSuchId(99)), "{e}");
        assert_eq!(
            (s.rows.len(), s.counter),
            (2, 17),
            "nothing inserted, no ID taken"
        );
    }
}
