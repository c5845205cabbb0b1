//! [`WriteBatch`]: the writes of one transaction, on any back end, object-safe so the server's
//! writer can hold a `Box<dyn WriteBatch>` whichever store the volume has.
//!
//! The SQLite [`Batch`] keeps its inherent methods (the writer's hot path calls them directly,
//! with no indirection); this trait forwards to them. `commit` takes `self: Box<Self>`: a batch
//! reached through the trait is a boxed one (a store hands out `Box<dyn WriteBatch + '_>`),
//! while code holding a concrete [`Batch`] keeps calling its own `commit(self)`, which method
//! resolution prefers, so no caller changes.

use crate::{
    ApplRecord, Batch, IconRecord, InfoUpdate, NameChange, NewObject, Object, Read, Result,
};

/// One write transaction of a desktop: every mutation, each request isolated with
/// [`WriteBatch::step_dyn`], and the commit. Reads inside it ([`Read`]) see its own changes.
/// Dropping it without committing rolls it back.
pub trait WriteBatch: Read {
    /// Register a new object and return it with `true`; an object already registered under
    /// that name in that directory is returned with `false` (lookup-or-add).
    fn add(&mut self, new: &NewObject) -> Result<(Object, bool)>;

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

    /// A mark of the name changes made so far, for [`WriteBatch::changed_since`].
    fn change_mark(&self) -> usize;

    /// The name changes made since `mark`, in order.
    fn changed_since(&self, mark: usize) -> &[NameChange];

    /// Run one request in a savepoint: if `f` fails, only its own changes are undone and its
    /// error is returned. (The object-safe form of the back ends' generic `step`; a caller
    /// that needs a value out of `f` keeps it in a variable `f` captures.)
    fn step_dyn(&mut self, f: &mut dyn FnMut(&mut dyn WriteBatch) -> Result<()>) -> Result<()>;

    /// Commit the batch with its counter.
    fn commit(self: Box<Self>) -> Result<()>;
}

impl WriteBatch for Batch<'_> {
    fn add(&mut self, new: &NewObject) -> Result<(Object, bool)> {
        Batch::add(self, new)
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

    fn change_mark(&self) -> usize {
        Batch::change_mark(self)
    }

    fn changed_since(&self, mark: usize) -> &[NameChange] {
        Batch::changed_since(self, mark)
    }

    fn step_dyn(&mut self, f: &mut dyn FnMut(&mut dyn WriteBatch) -> Result<()>) -> Result<()> {
        self.step(|batch| f(batch))
    }

    fn commit(self: Box<Self>) -> Result<()> {
        Batch::commit(*self)
    }
}
