//! Freeze on PostgreSQL: a consistent snapshot for `pg_dump`, while writes go on.
//!
//! A frozen SQLite desktop is a file that may be copied; a PostgreSQL one is a snapshot that
//! `pg_dump --snapshot=NAME -n deskd` (or `deskd backup`) reads. [`Frozen`] opens a
//! `REPEATABLE READ READ ONLY` transaction on a connection of its own, exports its snapshot
//! (`pg_export_snapshot()`) and holds it until [`Frozen::thaw`] or drop: the name is valid
//! exactly that long.

use postgres::Client;

use crate::error::Result;

/// A held snapshot of the whole database (every volume in it).
pub struct Frozen {
    client: Client,
    snapshot: String,
}

impl Frozen {
    /// Take the snapshot on `client` (a connection of its own, not in a transaction).
    pub fn start(mut client: Client) -> Result<Frozen> {
        client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
        let snapshot: String = client.query_one("SELECT pg_export_snapshot()", &[])?.get(0);
        Ok(Frozen { client, snapshot })
    }

    /// The name `pg_dump --snapshot` takes.
    pub fn snapshot_name(&self) -> &str {
        &self.snapshot
    }

    /// Let the snapshot go (ends its transaction; the name is no longer valid).
    pub fn thaw(mut self) -> Result<()> {
        self.client.batch_execute("COMMIT")?;
        Ok(())
    }
}
