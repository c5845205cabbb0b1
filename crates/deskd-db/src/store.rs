//! [`Store`]: a desktop's write handle, whatever its back end. It hands out the batches
//! ([`WriteBatch`]) the server's writer applies requests in, changes the durability of the
//! commits, and says which back end it is (for status).
//!
//! **Generic, not `dyn`.** The batch is an associated type (`Store::Batch<'a>`), so code written
//! over `S: Store` (the writer's group commit) is monomorphised per back end: on SQLite it is
//! the `Batch` code it always was, with no indirection per row. A trait with a generic
//! associated type cannot be a trait object; a server that picks the back end per volume runs
//! one writer thread per volume, monomorphised for that volume's store, rather than holding a
//! `Box<dyn Store>`. Code that wants a trait object per batch boxes it
//! (`Box<dyn WriteBatch + '_>`).

use std::time::Duration;

use crate::{Batch, Desktop, Durability, Result, WriteBatch};

/// A desktop's write handle: one per volume and server, used by one thread.
pub trait Store {
    /// The batch of this back end.
    type Batch<'a>: WriteBatch
    where
        Self: 'a;

    /// Start a batch: one transaction for many requests (group commit).
    fn batch(&mut self) -> Result<Self::Batch<'_>>;

    /// Start a batch, waiting at most `wait` for a write lock another process (SQLite) or
    /// another server's batch (PostgreSQL: the volume's counter row) holds.
    fn batch_within(&mut self, wait: Duration) -> Result<Self::Batch<'_>>;

    /// Change the durability of the commits from now on (a reloaded configuration).
    fn set_durability(&mut self, durability: Durability) -> Result<()>;

    /// The back end's name, for status and logs: `"sqlite"` or `"postgresql"`.
    fn backend(&self) -> &'static str;
}

impl Store for Desktop {
    type Batch<'a> = Batch<'a>;

    fn batch(&mut self) -> Result<Batch<'_>> {
        Desktop::batch(self)
    }

    fn batch_within(&mut self, wait: Duration) -> Result<Batch<'_>> {
        Desktop::batch_within(self, wait)
    }

    fn set_durability(&mut self, durability: Durability) -> Result<()> {
        Desktop::set_durability(self, durability)
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}
